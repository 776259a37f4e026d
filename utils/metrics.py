"""Detection metrics as YOLOv5 computes them: matching, AP per class, confusion matrix, fitness.
No plotting here: utils/plots.py draws these (plots imports metrics, never the reverse)."""

from typing import NamedTuple

import numpy as np
import torch

from utils.boxes import box_iou

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP@0.5:0.95


def fitness(x):
    """Model fitness from rows [P, R, mAP50, mAP50-95, ...]: 0.1 mAP50 + 0.9 mAP50-95."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[..., :4] * w).sum(-1)


def _greedy_unique(matches, resort_between=False):
    """Rows [label, det, iou] -> one-to-one subset, as upstream: highest-IoU row per detection,
    then per label the first remaining row (by detection index, or by IoU when resort_between)."""
    if matches.shape[0] <= 1:
        return matches
    matches = matches[matches[:, 2].argsort()[::-1]]
    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
    if resort_between:
        matches = matches[matches[:, 2].argsort()[::-1]]
    return matches[np.unique(matches[:, 0], return_index=True)[1]]


def match_predictions(detections, labels, iouv=IOU_THRESHOLDS):
    """Which detections are true positives at each IoU threshold.

    detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, x1, y1, x2, y2];
    returns a bool tensor (n, len(iouv)). A detection matches a label of its class with
    IoU >= threshold; each label and each detection is used at most once.
    """
    iouv = iouv.to(detections.device)
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:], detections[:, :4])
        iou = iou * (labels[:, 0:1] == detections[:, 5])  # other classes never match
        iou_np = iou.cpu().numpy()
        for k, thr in enumerate(iouv.tolist()):  # loop over the 10 thresholds, not boxes
            li, di = np.nonzero(iou_np >= thr)
            if li.size:
                m = _greedy_unique(np.stack((li, di, iou_np[li, di]), 1))
                correct[m[:, 1].astype(int), k] = True
    return torch.from_numpy(correct).to(detections.device)


process_batch = match_predictions  # upstream name


def smooth(y, f=0.05):
    """Box-filter smoothing of a 1-D array with a window of fraction f (odd length), edges held."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def compute_ap(recall, precision):
    """AP of one PR curve: precision envelope, 101-point interpolation, trapezoid integration.

    Returns (ap, envelope precision, recall) with sentinel points added.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    y = np.interp(x, mrec, mpre)
    ap = float(np.sum((y[1:] + y[:-1]) * np.diff(x) / 2))
    return ap, mpre, mrec


class APCurves(NamedTuple):
    """Per-class curves behind the AP numbers (classes = those present in the labels)."""

    px: np.ndarray  # (1000,) confidence grid, also the recall grid of `pr`
    p: np.ndarray  # (nc, 1000) precision against confidence
    r: np.ndarray  # (nc, 1000) recall against confidence
    f1: np.ndarray  # (nc, 1000)
    pr: list  # precision envelope on the recall grid at IoU 0.5, one (1000,) array per class with predictions
    ap: np.ndarray  # (nc, t) AP per IoU threshold
    classes: np.ndarray  # (nc,) int
    nt: np.ndarray  # (nc,) labels per class


def ap_curves(tp, conf, pred_cls, target_cls, eps=1e-16):
    """Precision/recall/F1 against confidence and AP per class present in the labels.

    tp (n, t) bool per IoU threshold; conf (n,); pred_cls (n,); target_cls (m,).
    """
    tp = np.asarray(tp, dtype=float)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf, pred_cls, target_cls = (np.asarray(a).reshape(-1) for a in (conf, pred_cls, target_cls))
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]

    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]
    px, pr = np.linspace(0, 1, 1000), []
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):  # loop over classes
        sel = pred_cls == c
        n_l, n_p = nt[ci], sel.sum()
        if n_p == 0 or n_l == 0:
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[sel], recall[:, 0], left=0)  # conf decreases along the curve
        p[ci] = np.interp(-px, -conf[sel], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr.append(np.interp(px, mrec, mpre))
    f1 = 2 * p * r / (p + r + eps)
    return APCurves(px, p, r, f1, pr, ap, unique_classes.astype(int), nt)


def operating_point(curves, eps=1e-16):
    """(tp, fp, p, r, f1, ap, classes) with P/R/F1 at the confidence maximising the smoothed
    class-mean F1 on the grid (upstream's ap_per_class result)."""
    c = curves
    i = int(smooth(c.f1.mean(0), 0.1).argmax()) if len(c.classes) else 0
    p, r, f1 = c.p[:, i], c.r[:, i], c.f1[:, i]
    tp_n = (r * c.nt).round()
    fp_n = (tp_n / (p + eps) - tp_n).round()
    return tp_n, fp_n, p, r, f1, c.ap, c.classes


def ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16):
    """AP, P, R, F1 per class present in the labels -> (tp, fp, p, r, f1, ap (nc, t), classes).
    For the curves (plots.plot_ap_curves), use ap_curves() and operating_point()."""
    return operating_point(ap_curves(tp, conf, pred_cls, target_cls, eps), eps)


class ConfusionMatrix:
    """(nc + 1) x (nc + 1) matrix indexed [predicted, true]; index nc is background."""

    def __init__(self, nc, conf=0.25, iou_thres=0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections, labels):
        """detections (n, 6) [x1, y1, x2, y2, conf, cls] or None; labels (m, 5) [cls, x1, y1, x2, y2]
        (or (m,) classes when detections is None)."""
        if detections is None:
            gt = labels.reshape(-1).int().cpu().numpy() if labels.ndim == 1 else labels[:, 0].int().cpu().numpy()
            np.add.at(self.matrix, (self.nc, gt), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        gt = labels[:, 0].int().cpu().numpy()
        dc = detections[:, 5].int().cpu().numpy()
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy() if len(gt) and len(dc) else np.zeros((0, 0))
        li, di = np.nonzero(iou > self.iou_thres)
        matches = _greedy_unique(np.stack((li, di, iou[li, di]), 1), resort_between=True) if li.size \
            else np.zeros((0, 3))
        m_lab, m_det = matches[:, 0].astype(int), matches[:, 1].astype(int)
        matched_gt = np.zeros(len(gt), dtype=bool)
        matched_gt[m_lab] = True
        np.add.at(self.matrix, (dc[m_det], gt[m_lab]), 1)  # class hits and confusions
        np.add.at(self.matrix, (self.nc, gt[~matched_gt]), 1)  # missed labels: background
        unmatched = np.ones(len(dc), dtype=bool)  # (upstream skips these when nothing matched)
        unmatched[m_det] = False
        np.add.at(self.matrix, (dc[unmatched], self.nc), 1)  # detections of background

    def tp_fp(self):
        """True and false positives per class (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

"""YOLOv5 detection loss: target assignment (build_targets) and box/objectness/class terms."""

import torch
import torch.nn as nn

from utils.boxes import bbox_iou
from utils.torch_utils import de_parallel

# neighbour-cell offsets: own cell, left, up, right, down (multiplied by the 0.5 bias)
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
_BIAS = 0.5


def scale_loss_gains(hyp, nl, nc, imgsz):
    """Upstream's scaling of the box/cls/obj gains (given for 3 levels, 80 classes, 640 px) to a
    model with nl levels, nc classes at imgsz. In place; returns hyp."""
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def smooth_bce(eps=0.0):
    """Label-smoothed BCE targets: (positive, negative) = (1 - eps/2, eps/2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapper around a BCEWithLogitsLoss (Lin et al. 2017), alpha 0.25 by default."""

    def __init__(self, loss_fcn, gamma=1.5, alpha=0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma, self.alpha = gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal factor is applied per element

    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


class ComputeLoss:
    """Callable loss: (preds, targets) -> (total * batch_size (1,), detached (lbox, lobj, lcls))."""

    def __init__(self, model, autobalance=False):
        model = de_parallel(model)
        device = next(model.parameters()).device
        h = model.hyp
        self.hyp = h
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h.get("cls_pw", 1.0)], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h.get("obj_pw", 1.0)], device=device))
        self.cp, self.cn = smooth_bce(h.get("label_smoothing", 0.0))
        if h.get("fl_gamma", 0.0) > 0:
            self.bce_cls, self.bce_obj = FocalLoss(self.bce_cls, h["fl_gamma"]), FocalLoss(self.bce_obj, h["fl_gamma"])
        det = model.model[-1]
        self.nl, self.na, self.nc = det.nl, det.na, det.nc
        self.balance = {3: [4.0, 1.0, 0.4]}.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.ssi = [float(s) for s in det.stride].index(16.0) if autobalance else 0
        self.autobalance = autobalance
        self.gr = 1.0
        self.anchor_t = h.get("anchor_t", 4.0)
        self.anchors = det.anchors  # (nl, na, 2) grid units; a live reference (autoanchor may change it)
        self.device = device

    def __call__(self, preds, targets, labeled=None):
        """preds: list of nl raw maps (bs, na, ny, nx, nc+5); targets: (N, 6) [img, cls, xc, yc, w, h] normalised.

        labeled: only the first `labeled` images of the batch are scored (the rest are unlabeled images,
        train_kd.py --unlabeled; their targets are none); 0 gives a zero loss that keeps the graph."""
        if labeled is not None and labeled < preds[0].shape[0]:
            if labeled <= 0:
                zero = sum(p.float().sum() for p in preds) * 0.0
                return zero.reshape(1), torch.zeros(3, device=preds[0].device)
            preds = [p[:labeled] for p in preds]
            targets = targets[targets[:, 0] < labeled]
        preds = [p.float() if p.dtype != torch.float32 else p for p in preds]
        dev = preds[0].device
        lcls = torch.zeros(1, device=dev)
        lbox = torch.zeros(1, device=dev)
        lobj = torch.zeros(1, device=dev)
        tcls, tbox, indices, anch = self.build_targets(preds, targets.to(dev))
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox = lbox + (1.0 - iou).mean()
                iou = iou.detach().clamp(0).type(tobj.dtype)
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=dev), tcls[i]] = self.cp
                    lcls = lcls + self.bce_cls(pcls, t)
            obji = self.bce_obj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:  # needs a host sync: off by default
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds, targets):
        """Assign targets to (image, anchor, cell) triples on every level.

        Returns per level: tcls (n,), tbox (n, 4) = (xy offset in the cell, wh) in grid units,
        indices (b, a, gj, gi), anch (n, 2) the matched anchors in grid units.
        """
        na, nt = self.na, targets.shape[0]
        dev = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=dev)
        ai = torch.arange(na, device=dev, dtype=torch.float32).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7)
        off = _OFFSETS.to(dev) * _BIAS
        for i in range(self.nl):
            anchors = self.anchors[i].to(dev).float()
            shape = preds[i].shape
            gain[2:6] = torch.tensor(shape, device=dev, dtype=torch.float32)[[3, 2, 3, 2]]
            t = targets * gain  # boxes in grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.anchor_t
                t = t[keep]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance to the far edge
                j, k = ((gxy % 1 < _BIAS) & (gxy > 1)).T
                l, m = ((gxi % 1 < _BIAS) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t = targets[0]
                offsets = 0
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, shape[3] - 1)
            gj = gij[:, 1].clamp(0, shape[2] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch

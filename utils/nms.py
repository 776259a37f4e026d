"""Non-maximum suppression over decoded YOLOv5 outputs.

Uses torchvision.ops.nms when torchvision imports; otherwise a pure-torch greedy NMS
that keeps exactly the same boxes (same IoU arithmetic, same strict '>' test, same
stable descending score order). Work is bounded by `max_nms` candidates per image
instead of a wall-clock limit, so results never depend on machine load.
"""

import torch

from utils.boxes import xywh2xyxy

try:  # optional dependency
    import torchvision as _tv

    _tv_nms = _tv.ops.nms
except Exception:  # ImportError, or a broken torchvision build
    _tv_nms = None

MAX_WH = 7680  # class offset (pixels) that separates classes in batched NMS


def has_torchvision_nms():
    """True when torchvision.ops.nms is available to this module."""
    return _tv_nms is not None


def _pairwise_iou(a, b):
    """IoU matrix (len(a), len(b)) with torchvision's formula (no epsilon)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_torch(boxes, scores, iou_thres, block=1024):
    """Pure-torch greedy NMS; same contract as torchvision.ops.nms.

    Boxes are processed in score order, in blocks: a block is first filtered against the
    boxes already kept, then resolved internally by a vectorised fixed-point iteration
    (keep_i = alive_i and no kept j < i overlaps i), whose unique fixed point is the
    greedy answer. Memory is O(block * (block + kept)); no Python loop over boxes.
    Returns indices of kept boxes sorted by decreasing score.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True)[1]
    sorted_boxes = boxes[order].float()
    kept_idx, kept_boxes = [], sorted_boxes[:0]
    for start in range(0, n, block):
        blk = sorted_boxes[start:start + block]
        m = blk.shape[0]
        alive = torch.ones(m, dtype=torch.bool, device=boxes.device)
        if kept_boxes.shape[0]:
            alive = ~(_pairwise_iou(blk, kept_boxes) > iou_thres).any(1)
        # sup[j, i]: box j (earlier, higher score) would suppress box i
        sup = (_pairwise_iou(blk, blk) > iou_thres).triu(1) & alive[:, None]
        keep = alive.clone()
        for _ in range(m + 1):  # converges in (longest suppression chain + 1) steps
            new_keep = alive & ~(sup & keep[:, None]).any(0)
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
        kept_idx.append(start + keep.nonzero().flatten())
        kept_boxes = torch.cat((kept_boxes, blk[keep]), 0)
    return order[torch.cat(kept_idx)]


def nms(boxes, scores, iou_thres):
    """torchvision.ops.nms when available, else nms_torch."""
    if _tv_nms is not None:
        return _tv_nms(boxes, scores, iou_thres)
    return nms_torch(boxes, scores, iou_thres)


def _candidates(x, conf_thres, multi_label, classes):
    """(n, nc+5) decoded rows of one image -> (m, 6) [x1, y1, x2, y2, score, cls], score = obj * cls."""
    x = x[x[:, 4] > conf_thres]
    if not x.shape[0]:
        return x.new_zeros((0, 6))
    scores = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        out = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    else:
        conf, j = scores.max(1, keepdim=True)
        out = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        out = out[(out[:, 5:6] == torch.as_tensor(classes, device=out.device, dtype=out.dtype)).any(1)]
    return out


def non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, labels=(), max_det=300, max_nms=30000):
    """Batched NMS on decoded predictions (bs, N, nc+5) [xc, yc, w, h, obj, cls...].

    Returns a list (one per image) of (n, 6) tensors [x1, y1, x2, y2, conf, cls], sorted by
    decreasing conf. `labels` (per image (m, 5) [cls, xc, yc, w, h] pixels) are appended as
    perfect predictions (autolabelling / --save-hybrid).
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} must be in [0, 1]")
    if isinstance(prediction, (list, tuple)):  # (decoded, raw) from an eval-mode model
        prediction = prediction[0]
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    output = [prediction.new_zeros((0, 6)) for _ in range(bs)]
    for xi, x in enumerate(prediction):
        if labels and len(labels[xi]):
            lb = labels[xi].to(x)
            extra = torch.zeros((lb.shape[0], nc + 5), device=x.device, dtype=x.dtype)
            extra[:, :4] = lb[:, 1:5]
            extra[:, 4] = 1.0
            extra[torch.arange(lb.shape[0], device=x.device), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, extra), 0)
        det = _candidates(x, conf_thres, multi_label, classes)
        if not det.shape[0]:
            continue
        det = det[torch.sort(det[:, 4], descending=True, stable=True)[1][:max_nms]]
        offsets = det[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = nms(det[:, :4] + offsets, det[:, 4], iou_thres)[:max_det]
        output[xi] = det[keep]
    return output

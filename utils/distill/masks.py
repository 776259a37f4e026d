"""Spatial masks built from ground truth for masked AT, FGFI and the KD trust gate (vectorised, on device).

targets: (N, 6) [image_index, class, xc, yc, w, h], boxes normalised to the network input.
A feature map of size (h, w) covers the input at `stride` pixels per cell.
"""

import torch


def _boxes_in_cells(targets, h, w):
    """Boxes as (x1, y1, x2, y2) in cell units and their centres, each (N,)."""
    xc, yc = targets[:, 2] * w, targets[:, 3] * h
    bw, bh = targets[:, 4] * w, targets[:, 5] * h
    return xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2, xc, yc


def _scatter_to_images(per_box, img_idx, bs):
    """Union over boxes of per-box masks (N, h, w) into per-image masks (bs, h, w) bool."""
    out = torch.zeros((bs,) + per_box.shape[1:], device=per_box.device, dtype=per_box.dtype)
    out.index_add_(0, img_idx, per_box)
    return out > 0


def _cell_cover(t, h, w):
    """Bool (N, h, w) per box: cells whose centre lies inside it, plus the cell holding its centre
    (so a box smaller than a cell still marks one cell)."""
    dev = t.device
    x1, y1, x2, y2, xc, yc = _boxes_in_cells(t, h, w)
    cx = torch.arange(w, device=dev, dtype=torch.float32) + 0.5  # cell centres
    cy = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    in_x = (cx[None] >= x1[:, None]) & (cx[None] <= x2[:, None])  # (N, w)
    in_y = (cy[None] >= y1[:, None]) & (cy[None] <= y2[:, None])  # (N, h)
    centre_x = cx[None].floor() == xc.clamp(0, w - 1e-3).floor()[:, None]
    centre_y = cy[None].floor() == yc.clamp(0, h - 1e-3).floor()[:, None]
    return (in_y[:, :, None] & in_x[:, None, :]) | (centre_y[:, :, None] & centre_x[:, None, :])


def gt_cell_mask(targets, bs, h, w):
    """Bool (bs, h, w): cells covered by a GT box of that image (_cell_cover)."""
    if targets.shape[0] == 0:
        return torch.zeros((bs, h, w), dtype=torch.bool, device=targets.device)
    t = targets.float()
    return _scatter_to_images(_cell_cover(t, h, w).float(), t[:, 0].long(), bs)


def gt_class_cells(targets, bs, h, w, nc):
    """Bool (bs, h, w, nc): cells covered by a GT box of class c in that image (_cell_cover)."""
    if targets.shape[0] == 0:
        return torch.zeros((bs, h, w, nc), dtype=torch.bool, device=targets.device)
    t = targets.float()
    slot = t[:, 0].long() * nc + t[:, 1].long().clamp(0, nc - 1)  # one (image, class) plane per box
    planes = _scatter_to_images(_cell_cover(t, h, w).float(), slot, bs * nc)  # (bs * nc, h, w)
    return planes.view(bs, nc, h, w).permute(0, 2, 3, 1)


def wat_mask(targets, bs, h, w, ratio=0.25):
    """Masked-AT weights (bs, h, w): `ratio` on background, 1 - ratio on GT cells."""
    cells = gt_cell_mask(targets, bs, h, w)
    return torch.where(cells, 1.0 - ratio, ratio).float()


def fgfi_mask(targets, bs, h, w, stride, anchors, thresh=0.5):
    """FGFI imitation mask (bs, h, w) bool (Wang et al. 2019).

    For each GT box k: IoU with every anchor (pixels, (na, 2)) centred on every cell;
    m_k = max IoU; cells where some anchor has IoU > thresh * m_k; union over the boxes of
    each image (its own boxes only). No Python loop over boxes.
    """
    dev = targets.device
    if targets.shape[0] == 0:
        return torch.zeros((bs, h, w), dtype=torch.bool, device=dev)
    t = targets.float()
    anchors = anchors.to(dev).float()
    img_w, img_h = w * stride, h * stride
    gx1 = (t[:, 2] - t[:, 4] / 2) * img_w
    gx2 = (t[:, 2] + t[:, 4] / 2) * img_w
    gy1 = (t[:, 3] - t[:, 5] / 2) * img_h
    gy2 = (t[:, 3] + t[:, 5] / 2) * img_h
    cx = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * stride  # (w,)
    cy = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * stride  # (h,)
    aw, ah = anchors[:, 0], anchors[:, 1]  # (na,)
    # separable intersection: widths (N, na, w), heights (N, na, h)
    ax1 = cx[None, None] - aw[None, :, None] / 2
    ax2 = cx[None, None] + aw[None, :, None] / 2
    iw = (torch.minimum(ax2, gx2[:, None, None]) - torch.maximum(ax1, gx1[:, None, None])).clamp(min=0)
    ay1 = cy[None, None] - ah[None, :, None] / 2
    ay2 = cy[None, None] + ah[None, :, None] / 2
    ih = (torch.minimum(ay2, gy2[:, None, None]) - torch.maximum(ay1, gy1[:, None, None])).clamp(min=0)
    inter = ih[:, :, :, None] * iw[:, :, None, :]  # (N, na, h, w)
    area_g = ((gx2 - gx1) * (gy2 - gy1))[:, None, None, None]
    area_a = (aw * ah)[None, :, None, None]
    iou = inter / (area_g + area_a - inter + 1e-9)
    m_k = iou.flatten(1).amax(1)  # (N,)
    region = ((iou > thresh * m_k[:, None, None, None]) & (m_k[:, None, None, None] > 0)).any(1)
    return _scatter_to_images(region.float(), t[:, 0].long(), bs)

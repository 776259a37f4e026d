"""AutoAnchor: best possible recall of the model's anchors on a dataset, k-means + evolution if poor."""

import numpy as np
import torch

from models.yolo import check_anchor_order
from utils.general import LOGGER, colorstr
from utils.torch_utils import de_parallel

PREFIX = colorstr("AutoAnchor: ")


def _label_wh(dataset, img_size, rng=None):
    """Label widths/heights in pixels at img_size (long side), optionally jittered by U(0.9, 1.1)."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64)  # (n, 2) = (w, h)
    if len(shapes) == 0:
        raise ValueError("autoanchor: the dataset has no images")
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    if rng is not None:
        shapes = shapes * rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    parts = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def _ratio_metric(k, wh):
    """x (n, na): worst-side size ratio of each label to each anchor; best (n,): its max over anchors."""
    r = wh[:, None] / k[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0]


def anchor_metrics(anchors, wh, thr=4.0):
    """(best possible recall, anchors above threshold per label) of anchors (na, 2) px vs label wh (n, 2) px."""
    x, best = _ratio_metric(anchors.float(), wh.float())
    aat = (x > 1 / thr).float().sum(1).mean()
    bpr = (best > 1 / thr).float().mean()
    return float(bpr), float(aat)


def check_anchors(dataset, model, thr=4.0, imgsz=640):
    """Check the anchors against the dataset labels; replace them (in grid units) when k-means does better."""
    det = de_parallel(model).model[-1]
    wh = torch.tensor(_label_wh(dataset, imgsz, np.random.default_rng(0)), dtype=torch.float32)
    if len(wh) == 0:
        LOGGER.info(f"{PREFIX}no labels, skipping the anchor check")
        return
    stride = det.stride.to(det.anchors.device).view(-1, 1, 1)
    anchors = det.anchors.clone() * stride  # pixels
    bpr, aat = anchor_metrics(anchors.cpu().view(-1, 2), wh, thr)
    msg = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        LOGGER.info(f"{msg}Current anchors are a good fit to dataset")
        return
    LOGGER.info(f"{msg}Anchors are a poor fit to dataset, attempting to improve...")
    na = det.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    new_bpr, _ = anchor_metrics(torch.tensor(new, dtype=torch.float32), wh, thr)
    if new_bpr > bpr:
        new_t = torch.tensor(new, device=det.anchors.device).type_as(det.anchors)
        det.anchors[:] = new_t.clone().view_as(det.anchors)
        check_anchor_order(det)
        det.anchors /= stride
        LOGGER.info(f"{PREFIX}Done: new anchors saved to model (BPR {new_bpr:.4f}).")
    else:
        LOGGER.info(f"{PREFIX}Done: original anchors better than new anchors, proceeding with original anchors.")


def _kmeans(x, n, iters=30, rng=None):
    """Plain k-means (k-means++ init) on rows of x; returns the n centroids."""
    rng = rng or np.random.default_rng(0)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, n):
        d2 = ((x[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
    c = np.array(centres, dtype=np.float64)
    for _ in range(iters):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(n):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


def kmean_anchors(dataset, n=9, img_size=640, thr=4.0, gen=1000, verbose=True, seed=0):
    """Anchors (n, 2) in pixels, sorted by area: k-means on label wh, then `gen` generations of mutation."""
    rng = np.random.default_rng(seed)
    inv_thr = 1 / thr
    wh0 = _label_wh(dataset, img_size)
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.info(f"{PREFIX}WARNING: extremely small objects found: {small} of {len(wh0)} labels are < 3 pixels")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)
    if len(wh) >= n:
        s = wh.std(0)
        s[s == 0] = 1.0
        k = _kmeans(wh / s, n, rng=rng) * s
    else:
        LOGGER.info(f"{PREFIX}too few labels for k-means, using random init")
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    wh_t = torch.tensor(wh, dtype=torch.float32)

    def fitness(anchors):
        _, best = _ratio_metric(torch.tensor(anchors, dtype=torch.float32), wh_t)
        return float((best * (best > inv_thr).float()).mean())

    k = k[np.argsort(k.prod(1))]
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    for _ in range(gen):
        v = np.ones(sh)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(sh) < mp) * rng.random() * rng.standard_normal(sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
    k = k[np.argsort(k.prod(1))]
    if verbose:
        bpr, aat = anchor_metrics(torch.tensor(k, dtype=torch.float32), wh_t, thr)
        LOGGER.info(f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr; "
                    f"anchors: " + ", ".join(f"{round(a)},{round(b)}" for a, b in k))
    return k

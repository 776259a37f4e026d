"""Image augmentations for detection: letterbox, random perspective, HSV jitter, mixup, copy-paste.

Boxes are pixel xyxy in a `labels` array (n, 5) = [class, x1, y1, x2, y2] unless stated.
Randomness comes from Python's `random` and NumPy's global generator, seeded per worker.
"""

import math
import random

import cv2
import numpy as np

from utils.boxes import resample_segments, segment2box

PAD_VALUE = 114


def letterbox(im, new_shape=(640, 640), color=(PAD_VALUE,) * 3, auto=True, scaleFill=False, scaleup=True, stride=32):
    """Resize keeping aspect ratio and pad to new_shape (or to a stride multiple when auto).

    Returns (im, ratio (w, h), (dw, dh)) where dw/dh is the padding on the left/top side.
    """
    shape = im.shape[:2]  # current (h, w)
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:  # only scale down (better val mAP)
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # minimum rectangle
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:  # stretch
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def model_input(im, new_shape, scaleup=True, rgb=False):
    """One HWC uint8 image (BGR, or RGB with rgb=True) letterboxed to exactly new_shape (h, w) -> float32 array
    (1, 3, h, w), RGB, 0..1: what a model (or an exported artifact) takes."""
    lb = letterbox(im, new_shape, auto=False, scaleup=scaleup)[0]
    chw = lb.transpose(2, 0, 1) if rgb else lb[:, :, ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32) / 255.0


def augment_hsv(im, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains 1 + U(-1, 1) * gain, applied in place to a BGR uint8 image."""
    if not (hgain or sgain or vgain):
        return im
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)
    return im


def box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Mask of boxes worth keeping after augmentation. box1 before, box2 after, both (4, n) xyxy.

    Kept when width and height > wh_thr px, area ratio > area_thr and aspect ratio < ar_thr.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _affine_matrix(height, width, degrees, translate, scale, shear, perspective, border):
    """Compose centre -> perspective -> rotation/scale -> shear -> translation into one 3x3 matrix."""
    C = np.eye(3)
    C[0, 2] = -width / 2  # x translation (pixels)
    C[1, 2] = -height / 2
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    out_w, out_h = width + border[1] * 2, height + border[0] * 2
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_w
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_h
    return T @ S @ R @ P @ C, s, (out_w, out_h)


def _warp_points(xy, M, perspective):
    """Apply the 3x3 matrix to points (n, 2)."""
    xy = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ M.T
    return xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]


def random_perspective(im, targets=(), segments=(), degrees=10, translate=0.1, scale=0.1, shear=10,
                       perspective=0.0, border=(0, 0)):
    """Random affine/perspective warp of image, boxes (targets [cls, x1, y1, x2, y2]) and segments.

    border (h, w) grows (positive) or crops (negative, e.g. -s/2 after mosaic) the output canvas.
    Returns (im, targets) with boxes clipped and filtered by box_candidates.
    """
    height, width = im.shape[:2]
    height_in, width_in = height, width
    M, s, (out_w, out_h) = _affine_matrix(height_in, width_in, degrees, translate, scale, shear, perspective, border)
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(out_w, out_h), borderValue=(PAD_VALUE,) * 3)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(out_w, out_h), borderValue=(PAD_VALUE,) * 3)
    targets = np.asarray(targets, dtype=np.float32).reshape(-1, 5)
    n = len(targets)
    if n:
        use_segments = len(segments) == n and any(len(x) for x in segments)
        new = np.zeros((n, 4))
        if use_segments:  # warp polygons, box = extent of the warped polygon inside the image
            for i, seg in enumerate(resample_segments(segments)):
                xy = _warp_points(seg, M, perspective)
                new[i] = segment2box(xy, out_w, out_h)
        else:  # warp the 4 corners, box = their extent
            corners = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
            xy = _warp_points(corners, M, perspective).reshape(n, 8)
            x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
            new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
            new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_w)
            new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_h)
        keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.01 if use_segments else 0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def mixup(im, labels, im2, labels2):
    """Blend two images with ratio ~ Beta(32, 32) and concatenate their labels."""
    r = np.random.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def bbox_ioa(box1, box2, eps=1e-7):
    """Intersection over box2's area: box1 (4,) xyxy against box2 (n, 4) xyxy -> (n,)."""
    iw = (np.minimum(box1[2], box2[:, 2]) - np.maximum(box1[0], box2[:, 0])).clip(0)
    ih = (np.minimum(box1[3], box2[:, 3]) - np.maximum(box1[1], box2[:, 1])).clip(0)
    return iw * ih / ((box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1]) + eps)


def copy_paste(im, labels, segments, p=0.5):
    """Paste left-right mirrored copies of segmented objects where they overlap existing boxes < 30 %.

    labels (n, 5) pixel xyxy, segments list of (k, 2) pixel polygons. Returns (im, labels, segments).
    """
    n = len(segments)
    if not (p and n):
        return im, labels, segments
    h, w = im.shape[:2]
    mask = np.zeros(im.shape[:2], np.uint8)
    labels, segments = labels.copy(), list(segments)
    for j in random.sample(range(n), k=round(p * n)):
        c, x1, y1, x2, y2 = labels[j]
        box = np.array([w - x2, y1, w - x1, y2])
        if (bbox_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[c, *box]]), 0)
            mirrored = np.stack([w - segments[j][:, 0], segments[j][:, 1]], 1)
            segments.append(mirrored)
            cv2.drawContours(mask, [segments[j].astype(np.int32)], -1, 255, cv2.FILLED)
    if mask.any():
        flipped_im, flipped_mask = cv2.flip(im, 1), cv2.flip(mask, 1).astype(bool)
        im = im.copy()
        im[flipped_mask] = flipped_im[flipped_mask]
    return im, labels, segments

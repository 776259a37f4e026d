"""A small synthetic steel-defect detection dataset, generated locally and deterministically.

Textured grey backgrounds with 1-3 drawn defects each, in NEU-DET's 6 classes. Each kind has its own
look so that a tiny model can learn them: crazing = web of thin dark cracks, inclusion = a few dark
elongated streaks, patches = a large smooth dark blob, pitted_surface = a cluster of small dark pits,
rolled-in_scale = a cluster of short bright horizontal flakes, scratches = one long thin bright line.
Boxes are the exact extent of the drawn pixels.
"""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

MARKER = "GENERATED_BY_YOLOV5_KD"  # written into every generated dataset; --overwrite deletes only such folders
NAMES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def _background(rng, h, w):
    base = rng.uniform(100, 160)
    low = cv2.resize(rng.normal(0, 1, (h // 16 + 2, w // 16 + 2)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC) * 8
    streaks = np.repeat(rng.normal(0, 2.5, (h, 1)), w, 1).astype(np.float32)  # rolling direction texture
    return base + low + streaks + rng.normal(0, 3, (h, w)).astype(np.float32)


def _crazing(rng, mask, bw, bh):
    for _ in range(rng.integers(6, 12)):
        x, y = rng.uniform(0, bw), rng.uniform(0, bh)
        angle = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _ in range(rng.integers(3, 7)):
            angle += rng.uniform(-0.9, 0.9)
            step = rng.uniform(5, 12)
            x, y = np.clip(x + step * np.cos(angle), 0, bw - 1), np.clip(y + step * np.sin(angle), 0, bh - 1)
            pts.append((x, y))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, 1)
    return -38.0


def _inclusion(rng, mask, bw, bh):
    angle = rng.uniform(0, 180)
    for _ in range(rng.integers(1, 4)):
        c = (int(rng.uniform(0.3, 0.7) * bw), int(rng.uniform(0.3, 0.7) * bh))
        axes = (int(min(bw, bh) * rng.uniform(0.3, 0.5)), int(rng.integers(1, 3)))
        cv2.ellipse(mask, c, axes, angle + rng.uniform(-10, 10), 0, 360, 1, -1)
    return -55.0


def _patches(rng, mask, bw, bh):
    for _ in range(rng.integers(3, 6)):
        c = (int(rng.uniform(0.3, 0.7) * bw), int(rng.uniform(0.3, 0.7) * bh))
        axes = (int(bw * rng.uniform(0.15, 0.3)), int(bh * rng.uniform(0.15, 0.3)))
        cv2.ellipse(mask, c, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return -45.0


def _pitted(rng, mask, bw, bh):
    for _ in range(rng.integers(15, 35)):
        c = (int(rng.uniform(2, bw - 2)), int(rng.uniform(2, bh - 2)))
        cv2.circle(mask, c, int(rng.integers(1, 3)), 1, -1)
    return -60.0


def _scale(rng, mask, bw, bh):
    for _ in range(rng.integers(8, 18)):
        x, y = int(rng.uniform(0, bw - 6)), int(rng.uniform(0, bh - 3))
        cv2.rectangle(mask, (x, y), (x + int(rng.integers(4, 11)), y + int(rng.integers(1, 3))), 1, -1)
    return 45.0


def _scratch(rng, mask, bw, bh):
    if rng.random() < 0.5:
        p1, p2 = (int(rng.uniform(0, bw)), 0), (int(rng.uniform(0, bw)), bh - 1)
    else:
        p1, p2 = (0, int(rng.uniform(0, bh))), (bw - 1, int(rng.uniform(0, bh)))
    cv2.line(mask, p1, p2, 1, int(rng.integers(1, 3)))
    return 60.0


DRAWERS = (_crazing, _inclusion, _patches, _pitted, _scale, _scratch)
# box size ranges (fraction of the shorter image side) per kind: (min, max) for width and height
SIZES = ((0.3, 0.5), (0.15, 0.3), (0.2, 0.45), (0.2, 0.35), (0.2, 0.4), (0.4, 0.9))


def _iou(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def make_image(rng):
    """-> (grey uint8 image (h, w), rows [(cls, xc, yc, w, h)] normalised)."""
    h, w = int(rng.integers(128, 201)), int(rng.integers(128, 201))
    img = _background(rng, h, w)
    boxes, rows = [], []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, len(NAMES)))
        lo, hi = SIZES[cls]
        side = min(h, w)
        for _attempt in range(20):
            bw, bh = int(rng.uniform(lo, hi) * side), int(rng.uniform(lo, hi) * side)
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            mask = np.zeros((bh, bw), np.uint8)
            delta = DRAWERS[cls](rng, mask, bw, bh)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            if box[2] - box[0] < 4 or box[3] - box[1] < 4 or any(_iou(box, b) > 0 for b in boxes):
                continue
            region = img[y0:y0 + bh, x0:x0 + bw]
            region += mask * delta * rng.uniform(0.8, 1.2)
            boxes.append(box)
            x1, y1, x2, y2 = box
            rows.append((cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
            break
    return np.clip(img, 0, 255).astype(np.uint8), rows


def make_synthetic(out, n_train=200, n_val=50, seed=0, overwrite=False):
    """Write out/images/{train,val}/*.jpg and out/labels/{train,val}/*.txt. Returns the dataset folder.

    Generated in a temporary sibling folder and moved into place, so concurrent callers never see a
    half-written dataset. An existing dataset is kept unless overwrite.
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        return out
    if overwrite and out.exists() and not (out / MARKER).is_file():
        raise FileExistsError(f"{out}: refusing to overwrite a folder this generator did not create "
                              f"(no {MARKER} marker inside); remove it yourself or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1_000_000)):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, offset + i])
            img, rows = make_image(rng)
            stem = f"syn_{split}_{i:05d}"
            cv2.imwrite(str(tmp / "images" / split / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (tmp / "labels" / split / f"{stem}.txt").write_text(
                "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in rows))
    (tmp / MARKER).write_text(json.dumps({"generator": "yolov5-kd make_synthetic", "train": n_train,
                                          "val": n_val, "seed": seed}) + "\n")
    if overwrite and out.exists():
        shutil.rmtree(out)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out

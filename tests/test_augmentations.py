"""Augmentations keep boxes consistent with pixels: bright rectangles on a dark background are
flipped, letterboxed, warped and mosaicked, and every output box must cover its rectangle."""

import random

import cv2
import numpy as np
import pytest
import torch

from utils.augmentations import (augment_hsv, box_candidates, copy_paste, letterbox, mixup,
                                 random_perspective)
from utils.dataloaders import LoadImagesAndLabels

NO_AUG = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
              perspective=0.0, flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0, copy_paste=0.0)


def make_rect_dataset(root, n=6, seed=0):
    """n images (varied sizes, some non-square) with 1-2 white rectangles each on black, exact labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(80, 160)), int(rng.integers(80, 160))
        im = np.zeros((h, w, 3), np.uint8)
        rows = []
        for k in range(int(rng.integers(1, 3))):
            bw, bh = int(rng.integers(15, 35)), int(rng.integers(15, 35))
            x1 = int(rng.integers(0, w // 2 - bw)) + (w // 2 if k else 0)
            y1 = int(rng.integers(0, h - bh))
            im[y1:y1 + bh, x1:x1 + bw] = 255
            rows.append(f"{k} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}\n")
        cv2.imwrite(str(root / "images" / f"im{i}.png"), im)
        (root / "labels" / f"im{i}.txt").write_text("".join(rows))
    return root / "images"


def assert_boxes_match_pixels(img, targets, min_fill=0.9, max_stray=0.03):
    """img (3, H, W) uint8 tensor, targets (n, 6) or (n, 5) normalised xywh: boxes cover bright pixels."""
    img = img.numpy() if isinstance(img, torch.Tensor) else img
    bright = img.max(0) > 128
    h, w = bright.shape
    covered = np.zeros_like(bright)
    boxes = np.asarray(targets)[:, -4:]
    assert len(boxes), "expected at least one box"
    for xc, yc, bw, bh in boxes:
        x1, y1, x2, y2 = [int(round(v)) for v in ((xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w,
                                                 (yc + bh / 2) * h)]
        inside = bright[max(y1 + 1, 0):y2 - 1, max(x1 + 1, 0):x2 - 1]  # 1 px margin: resampling blurs edges
        assert inside.size and inside.mean() >= min_fill, f"box {x1, y1, x2, y2} fill {inside.mean():.2f}"
        covered[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
    stray = (bright & ~covered).sum() / max(bright.sum(), 1)
    assert stray <= max_stray, f"{stray:.1%} of bright pixels lie outside every box"


@pytest.fixture()
def rect_images(tmp_path):
    return make_rect_dataset(tmp_path / "rects")


def dataset(path, **hyp):
    random.seed(0)
    np.random.seed(0)
    return LoadImagesAndLabels(path, img_size=128, batch_size=4, augment=True, hyp={**NO_AUG, **hyp}, stride=32)


def test_letterbox_shapes_ratio_and_padding():
    im = np.full((100, 200, 3), 7, np.uint8)
    out, ratio, (dw, dh) = letterbox(im, 128, auto=False)
    assert out.shape == (128, 128, 3) and ratio == (0.64, 0.64)
    assert dw == 0 and dh == pytest.approx((128 - 64) / 2)
    assert (out[:int(dh) - 1] == 114).all() and (out[64 + int(dh) + 1:] == 114).all()
    out, _, _ = letterbox(im, 128, auto=True, stride=32)  # minimum rectangle: stride multiple
    assert out.shape == (64, 128, 3)
    out, ratio, _ = letterbox(im, (64, 64), auto=False, scaleFill=True)
    assert out.shape == (64, 64, 3) and ratio == (64 / 200, 64 / 100)
    out, ratio, _ = letterbox(np.zeros((20, 30, 3), np.uint8), 64, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and out.shape == (64, 64, 3)


def test_box_candidates_filters_small_thin_and_shrunk_boxes():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 100, 100]], float).T
    after = np.array([[0, 0, 8, 8], [0, 0, 2, 8], [0, 0, 20, 20], [0, 0, 99, 0.9]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]


def test_random_perspective_identity_and_translation():
    im = np.zeros((64, 64, 3), np.uint8)
    im[10:20, 30:50] = 255
    targets = np.array([[0, 30, 10, 50, 20]], np.float32)
    out, t = random_perspective(im.copy(), targets, degrees=0, translate=0, scale=0, shear=0)
    assert (out == im).all() and np.allclose(t, targets)
    random.seed(3)
    out, t = random_perspective(im.copy(), targets, degrees=0, translate=0.2, scale=0.3, shear=0)
    xyxy = t[0, 1:]
    xywhn = [(xyxy[0] + xyxy[2]) / 128, (xyxy[1] + xyxy[3]) / 128, (xyxy[2] - xyxy[0]) / 64, (xyxy[3] - xyxy[1]) / 64]
    assert_boxes_match_pixels(out.transpose(2, 0, 1), [xywhn])


@pytest.mark.parametrize("hyp", [dict(fliplr=1.0), dict(flipud=1.0), dict(fliplr=1.0, flipud=1.0),
                                 dict(translate=0.2, scale=0.5), dict(degrees=5.0, translate=0.1),
                                 dict(shear=3.0, scale=0.3)])
def test_letterboxed_augmentations_keep_boxes_on_pixels(rect_images, hyp):
    ds = dataset(rect_images, **hyp)
    min_fill = 0.9 if not (hyp.get("degrees") or hyp.get("shear")) else 0.7
    for i in range(len(ds)):
        img, targets, _, shapes = ds[i]
        if len(targets):
            assert_boxes_match_pixels(img, targets, min_fill=min_fill)


def test_flip_moves_the_box(rect_images):
    plain, flipped = dataset(rect_images), dataset(rect_images, fliplr=1.0)
    t0, t1 = plain[0][1], flipped[0][1]
    assert torch.allclose(t1[:, 2], 1 - t0[:, 2], atol=1e-5) and torch.allclose(t1[:, 3:], t0[:, 3:])
    assert torch.equal(flipped[0][0], plain[0][0].flip(2))


def test_mosaic_with_perspective_keeps_boxes_on_pixels(rect_images):
    ds = dataset(rect_images, mosaic=1.0, translate=0.1, scale=0.5)
    n_boxes = 0
    for i in range(12):
        img, targets, _, shapes = ds[i % len(ds)]
        assert img.shape == (3, 128, 128) and shapes is None
        if len(targets):
            assert_boxes_match_pixels(img, targets)
            n_boxes += len(targets)
    assert n_boxes > 0


def test_mosaic_canvas_and_centre_range(rect_images):
    ds = dataset(rect_images, mosaic=1.0)  # no perspective: only the centre crop of the 2s canvas
    s = ds.img_size
    random.seed(1)
    img, labels = ds.load_mosaic(0)
    assert img.shape == (s, s, 3)
    # the 2s x 2s canvas is cropped by border -s/2 on each side; boxes are inside the crop
    assert (labels[:, 1:] >= 0).all() and (labels[:, [1, 3]] <= s).all() and (labels[:, [2, 4]] <= s).all()


def test_mixup_blends_and_concatenates():
    a, b = np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 0, np.uint8)
    la, lb = np.ones((2, 5), np.float32), np.zeros((3, 5), np.float32)
    np.random.seed(0)
    im, labels = mixup(a, la, b, lb)
    assert len(labels) == 5 and 60 < im.mean() < 140  # ratio ~ Beta(32, 32), close to 0.5


def test_mixup_in_dataset_keeps_boxes_on_pixels(rect_images):
    ds = dataset(rect_images, mosaic=1.0, mixup=1.0)
    img, targets, _, _ = ds[0]
    assert len(targets)
    boxes = targets[:, 2:].numpy()
    imgf = img.numpy().max(0)
    for xc, yc, bw, bh in boxes:  # blended rectangles are about half as bright, still above background
        x1, y1, x2, y2 = int((xc - bw / 2) * 128) + 1, int((yc - bh / 2) * 128) + 1, int((xc + bw / 2) * 128) - 1, \
            int((yc + bh / 2) * 128) - 1
        assert imgf[y1:y2, x1:x2].mean() > 100


def test_augment_hsv_gain_zero_is_identity_and_nonzero_changes():
    im = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    same = im.copy()
    augment_hsv(same, 0, 0, 0)
    assert (same == im).all()
    np.random.seed(1)
    changed = im.copy()
    augment_hsv(changed, 0.5, 0.5, 0.5)
    assert not (changed == im).all() and changed.dtype == np.uint8


def test_copy_paste_mirrors_segment_and_box():
    im = np.zeros((64, 64, 3), np.uint8)
    seg = np.array([[5, 5], [25, 5], [25, 20], [5, 20]], np.float32)
    im[5:21, 5:26] = 255
    labels = np.array([[3, 5, 5, 25, 20]], np.float32)
    random.seed(0)
    out, new_labels, segs = copy_paste(im, labels, [seg], p=1.0)
    assert len(new_labels) == 2 and len(segs) == 2 and new_labels[1, 0] == 3
    np.testing.assert_allclose(new_labels[1, 1:], [64 - 25, 5, 64 - 5, 20])
    assert out[6:20, 64 - 24:64 - 6].min() == 255  # pasted pixels where the mirrored box is

"""Metrics: AP protocol on hand cases, matching at IoU boundaries, class handling, confusion
matrix counts, fitness, and agreement with pycocotools on a generated set."""

import json

import numpy as np
import pytest
import torch

from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions

# Upstream's 101-point protocol: the sentinel (recall 1, precision 0) makes the last grid
# point 0, so a constant envelope c on (0, 1] integrates to c * (0.99 + 0.005) = 0.995 c.
LAST_STEP = 0.995


def _det(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _lab(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def test_perfect_predictions_give_top_ap():
    tp = np.ones((4, 10), bool)
    *_, p, r, f1, ap, cls = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 1]),
                                         np.array([0, 0, 1, 1]))
    assert cls.tolist() == [0, 1]
    assert np.allclose(ap, LAST_STEP)  # the maximum the upstream protocol can give
    assert np.allclose(p, 1) and np.allclose(r, 1)


def test_ap_per_class_is_the_operating_point_of_the_curves():
    from utils.metrics import ap_curves, operating_point

    tp = np.array([[1, 0], [0, 0], [1, 1]], bool)
    args = (tp, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1]), np.array([0, 1, 1]))
    curves = ap_curves(*args)
    out, ref = ap_per_class(*args), operating_point(curves)
    assert all(np.array_equal(a, b) for a, b in zip(out, ref)) and curves.nt.tolist() == [1, 2]
    assert np.array_equal(out[5], curves.ap) and out[5].shape == (2, 2)


def test_false_positive_ranked_first_halves_ap():
    # one label; a FP at 0.9 above the TP at 0.8: precision envelope = 1/2 on all of (0, 1]
    _, _, _, _, _, ap, _ = ap_per_class(np.array([[0], [1]], bool), np.array([0.9, 0.8]), np.zeros(2), np.zeros(1))
    assert ap[0, 0] == pytest.approx(0.5 * LAST_STEP, abs=1e-9)


def test_false_positive_in_the_middle_by_hand():
    # two labels; TP 0.9, FP 0.8, TP 0.7 -> envelope 1 on [0, 0.5), 2/3 from 0.5 to 1
    ap = ap_per_class(np.array([[1], [0], [1]], bool), np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2))[5]
    by_hand = 0.49 * 1 + 0.01 * (1 + 2 / 3) / 2 + 0.49 * 2 / 3 + 0.01 * (2 / 3) / 2
    assert ap[0, 0] == pytest.approx(by_hand, abs=1e-9)


def test_compute_ap_envelope_is_monotone():
    ap, mpre, mrec = compute_ap(np.array([0.2, 0.4, 0.6]), np.array([0.5, 1.0, 0.2]))
    assert np.all(np.diff(mpre) <= 0)
    assert 0 < ap < 1


def test_class_absent_from_labels_not_scored():
    tp = np.array([[1], [0], [0]], bool)
    out = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 2, 2]), np.array([0]))
    assert out[6].tolist() == [0]  # class 2 has predictions but no labels: not in the result
    assert out[5].shape == (1, 1)
    assert out[5][0, 0] == pytest.approx(LAST_STEP)


def test_class_with_labels_but_no_predictions_scores_zero():
    out = ap_per_class(np.array([[1]], bool), np.array([0.9]), np.array([0]), np.array([0, 1]))
    assert out[6].tolist() == [0, 1]
    assert out[5][1, 0] == 0 and out[3][1] == 0


def test_iou_threshold_boundary_is_inclusive():
    lab = _lab([0, 0, 0, 10, 10])
    exact_half = match_predictions(_det([0, 0, 10, 5, 0.9, 0]), lab)  # IoU exactly 0.5
    assert exact_half[0].tolist() == [True] + [False] * 9
    just_below = match_predictions(_det([0, 0, 10, 4.99, 0.9, 0]), lab)
    assert not just_below.any()
    iou = 0.7
    c = match_predictions(_det([0, 0, 10, 10 * iou, 0.9, 0]), lab)[0]
    assert c.tolist() == (IOU_THRESHOLDS <= torch.tensor(iou)).tolist()


def test_matching_is_one_to_one_and_class_aware():
    lab = _lab([0, 0, 0, 10, 10], [1, 20, 20, 30, 30])
    dets = _det([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0], [20, 20, 30, 30, 0.7, 0])
    c = match_predictions(dets, lab)[:, 0].tolist()
    assert c == [True, False, False]  # duplicate is a FP; right place, wrong class is a FP
    two_labels_one_det = match_predictions(_det([0, 0, 10, 10, 0.9, 0]), _lab([0, 0, 0, 10, 10], [0, 0, 0, 10, 9]))
    assert two_labels_one_det.shape == (1, 10) and two_labels_one_det[0, 0]


def test_match_empty_inputs():
    assert match_predictions(_det(), _lab([0, 0, 0, 1, 1])).shape == (0, 10)
    assert not match_predictions(_det([0, 0, 1, 1, 0.5, 0]), _lab()).any()


def test_confusion_matrix_hand_case():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = _lab([0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60])
    dets = _det([0, 0, 10, 10, 0.9, 0],      # correct class 0
                [20, 20, 30, 30, 0.8, 0],    # class 1 predicted as 0
                [80, 80, 90, 90, 0.7, 1],    # background predicted as 1
                [50, 50, 60, 60, 0.1, 1])    # below conf: ignored -> label 3 missed
    cm.process_batch(dets, labels)
    expected = np.array([[1, 1, 0],
                         [0, 0, 1],
                         [0, 1, 0]])  # [predicted, true], index 2 = background
    assert np.array_equal(cm.matrix, expected)
    cm.process_batch(None, torch.tensor([0.0, 0.0]))
    assert cm.matrix[2, 0] == 2
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]


def test_confusion_matrix_counts_unmatched_detections_without_any_match():
    cm = ConfusionMatrix(nc=1)
    cm.process_batch(_det([50, 50, 60, 60, 0.9, 0]), _lab([0, 0, 0, 10, 10]))
    assert cm.matrix.tolist() == [[0, 1], [1, 0]]


def test_fitness_weights():
    assert fitness(np.array([[0.3, 0.4, 0.6, 0.2]]))[0] == pytest.approx(0.1 * 0.6 + 0.9 * 0.2)


def _generated_set(seed=0, n_img=30, nc=3):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_img):
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(20, 100, 2)
            c = int(rng.integers(nc))
            gts.append((i, c, x, y, w, h))
            if rng.random() < 0.85:  # detected, with localisation noise
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                dets.append((i, c, x + j[0], y + j[1], max(w + j[2], 2), max(h + j[3], 2), rng.uniform(0.3, 1)))
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 300, 2)
            dets.append((i, int(rng.integers(nc)), x, y, 40, 40, rng.uniform(0, 0.7)))
    return np.array(gts), np.array(dets)


def test_map_agrees_with_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, dets = _generated_set()
    stats = []
    for i in np.unique(gts[:, 0]):
        g, d = gts[gts[:, 0] == i], dets[dets[:, 0] == i]
        d = d[np.argsort(-d[:, 6])]
        lab = torch.tensor(np.c_[g[:, 1], g[:, 2], g[:, 3], g[:, 2] + g[:, 4], g[:, 3] + g[:, 5]], dtype=torch.float32)
        det = torch.tensor(np.c_[d[:, 2], d[:, 3], d[:, 2] + d[:, 4], d[:, 3] + d[:, 5], d[:, 6], d[:, 1]],
                           dtype=torch.float32)
        stats.append((match_predictions(det, lab).numpy(), d[:, 6], d[:, 1], g[:, 1]))
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats))
    ap = ap_per_class(tp, conf, pcls, tcls)[5]
    # known protocol difference: beyond the highest recall r_max, upstream interpolates linearly
    # from the precision of the last-ranked prediction p_last down to 0 at recall 1 (area
    # (1 - r_max) p_last / 2); COCO counts precision 0 there. Remove that tail to compare.
    order = np.argsort(-conf, kind="stable")
    tail = np.zeros_like(ap)
    for ci, c in enumerate(np.unique(tcls)):
        t = tp[order][pcls[order] == c].astype(float)
        n_l = (tcls == c).sum()
        for j in range(t.shape[1]):
            tpc = t[:, j].cumsum()
            if tpc.size:
                tail[ci, j] = (1 - tpc[-1] / n_l) * (tpc[-1] / tpc.size) / 2
    assert tail.max() > 0.005  # the correction matters on this set
    ap = ap - tail
    ours50, ours = ap[:, 0].mean(), ap.mean()

    coco_gt = {"images": [{"id": int(i), "width": 400, "height": 400} for i in np.unique(gts[:, 0])],
               "categories": [{"id": c} for c in range(3)],
               "annotations": [{"id": k + 1, "image_id": int(g[0]), "category_id": int(g[1]), "bbox": list(g[2:6]),
                                "area": float(g[4] * g[5]), "iscrowd": 0} for k, g in enumerate(gts)]}
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt))
    coco = COCO(str(tmp_path / "gt.json"))
    res = coco.loadRes([{"image_id": int(d[0]), "category_id": int(d[1]), "bbox": list(d[2:6]), "score": float(d[6])}
                        for d in dets])
    ev = COCOeval(coco, res, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    # remaining differences: 101-point mean vs trapezoid, and COCO's score-order matching
    assert ours50 == pytest.approx(ev.stats[1], abs=0.005)
    assert ours == pytest.approx(ev.stats[0], abs=0.005)

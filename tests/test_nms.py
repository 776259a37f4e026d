"""NMS: score = obj * cls, thresholds, class separation, max_det/max_nms, pure-torch fallback."""

import importlib
import sys

import pytest
import torch

from tests.conftest import import_torchvision_or_skip

import utils.nms as nms_mod
from utils.nms import nms_torch, non_max_suppression


def _pred(rows, nc=3):
    """rows of (xc, yc, w, h, obj, cls_id, cls_prob) -> (1, n, nc+5) decoded tensor."""
    out = torch.zeros(1, len(rows), nc + 5)
    for k, (xc, yc, w, h, obj, c, pc) in enumerate(rows):
        out[0, k, :5] = torch.tensor([xc, yc, w, h, obj])
        out[0, k, 5 + c] = pc
    return out


def _random_boxes(n, seed, size=200.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def test_score_is_obj_times_cls_and_threshold():
    p = _pred([(50, 50, 20, 20, 0.5, 1, 0.8), (150, 150, 20, 20, 0.9, 0, 0.2)])
    out = non_max_suppression(p, conf_thres=0.25)[0]
    assert out.shape == (1, 6)  # 0.9 * 0.2 = 0.18 < 0.25 is dropped
    assert out[0, 4].item() == pytest.approx(0.4)
    assert out[0, 5].item() == 1
    assert torch.allclose(out[0, :4], torch.tensor([40.0, 40, 60, 60]))


def test_overlapping_same_class_suppressed_other_class_kept():
    p = _pred([(50, 50, 20, 20, 0.9, 0, 0.9), (51, 50, 20, 20, 0.8, 0, 0.9), (51, 50, 20, 20, 0.8, 2, 0.9)])
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5)[0]
    assert sorted(out[:, 5].tolist()) == [0, 2]
    agn = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, agnostic=True)[0]
    assert agn.shape[0] == 1


def test_multi_label_and_classes_filter():
    p = torch.zeros(1, 1, 8)
    p[0, 0, :5] = torch.tensor([50, 50, 20, 20, 1.0])
    p[0, 0, 5:] = torch.tensor([0.6, 0.5, 0.01])
    assert non_max_suppression(p, 0.1, multi_label=True)[0][:, 5].tolist() == [0, 1]
    assert non_max_suppression(p, 0.1, multi_label=False)[0][:, 5].tolist() == [0]
    assert non_max_suppression(p, 0.1, multi_label=True, classes=[1])[0][:, 5].tolist() == [1]


def test_max_det_and_max_nms_bound_output_sorted():
    rows = [(20 * k + 10, 10, 8, 8, 0.3 + 0.001 * k, 0, 1.0) for k in range(50)]  # disjoint boxes
    p = _pred(rows)
    out = non_max_suppression(p, 0.1, max_det=7)[0]
    assert out.shape[0] == 7
    assert torch.all(out[:-1, 4] >= out[1:, 4])
    few = non_max_suppression(p, 0.1, max_nms=5)[0]  # only the 5 best candidates enter NMS
    assert few.shape[0] == 5 and few[:, 4].min() > 0.3 + 0.001 * 44


def test_empty_and_tuple_input():
    p = torch.zeros(2, 10, 8)
    out = non_max_suppression((p, None), 0.25)
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)


def test_bad_threshold_message():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 1, 6), conf_thres=2)


@pytest.mark.parametrize("seed,thr", [(0, 0.45), (1, 0.6), (2, 0.3), (3, 0.7)])
def test_fallback_matches_torchvision(seed, thr):
    tv = import_torchvision_or_skip()
    boxes, scores = _random_boxes(1500, seed)
    ref = tv.ops.nms(boxes, scores, thr)
    got = nms_torch(boxes, scores, thr, block=256)  # several blocks
    assert torch.equal(ref, got)


def test_fallback_greedy_chain():
    # a suppresses b, b would suppress c, but b is gone so c survives (greedy, not one-pass)
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_torch(boxes, scores, 0.3).tolist() == [0, 2]


def test_module_works_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    mod = importlib.reload(nms_mod)
    try:
        assert not mod.has_torchvision_nms()
        p = _pred([(50, 50, 20, 20, 0.9, 0, 0.9), (52, 50, 20, 20, 0.8, 0, 0.9), (150, 50, 20, 20, 0.8, 0, 0.9)])
        out = mod.non_max_suppression(p, 0.1, 0.45)[0]
        assert out.shape[0] == 2
    finally:
        monkeypatch.undo()
        importlib.reload(nms_mod)

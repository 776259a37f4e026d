"""Pure distillation losses and GT masks (utils/distill/losses.py, masks.py)."""

import math

import pytest
import torch

from utils.distill import losses
from utils.distill.masks import fgfi_mask, gt_cell_mask, gt_class_cells, wat_mask

GAINS = {"giou": 0.05, "kd": 1.0, "obj": 0.3, "cls": 0.2}


def _preds(seed, nc=3, bs=2, sizes=((8, 8), (4, 4))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, h, w, 5 + nc, generator=g) for h, w in sizes]


def _feat(seed, shape=(2, 8, 6, 6)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _assert_positive_with_grad(fn, s, *rest):
    s = s.clone().requires_grad_(True)
    loss = fn(s, *rest)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", losses.KD_CLS_TYPES)
def test_output_kd_zero_when_equal_positive_otherwise(kind):
    t = _preds(0)
    total, items = losses.output_kd_loss([x.clone() for x in t], t, GAINS, nc=3, kind=kind, temperature=2.0)
    assert total.abs().item() < 1e-6 and items.abs().max().item() < 1e-6
    s = [x.clone().requires_grad_(True) for x in _preds(1)]
    total, items = losses.output_kd_loss(s, t, GAINS, nc=3, kind=kind, temperature=2.0)
    assert total.item() > 0 and (items > 0).all()
    total.backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in s)


def test_output_kd_scaling_and_single_class():
    t, s = _preds(0), _preds(1)
    total, items = losses.output_kd_loss(s, t, GAINS, nc=3)
    expect = 2 * GAINS["kd"] * (GAINS["giou"] * items[0] + GAINS["obj"] * items[1] + GAINS["cls"] * items[2])
    assert math.isclose(total.item(), expect.item(), rel_tol=1e-5)
    doubled, _ = losses.output_kd_loss(s, t, {**GAINS, "kd": 2.0}, nc=3)
    assert math.isclose(doubled.item(), 2 * total.item(), rel_tol=1e-5)
    # nc == 1: no class term even though the class logits differ
    t1, s1 = _preds(0, nc=1), _preds(1, nc=1)
    _, items1 = losses.output_kd_loss(s1, t1, GAINS, nc=1)
    assert items1[2].item() == 0


def test_output_kd_weighted_by_teacher_objectness():
    t = _preds(0)
    s = [x.clone() for x in t]
    s[0][0, 0, 0, 0, 0] += 1.0  # one box error at one cell
    t_low = [x.clone() for x in t]
    t_low[0][0, 0, 0, 0, 4] = -20.0  # teacher says background there
    s_low = [x.clone() for x in s]
    s_low[0][0, 0, 0, 0, 4] = -20.0
    _, hi = losses.output_kd_loss(s, t, GAINS, nc=3)
    _, lo = losses.output_kd_loss(s_low, t_low, GAINS, nc=3)
    assert lo[0] < hi[0] * 1e-3


def test_kl_temperature_and_bad_kind():
    t, s = _preds(0), _preds(1)
    a, _ = losses.output_kd_loss(s, t, GAINS, nc=3, kind="kl", temperature=1.0)
    b, _ = losses.output_kd_loss(s, t, GAINS, nc=3, kind="kl", temperature=4.0)
    assert not math.isclose(a.item(), b.item(), rel_tol=1e-3)
    with pytest.raises(ValueError, match="kd_loss_selected"):
        losses.output_kd_loss(s, t, GAINS, nc=3, kind="mse")


@pytest.mark.parametrize("name", ["at", "ft", "fgfi", "cwd", "wat", "pkd"])
def test_feature_losses_zero_when_equal_positive_otherwise(name):
    f_t = _feat(0)
    mask = torch.zeros(2, 6, 6)
    mask[:, 2:4, 1:5] = 1
    fns = {"at": lambda s, t: losses.at_loss(s, t), "ft": losses.ft_loss, "cwd": lambda s, t: losses.cwd_loss(s, t, 2.0),
           "fgfi": lambda s, t: losses.fgfi_loss(s, t, mask), "wat": lambda s, t: losses.wat_loss(s, t, mask * 0.5 + 0.25),
           "pkd": losses.pkd_loss}
    fn = fns[name]
    assert fn(f_t.clone(), f_t).abs().item() < 1e-7
    _assert_positive_with_grad(fn, _feat(1), f_t)


def test_at_allows_different_channels_but_not_sizes():
    assert losses.at_loss(_feat(1, (2, 4, 6, 6)), _feat(0, (2, 16, 6, 6))).item() > 0
    with pytest.raises(ValueError, match="do not pair"):
        losses.at_loss(_feat(1, (2, 4, 6, 6)), _feat(0, (2, 4, 3, 3)))


def test_fgfi_empty_mask_is_zero_not_nan():
    s = _feat(1).requires_grad_(True)
    loss = losses.fgfi_loss(s, _feat(0), torch.zeros(2, 6, 6))
    assert loss.item() == 0 and not torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("channels", [4, 8])
def test_fgfi_normalised_by_positive_cells(channels):
    """The paper's 1 / (2 N_p), N_p = mask points: errors are summed over channels, not averaged."""
    f_t = torch.zeros(1, channels, 4, 4)
    f_s = torch.ones(1, channels, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, :3] = 1  # 3 positive cells, each with `channels` squared errors of 1
    assert math.isclose(losses.fgfi_loss(f_s, f_t, mask).item(), 3 * channels / (2 * 3))


# ------------------------------------------------------------------ masks
def test_fgfi_mask_hand_built_case():
    # 4x4 map, stride 8 (32 px input), one 16x16 anchor; box 16x16 centred at (16, 16) px.
    # Anchors centred at cells (1..2, 1..2) overlap it 12x12 -> IoU 144/368 = 0.39 (the max);
    # edge neighbours reach 48/464 = 0.10 < 0.5 * 0.39, so exactly the 4 centre cells.
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5]])
    m = fgfi_mask(targets, bs=2, h=4, w=4, stride=8, anchors=torch.tensor([[16.0, 16.0]]))
    expect = torch.zeros(2, 4, 4, dtype=torch.bool)
    expect[0, 1:3, 1:3] = True
    assert torch.equal(m, expect)  # image 1 has no box: nothing marked


def test_fgfi_mask_per_image_and_empty():
    anchors = torch.tensor([[8.0, 8.0], [16.0, 16.0]])
    targets = torch.tensor([[1, 0, 0.125, 0.125, 0.25, 0.25]])  # image 1, top-left cell (0, 0)
    m = fgfi_mask(targets, bs=2, h=4, w=4, stride=8, anchors=anchors)
    assert not m[0].any() and m[1, 0, 0] and m[1].sum() < 16
    empty = fgfi_mask(torch.zeros(0, 6), bs=2, h=4, w=4, stride=8, anchors=anchors)
    assert empty.shape == (2, 4, 4) and not empty.any()


def test_gt_mask_cells_ratio_and_tiny_box():
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5],     # covers the centre 2x2 cells of a 4x4 map
                            [1, 0, 0.90, 0.10, 0.01, 0.01]])  # tiny box -> its centre cell (0, 3)
    cells = gt_cell_mask(targets, bs=2, h=4, w=4)
    assert cells[0, 1:3, 1:3].all() and cells[0].sum() == 4
    assert cells[1, 0, 3] and cells[1].sum() == 1
    m = wat_mask(targets, bs=2, h=4, w=4, ratio=0.25)
    assert m[0, 1, 1].item() == 0.75 and m[0, 0, 0].item() == 0.25
    assert torch.equal(wat_mask(torch.zeros(0, 6), 1, 4, 4, 0.3), torch.full((1, 4, 4), 0.3))


def test_pkd_ignores_each_channels_scale_and_offset():
    """PKD compares standardised features: a teacher whose channels are scaled (by > 0) and shifted costs the
    student the same; a perfectly correlated student costs nothing, an anti-correlated one the most (2)."""
    s, t = _feat(1), _feat(0)
    scale = torch.tensor([0.1, 3.0, 7.0, 0.5, 1.0, 2.0, 9.0, 0.2]).view(1, -1, 1, 1)
    shift = torch.arange(8.0).view(1, -1, 1, 1)
    assert torch.allclose(losses.pkd_loss(s, t * scale + shift), losses.pkd_loss(s, t), atol=1e-5)
    assert losses.pkd_loss(t * scale + shift, t).item() < 1e-8
    assert losses.pkd_loss(-t, t).item() == pytest.approx(2.0 * (1 - 1 / t[:, 0].numel()), rel=1e-3)
    with pytest.raises(ValueError, match="!="):
        losses.pkd_loss(_feat(1, (2, 4, 6, 6)), t)


def test_crosskd_weights_cells_by_teacher_objectness_and_trains_the_student_feature():
    """The cross-head prediction is pulled toward the teacher's only where the teacher sees an object, and the
    gradient reaches the student feature through the frozen head (not the head's weights)."""
    nc, na = 3, 3
    head = torch.nn.Conv2d(8, na * (5 + nc), 1).requires_grad_(False)
    f_t = _feat(0)
    p_t = losses.head_maps(head, f_t, na)
    assert p_t.shape == (2, na, 6, 6, 5 + nc)
    off = p_t.clone()
    off[..., :4] += 1.0
    sure, unsure = p_t.clone(), p_t.clone()
    sure[..., 4], unsure[..., 4] = 8.0, -8.0  # teacher certain there is / is not an object
    assert losses.crosskd_loss(off, sure).item() > 100 * losses.crosskd_loss(
        torch.cat((off[..., :4], unsure[..., 4:]), -1), unsure).item()
    f_s = _feat(1).requires_grad_(True)
    loss = losses.crosskd_loss(losses.head_maps(head, f_s, na), p_t)
    loss.backward()
    assert loss.item() > 0 and f_s.grad.abs().sum() > 0 and head.weight.grad is None


# ------------------------------------------------------------------ --kd-gate teacher_better
def _level(obj, cls_logits, na=1):
    """One level (1, na, 1, 2, 5 + nc) from per-cell objectness and class logits (2 cells)."""
    x = torch.zeros(1, na, 1, 2, 5 + len(cls_logits[0]))
    x[..., 4] = torch.tensor(obj, dtype=torch.float32)
    x[..., 5:] = torch.tensor(cls_logits, dtype=torch.float32)
    return x


def test_gt_class_cells_marks_each_box_in_its_class_plane():
    targets = torch.tensor([[0, 2, 0.5, 0.5, 0.5, 0.5], [1, 0, 0.90, 0.10, 0.01, 0.01]])
    planes = gt_class_cells(targets, bs=2, h=4, w=4, nc=3)
    assert planes.shape == (2, 4, 4, 3)
    assert torch.equal(planes.any(-1), gt_cell_mask(targets, bs=2, h=4, w=4))
    assert planes[0, 1:3, 1:3, 2].all() and planes[0, ..., :2].sum() == 0
    assert planes[1, 0, 3, 0] and planes[1].sum() == 1
    assert not gt_class_cells(torch.zeros(0, 6), 1, 4, 4, 3).any()


def test_teacher_better_gate_opens_only_where_the_teacher_is_closer_to_the_truth():
    """Cell 0 holds a class-1 object, cell 1 is background."""
    labels = torch.tensor([[[[False, True], [False, False]]]])  # (1, 1, 2, nc=2)
    right, wrong = [4.0, 4.0], [-4.0, -4.0]  # objectness: sure / sure not
    good_cls, bad_cls = [[-4.0, 4.0], [0.0, 0.0]], [[4.0, -4.0], [0.0, 0.0]]
    teacher = _level([right[0], wrong[1]], good_cls)  # finds the object, quiet on background
    student = _level([wrong[0], right[1]], bad_cls)   # misses it and fires on background
    assert losses.teacher_better_gate(student, teacher, labels).flatten().tolist() == [1.0, 1.0]
    assert losses.teacher_better_gate(teacher, student, labels).flatten().tolist() == [0.0, 0.0]
    # right objectness but the wrong class at the object: the teacher loses that cell only
    confused = _level([right[0], wrong[1]], bad_cls)
    assert losses.teacher_better_gate(teacher, confused, labels).flatten().tolist() == [0.0, 1.0]
    assert losses.teacher_better_gate(teacher, teacher, labels).flatten().tolist() == [1.0, 1.0]  # ties open


def test_output_kd_gates_scale_the_cell_weights():
    t, s = _preds(0), _preds(1)
    plain, items = losses.output_kd_loss(s, t, GAINS, nc=3)
    ones = [torch.ones_like(x[..., :1]) for x in t]
    same, same_items = losses.output_kd_loss(s, t, GAINS, nc=3, gates=ones)
    assert torch.allclose(same, plain) and torch.allclose(same_items, items)
    shut, _ = losses.output_kd_loss(s, t, GAINS, nc=3, gates=[torch.zeros_like(g) for g in ones])
    assert shut.item() == 0
    half = [g.clone() for g in ones]
    half[1].zero_()  # the coarse level shut: only the first level's share remains
    first, _ = losses.output_kd_loss(s[:1], t[:1], GAINS, nc=3)
    partial, _ = losses.output_kd_loss(s, t, GAINS, nc=3, gates=half)
    assert torch.allclose(partial, first)

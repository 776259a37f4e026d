"""ComputeLoss (target assignment, terms, gradients) and AutoAnchor on hand-built cases."""


import numpy as np
import torch
import torch.nn as nn

from utils.autoanchor import anchor_metrics, check_anchors, kmean_anchors
from utils.loss import ComputeLoss

ANCHORS_PX = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                          dtype=torch.float32).view(3, 3, 2)
STRIDES = torch.tensor([8.0, 16.0, 32.0])
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
       "label_smoothing": 0.0}


class FakeDetect(nn.Module):
    def __init__(self, nc):
        super().__init__()
        self.nc, self.nl, self.na, self.no = nc, 3, 3, nc + 5
        self.register_buffer("anchors", ANCHORS_PX / STRIDES.view(-1, 1, 1))
        self.register_buffer("stride", STRIDES.clone())
        self.conv = nn.Conv2d(1, 1, 1)


class FakeModel(nn.Module):
    """Just what ComputeLoss reads: model[-1] Detect attributes, hyp, a parameter for the device."""

    def __init__(self, nc=3, hyp=None):
        super().__init__()
        self.model = nn.Sequential(FakeDetect(nc))
        self.hyp = dict(HYP, **(hyp or {}))


def make_preds(bs=2, nc=3, img=64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, img // int(s), img // int(s), nc + 5, generator=g).mul_(0.5).requires_grad_(requires_grad)
            for s in STRIDES]


def reference_targets(targets, shapes, anchor_t=4.0):
    """Slow per-target loop of the assignment rule in SPEC.md: set of (level, b, a, gj, gi)."""
    out = set()
    for lvl, (ny, nx) in enumerate(shapes):
        anchors = ANCHORS_PX[lvl] / STRIDES[lvl]
        for img, cls, xc, yc, w, h in targets.tolist():
            gx, gy, gw, gh = xc * nx, yc * ny, w * nx, h * ny
            for a in range(3):
                rw, rh = gw / anchors[a, 0].item(), gh / anchors[a, 1].item()
                if max(rw, 1 / rw, rh, 1 / rh) >= anchor_t:
                    continue
                cells = [(int(gy), int(gx))]
                if gx % 1 < 0.5 and gx > 1:
                    cells.append((int(gy), int(gx - 0.5)))
                if gy % 1 < 0.5 and gy > 1:
                    cells.append((int(gy - 0.5), int(gx)))
                if (nx - gx) % 1 < 0.5 and (nx - gx) > 1:
                    cells.append((int(gy), int(gx + 0.5)))
                if (ny - gy) % 1 < 0.5 and (ny - gy) > 1:
                    cells.append((int(gy + 0.5), int(gx)))
                for gj, gi in cells:
                    out.add((lvl, int(img), a, min(max(gj, 0), ny - 1), min(max(gi, 0), nx - 1)))
    return out


def assigned(loss, preds, targets):
    _, _, indices, _ = loss.build_targets(preds, targets)
    return {(lvl, *map(int, t)) for lvl, idx in enumerate(indices) for t in zip(*[x.tolist() for x in idx])}


def test_single_box_assignment_hand_built():
    loss = ComputeLoss(FakeModel())
    preds = make_preds(bs=1)
    # 16x16 px box centred at (19.2, 38.4) in a 64x64 input
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    got = assigned(loss, preds, targets)
    level0 = {t[1:] for t in got if t[0] == 0}
    # grid 8x8: centre (2.4, 4.8) -> own cell (gj 4, gi 2), left (4, 1) as frac(x) < .5, down (5, 2) as frac(8 - y) < .5
    assert level0 == {(0, a, gj, gi) for a in range(3) for gj, gi in [(4, 2), (4, 1), (5, 2)]}
    # P5 anchors are >= 5.6x the 0.5-cell box: no match at stride 32
    assert not any(t[0] == 2 for t in got)
    # P4: only anchors 0 and 1 are within ratio 4 of a 1x1-cell box
    assert {t[2] for t in got if t[0] == 1} == {0, 1}
    tcls, tbox, _, anch = loss.build_targets(preds, targets)
    assert (tcls[0] == 1).all()
    # box targets are offsets in the assigned cell (-0.5..1.5) and wh in grid units
    assert torch.allclose(tbox[0][:, 2:], torch.tensor([2.0, 2.0]).expand(9, 2))
    assert tbox[0][:, :2].min() >= -0.5 and tbox[0][:, :2].max() <= 1.5
    assert set(map(tuple, anch[0].tolist())) == set(map(tuple, (ANCHORS_PX[0] / 8).tolist()))


def test_assignment_matches_reference_loop_on_random_targets():
    loss = ComputeLoss(FakeModel())
    preds = make_preds(bs=4, img=128)
    g = torch.Generator().manual_seed(1)
    n = 40
    targets = torch.cat([torch.randint(0, 4, (n, 1), generator=g).float(), torch.randint(0, 3, (n, 1), generator=g).float(),
                         torch.rand(n, 2, generator=g) * 0.9 + 0.05, torch.rand(n, 2, generator=g) * 0.5 + 0.01], 1)
    shapes = [p.shape[2:4] for p in preds]
    assert assigned(loss, preds, targets) == reference_targets(targets, shapes)


def test_loss_terms_finite_and_shapes():
    loss = ComputeLoss(FakeModel())
    preds = make_preds(bs=2)
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25], [1, 2, 0.7, 0.2, 0.5, 0.3]])
    total, items = loss(preds, targets)
    assert total.shape == (1,) and items.shape == (3,)
    assert torch.isfinite(total).all() and (items > 0).all()
    assert torch.allclose(total, items.sum() * 2)  # total = sum of terms x batch size
    assert not items.requires_grad


def test_empty_targets_only_objectness():
    loss = ComputeLoss(FakeModel())
    total, items = loss(make_preds(bs=2), torch.zeros(0, 6))
    assert torch.isfinite(total).all()
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_single_class_has_no_class_loss_and_smoothing_changes_cls():
    preds = make_preds(bs=1, nc=1)
    targets = torch.tensor([[0, 0, 0.3, 0.6, 0.25, 0.25]])
    _, items = ComputeLoss(FakeModel(nc=1))(preds, targets)
    assert items[2] == 0
    preds = make_preds(bs=1, nc=3)
    targets[0, 1] = 2
    _, plain = ComputeLoss(FakeModel())(preds, targets)
    _, smooth = ComputeLoss(FakeModel(hyp={"label_smoothing": 0.2}))(preds, targets)
    _, focal = ComputeLoss(FakeModel(hyp={"fl_gamma": 1.5}))(preds, targets)
    assert smooth[2] != plain[2] and torch.allclose(smooth[:2], plain[:2])
    assert focal[2] < plain[2] and focal[1] < plain[1]  # focal down-weights both BCE terms


def test_gains_scale_terms():
    preds = make_preds(bs=1)
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    _, base = ComputeLoss(FakeModel())(preds, targets)
    _, scaled = ComputeLoss(FakeModel(hyp={"box": 0.1, "obj": 3.0, "cls": 0.25}))(preds, targets)
    assert torch.allclose(scaled, base * torch.tensor([2.0, 3.0, 0.5]), rtol=1e-5)


def test_loss_decreases_with_optimisation():
    loss = ComputeLoss(FakeModel())
    preds = make_preds(bs=1, requires_grad=True)
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    opt = torch.optim.Adam(preds, lr=0.05)
    values = []
    for _ in range(10):
        total, items = loss(preds, targets)
        values.append(total.item())
        opt.zero_grad()
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in preds)
        opt.step()
    assert values[-1] < values[0] * 0.8 and all(b < a for a, b in zip(values, values[1:]))


def test_objectness_target_is_detached_iou():
    """A perfect box prediction at its cells gives obj targets ~1; gradient of lbox flows only through the box."""
    loss = ComputeLoss(FakeModel())
    preds = make_preds(bs=1, requires_grad=True)
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    total, _ = loss(preds, targets)
    total.backward()
    g = preds[0].grad[0]
    # cells with a target get gradient on xywh; far cells only on obj and nothing on xywh/cls
    assert g[0, 4, 2, :4].abs().sum() > 0
    assert g[0, 0, 7, :4].abs().sum() == 0 and g[0, 0, 7, 5:].abs().sum() == 0 and g[0, 0, 7, 4] != 0


# ---------------------------------------------------------------- autoanchor

class FakeDataset:
    def __init__(self, wh_norm, n_img=50, seed=0):
        rng = np.random.default_rng(seed)
        self.shapes = np.full((n_img, 2), 200.0)
        self.labels = []
        for _ in range(n_img):
            k = 4
            lb = np.zeros((k, 5), np.float32)
            lb[:, 1:3] = 0.5
            lb[:, 3:5] = wh_norm[rng.integers(len(wh_norm), size=k)] * rng.uniform(0.9, 1.1, size=(k, 1))
            self.labels.append(lb)


def _fake_detect_model():
    return FakeModel()


def test_autoanchor_keeps_good_anchors():
    model = _fake_detect_model()
    # label sizes equal to the default anchors at img 640
    ds = FakeDataset(ANCHORS_PX.view(-1, 2).numpy() / 640)
    before = model.model[-1].anchors.clone()
    check_anchors(ds, model, thr=4.0, imgsz=640)
    assert torch.equal(before, model.model[-1].anchors)


def test_autoanchor_replaces_poor_anchors_and_improves_bpr():
    model = _fake_detect_model()
    # very thin boxes (aspect 10:1 and 1:10): default anchors cannot reach ratio 4
    ds = FakeDataset(np.array([[0.5, 0.02], [0.02, 0.5], [0.3, 0.03]]))
    det = model.model[-1]
    wh = torch.tensor(np.concatenate([lb[:, 3:5] * 640 for lb in ds.labels]), dtype=torch.float32)
    bpr_before, _ = anchor_metrics((det.anchors * det.stride.view(-1, 1, 1)).view(-1, 2), wh)
    check_anchors(ds, model, thr=4.0, imgsz=640)
    bpr_after, _ = anchor_metrics((det.anchors * det.stride.view(-1, 1, 1)).view(-1, 2), wh)
    assert bpr_before < 0.98 and bpr_after > bpr_before
    area = det.anchors.prod(-1).mean(-1) * det.stride ** 2
    assert (area[1:] >= area[:-1]).all()  # small anchors on the fine level


def test_kmean_anchors_sorted_and_deterministic():
    ds = FakeDataset(np.array([[0.05, 0.05], [0.2, 0.1], [0.6, 0.5]]))
    k1 = kmean_anchors(ds, n=9, img_size=224, gen=200, verbose=False)
    k2 = kmean_anchors(ds, n=9, img_size=224, gen=200, verbose=False)
    assert k1.shape == (9, 2) and np.array_equal(k1, k2)
    assert (np.diff(k1.prod(1)) >= 0).all()
    bpr, _ = anchor_metrics(torch.tensor(k1), torch.tensor(np.concatenate([lb[:, 3:5] * 224 for lb in ds.labels])))
    assert bpr > 0.99

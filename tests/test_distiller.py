"""Distiller plug-in, taps and pairing on tiny models (CPU)."""

import copy
from types import SimpleNamespace

import pytest
import torch

from utils.distill.config import KDConfig, default_betas, parse_betas, parse_feats
from utils.distill.distiller import Distiller
from utils.distill.pairing import pair_layers, parse_kd_layers, role_layers
from utils.distill.taps import FeatureTaps, hook_count
from utils.general import ROOT, yaml_load

IMG = 64
HYP = {"box": 0.05, "obj": 0.3, "cls": 0.2}


def tiny_model(cfg="yolov5n.yaml", nc=3, seed=0, **overrides):
    from models.yolo import DetectionModel
    d = yaml_load(ROOT / "models" / cfg)
    d.update({"depth_multiple": 0.33, "width_multiple": 0.25, **overrides})
    torch.manual_seed(seed)
    m = DetectionModel(d, nc=nc)
    m.names = {i: f"c{i}" for i in range(nc)}
    m.hyp = dict(HYP)
    return m


def save_ours(model, path):
    from utils.checkpoint import make_checkpoint, save_checkpoint
    save_checkpoint(make_checkpoint(model), path)
    return str(path)


def make_cfg(teacher_file, feat=(), beta=1.0, **kw):
    """KDConfig with temperature 2 and every selected feature loss at weight `beta` unless betas are given."""
    kw.setdefault("betas", {name: beta for name in feat})
    return KDConfig(teacher_weight=teacher_file, feat=tuple(feat), temperature=2.0, **kw)


def fake_engine(student, cfg="student.yaml", weights=""):
    return SimpleNamespace(model=student, hyp=student.hyp, amp=False, opt=SimpleNamespace(cfg=cfg, weights=weights))


def make_distiller(tmp_path, student, teacher, **kw):
    d = Distiller(make_cfg(save_ours(teacher, tmp_path / "teacher.pt"), **kw))
    engine = fake_engine(student)
    d.setup(engine)
    d.on_train_start(engine)
    return d


def batch(seed=0, bs=2):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(bs, 3, IMG, IMG, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5]])
    return imgs, targets


def kd_step(d, student, imgs, targets):
    preds = student(imgs)
    return d.step_loss(imgs, targets, preds)


# ------------------------------------------------------------------ taps and pairing
def test_taps_record_and_always_remove():
    m = tiny_model()
    before = hook_count(m)
    with FeatureTaps(m, [4, 17]) as taps:
        m.eval()(torch.zeros(1, 3, IMG, IMG))
        assert taps[4].shape[-1] == IMG // 8 and taps[17].shape[-1] == IMG // 8
        assert hook_count(m) == before + 2
    assert hook_count(m) == before
    with pytest.raises(RuntimeError):
        with FeatureTaps(m, [4]):
            raise RuntimeError("boom")
    assert hook_count(m) == before
    with pytest.raises(IndexError):
        FeatureTaps(m, [4, 999])
    assert hook_count(m) == before


def test_pairing_by_stride_and_role_with_se_teacher():
    student = tiny_model()
    teacher = tiny_model("yolov5m-se.yaml", depth_multiple=0.33, width_multiple=0.25)
    t_roles, s_roles = role_layers(teacher), role_layers(student)
    assert s_roles["neck"] == {8.0: 17, 16.0: 20, 32.0: 23}
    assert set(t_roles["backbone"]) == set(s_roles["backbone"]) == {4.0, 8.0, 16.0, 32.0}
    pairs = pair_layers(teacher, student)
    assert [p[2] for p in pairs] == [4.0, 8.0, 16.0, 32.0, 8.0, 16.0, 32.0]
    det_t = teacher.model[-1].f
    assert [p[0] for p in pairs[-3:]] == list(det_t) and [p[1] for p in pairs[-3:]] == [17, 20, 23]
    assert any(t != s for t, s, *_ in pairs)  # indices shifted by the SE layers, still paired
    assert parse_kd_layers("17:17, 20:20") == [(17, 17), (20, 20)]
    with pytest.raises(ValueError, match="stride"):
        pair_layers(teacher, student, override=f"{det_t[0]}:20")
    with pytest.raises(ValueError, match="kd-layers"):
        parse_kd_layers("17-17")


def test_parse_feats():
    assert parse_feats(["none"]) == () and parse_feats(["wat", "ft"]) == ("wat", "ft")
    assert parse_feats("at,fgfi") == ("at", "fgfi")
    with pytest.raises(ValueError, match="unknown"):
        parse_feats(["sim"])


def test_parse_betas():
    defaults = default_betas()
    assert defaults == {"at": 1.0, "wat": 1.0, "ft": 1.0, "fgfi": 4e-6, "cwd": 1e-3, "pkd": 0.02, "crosskd": 0.007}
    assert parse_betas([], ("at", "fgfi", "cwd")) == {k: defaults[k] for k in ("at", "fgfi", "cwd")}
    assert parse_betas(["0.5"], ("at", "fgfi")) == {"at": 0.5, "fgfi": 0.5}
    assert parse_betas(["at=2", "0.1"], ("at", "cwd")) == {"at": 2.0, "cwd": 0.1}  # a number sets the rest
    assert parse_betas("fgfi=1e-2,at=3", ("fgfi",)) == {"fgfi": 0.01}  # at named but not selected: warning
    assert parse_betas(1.0, ("cwd",)) == {"cwd": 1.0} and parse_betas(None, ("ft",)) == {"ft": defaults["ft"]}
    for bad in (["sim=1"], ["x"], ["at=big"]):
        with pytest.raises(ValueError, match="--beta"):
            parse_betas(bad, ("at",))


def test_step_loss_weights_each_term(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).eval()
    d = make_distiller(tmp_path, student, teacher, feat=["at", "ft"], alpha=3.0, betas={"at": 2.0, "ft": 0.5})
    imgs, targets = batch()
    _, raw = student(imgs)
    terms = d.loss_terms(imgs, targets, raw)
    assert set(terms) == {"kd", "at", "ft"} and all(v.item() > 0 for v in terms.values())
    loss, items = _eval_step(d, student, imgs, targets)  # eval mode: the same forward again
    expected = 3 * terms["kd"] + 2 * terms["at"] + 0.5 * terms["ft"]
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(items["at"], 2 * terms["at"] / 2, rtol=1e-5)  # per image, batch of 2
    d.teardown()


def test_teacher_runs_before_the_student_with_the_same_loss(tmp_path):
    """The engine calls before_forward (the teacher's forward) ahead of the student's: the terms equal those of
    a step that runs the teacher inside step_loss, and its outputs serve one step only."""
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).eval()
    d = make_distiller(tmp_path, student, teacher, feat=["at", "fgfi"])
    calls = []
    d.teacher.register_forward_pre_hook(lambda *_: calls.append("teacher"))
    student.register_forward_pre_hook(lambda *_: calls.append("student"))
    imgs, targets = batch()
    with torch.no_grad():
        inside, _ = _eval_step(d, student, imgs, targets)
        d.before_forward(imgs, targets)
        ahead, _ = _eval_step(d, student, imgs, targets)
        other = batch(seed=1)[0]
        d.before_forward(other, targets)
        d.step_loss(other, targets, student(other)[1])
        again, _ = _eval_step(d, student, imgs, targets)  # no before_forward: the teacher runs inside again
    assert calls == ["student", "teacher", "teacher", "student", "teacher", "student", "student", "teacher"]
    assert torch.allclose(ahead, inside, rtol=1e-5) and torch.allclose(again, inside, rtol=1e-5)
    d.teardown()


# ------------------------------------------------------------------ distiller
@pytest.mark.parametrize("kd_type", ["l2", "kl", "bce"])
def test_every_term_zero_for_identical_student(tmp_path, kd_type):
    teacher = tiny_model()
    student = copy.deepcopy(teacher).eval()  # eval: BN uses the same statistics as the teacher
    d = make_distiller(tmp_path, student, teacher, kd_loss_selected=kd_type, feat=["at", "wat"])
    imgs, targets = batch()
    loss, items = _eval_step(d, student, imgs, targets)
    assert set(items) == {"kd", "at", "wat"}
    assert loss.abs().item() < 1e-6 and all(v.abs().item() < 1e-6 for v in items.values())
    d.teardown()


def _eval_step(d, student, imgs, targets):
    _, raw = student(imgs)
    return d.step_loss(imgs, targets, raw)


def test_terms_positive_with_grad_and_adapters_learn(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    d = make_distiller(tmp_path, student, teacher, feat=["at", "wat", "ft", "fgfi", "cwd", "pkd", "crosskd"])
    assert d.trainable_modules() and set(d.adapters.keys()) == {"s17", "s20", "s23"}
    imgs, targets = batch()
    loss, items = kd_step(d, student, imgs, targets)
    assert all(v.item() > 0 for v in items.values()), items
    loss.backward()
    grads = [p.grad for p in d.adapters.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())
    d.teardown()
    assert hook_count(student) == 0 and hook_count(teacher) == 0


def test_kd_loss_falls_on_fixed_batch(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    d = make_distiller(tmp_path, student, teacher, feat=["fgfi"])
    params = list(student.parameters()) + list(d.adapters.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    imgs, targets = batch()
    history = []
    for _ in range(10):
        loss, items = kd_step(d, student, imgs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in items.items()})
    d.teardown()
    assert history[-1]["kd"] < 0.5 * history[0]["kd"], history
    assert history[-1]["fgfi"] < history[1]["fgfi"]


def test_teacher_frozen_and_state_roundtrip(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    d = make_distiller(tmp_path, student, teacher, feat=["ft"])
    assert not d.teacher.training and not any(p.requires_grad for p in d.teacher.parameters())
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    imgs, targets = batch()
    for _ in range(3):
        kd_step(d, student, imgs, targets)[0].backward()
    assert all(torch.equal(before[k], v) for k, v in d.teacher.state_dict().items())
    with torch.no_grad():
        for p in d.adapters.parameters():
            p.add_(1.0)
    state = d.state_dict()
    d.teardown()
    d2 = Distiller(make_cfg(d.teacher_file, feat=["ft"]))
    d2.load_state_dict(state)  # before setup, as on --resume
    d2.setup(fake_engine(student))
    for a, b in zip(d.adapters.state_dict().values(), d2.adapters.state_dict().values()):
        assert torch.equal(a, b)
    d2.teardown()


def test_mismatch_error_names_both_files(tmp_path):
    teacher, student = tiny_model(nc=4), tiny_model(nc=3)
    tfile = save_ours(teacher, tmp_path / "teacher_nc4.pt")
    d = Distiller(make_cfg(tfile))
    with pytest.raises(ValueError) as e:
        d.setup(fake_engine(student, cfg="my_student.yaml"))
    msg = str(e.value)
    assert "teacher_nc4.pt" in msg and "my_student.yaml" in msg and "nc 4 vs 3" in msg
    assert hook_count(student) == 0


def test_no_kd_no_feat_gives_zero_and_no_columns(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    d = make_distiller(tmp_path, student, teacher, kd=False, feat=[])
    assert d.loss_names == ()
    imgs, targets = batch()
    loss, items = kd_step(d, student, imgs, targets)
    assert loss.item() == 0 and items == {}
    d.teardown()


def test_student_from_scratch_takes_teacher_anchors(tmp_path):
    """A teacher whose anchors AutoAnchor changed still distils a student from scratch: it adopts them."""
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    with torch.no_grad():
        teacher.model[-1].anchors.mul_(1.3)
    assert not torch.equal(teacher.model[-1].anchors, student.model[-1].anchors)
    make_distiller(tmp_path, student, teacher)
    assert torch.equal(teacher.model[-1].anchors, student.model[-1].anchors)


def test_pretrained_student_with_other_anchors_is_refused(tmp_path):
    """A --weights student is never re-anchored: different anchors stop the run, both sets named."""
    from utils.cli import UserError
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    with torch.no_grad():
        teacher.model[-1].anchors.mul_(1.5)
    before = student.model[-1].anchors.clone()
    d = Distiller(make_cfg(save_ours(teacher, tmp_path / "teacher.pt")))
    with pytest.raises(UserError) as e:
        d.setup(fake_engine(student, weights="pretrained_student.pt"))
    msg = str(e.value)
    t_px = (teacher.model[-1].anchors * teacher.model[-1].stride.view(-1, 1, 1))[0, 0].tolist()
    s_px = (before * student.model[-1].stride.view(-1, 1, 1))[0, 0].tolist()
    assert "pretrained_student.pt" in msg and "anchors" in msg
    assert str([round(v, 1) for v in t_px])[1:-1] in msg and str([round(v, 1) for v in s_px])[1:-1] in msg
    assert torch.equal(student.model[-1].anchors, before)


@pytest.mark.parametrize("channels_last", [False, True])
def test_teacher_is_fused_with_the_same_outputs(tmp_path, channels_last):
    """setup folds the frozen teacher's BatchNorms into its convs (an SE teacher too) and follows the engine's
    channels_last: its raw outputs and tapped features stay those of the file's model."""
    from utils.checkpoint import load_model
    teacher, student = tiny_model("yolov5s-se.yaml", seed=1), tiny_model(seed=2).train()
    d = Distiller(make_cfg(save_ours(teacher, tmp_path / "teacher.pt"), feat=["at"]))
    engine = SimpleNamespace(**vars(fake_engine(student)), channels_last=channels_last)
    d.setup(engine)
    d.on_train_start(engine)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.teacher.modules())
    conv = next(m for m in d.teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    imgs, _ = batch()
    imgs = imgs.contiguous(memory_format=torch.channels_last) if channels_last else imgs
    reference = load_model(d.teacher_file).eval()
    with FeatureTaps(reference, d.t_taps.indices) as want_taps, torch.no_grad():
        want = reference(imgs)[1]
        got = d._run_teacher(imgs)
        assert all(torch.allclose(g, w, atol=1e-4, rtol=1e-4) for g, w in zip(got, want))
        assert all(torch.allclose(d.t_taps[i], want_taps[i], atol=1e-4, rtol=1e-4) for i in d.t_taps.indices)
    d.teardown()


def test_crosskd_teacher_head_reproduces_teacher_outputs(tmp_path):
    """The pairs crosskd uses feed the teacher's Detect: its head on the tapped teacher features gives back the
    teacher's own raw outputs, so a student feature equal to the teacher's costs nothing."""
    from utils.distill import losses
    teacher, student = tiny_model(seed=1).eval(), tiny_model(seed=2).train()
    d = make_distiller(tmp_path, student, teacher, feat=["crosskd"])
    imgs, _ = batch()
    raw = d._run_teacher(imgs)
    det = d.teacher.model[-1]
    for level, (t_i, *_rest) in enumerate(d.pairs["crosskd"]):
        again = losses.head_maps(det.m[level], d.t_taps[t_i].float(), det.na)
        assert torch.allclose(again, raw[level].float(), atol=1e-5)
        assert losses.crosskd_loss(again, raw[level]).item() < 1e-10
    d.teardown()


def test_crosskd_refuses_layers_that_do_not_feed_the_teacher_head(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    with pytest.raises(ValueError, match="does not feed the teacher's Detect"):
        make_distiller(tmp_path, student, teacher, feat=["crosskd"], kd_layers="13:13")


def test_kd_gate_teacher_better_keeps_part_of_output_kd_and_logs_its_share(tmp_path):
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    imgs, targets = batch()
    plain = make_distiller(tmp_path, student, teacher)
    full, _ = kd_step(plain, student, imgs, targets)
    plain.teardown()
    d = make_distiller(tmp_path, student, teacher, kd_gate="teacher_better")
    gated, items = kd_step(d, student, imgs, targets)
    assert 0 < gated.item() < full.item()
    gated.backward()
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    d.on_epoch_end(SimpleNamespace(save_dir=tmp_path), 0)
    (epoch, share), = d.gate_history
    assert epoch == 0 and 0 < share < 1
    assert (tmp_path / "kd_gate.csv").read_text().splitlines() == ["epoch,kept_share", f"0,{share:.5f}"]
    d.teardown()
    # the same student as its own teacher: every cell ties, the gate keeps it all (and the loss is 0)
    twin = copy.deepcopy(teacher).eval()
    d = make_distiller(tmp_path, twin, teacher, kd_gate="teacher_better")
    loss, _ = _eval_step(d, twin, imgs, targets)
    d.on_epoch_end(None, 0)
    assert loss.abs().item() < 1e-6 and d.gate_history[0][1] == pytest.approx(1.0)
    d.teardown()


def test_kd_gate_flag_parses_and_refuses_unknown_values():
    import train_kd
    from utils.cli import OptionError

    opt = train_kd.parse_opt(["--teacher_weight", "t.pt", "--kd-gate", "teacher_better"])
    assert KDConfig.from_opt(opt).kd_gate == "teacher_better"
    assert KDConfig.from_opt(train_kd.parse_opt(["--teacher_weight", "t.pt"])).kd_gate == "none"
    assert KDConfig.from_opt({"teacher_weight": "t.pt"}).kd_gate == "none"  # a checkpoint from before the flag
    with pytest.raises(OptionError, match="--kd-gate"):
        KDConfig(teacher_weight="t.pt", kd_gate="sometimes")

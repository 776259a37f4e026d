"""The feature-loss registry and KDConfig: flags, defaults and help derive from the registry,
options are parsed once, and a new loss is one decorated function."""

import argparse

import pytest
import torch

import train_kd
from utils.distill import config as kd_config_mod
from utils.distill.config import KDConfig, add_kd_args, default_betas
from utils.distill.distiller import Distiller
from utils.distill.features import FEATURE_LOSSES, FeatureOption, feature_loss, feature_options


def kd_parser():
    return add_kd_args(argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, width=999)))


def test_old_flag_spellings_still_parse():
    opt = train_kd.parse_opt(["--teacher-weight", "t.pt", "--no-kd", "--kd-loss-selected", "kl", "--temperature", "3",
                              "--alpha", "0.5", "--beta", "at=2", "0.1", "--feat", "at", "wat", "--ratio", "0.4",
                              "--kd_layers", "17:17"])
    cfg = KDConfig.from_opt(opt)
    assert (cfg.teacher_weight, cfg.kd, cfg.kd_loss_selected) == ("t.pt", False, "kl")
    assert (cfg.temperature, cfg.alpha) == (3.0, 0.5)
    assert cfg.feat == ("at", "wat") and cfg.betas == {"at": 2.0, "wat": 0.1} and cfg.kd_layers == "17:17"
    assert cfg.options["bg_weight"] == 0.4
    assert KDConfig.from_opt(kd_parser().parse_args(["--bg-weight", "0.3"])).options["bg_weight"] == 0.3
    assert train_kd.parse_opt(["--teacher_weight", "x", "--kd_loss_selected", "bce"]).kd_loss_selected == "bce"


def test_defaults_are_the_registered_ones():
    cfg = KDConfig.from_opt(train_kd.parse_opt([]))
    assert cfg == KDConfig() and cfg.feat == ("pkd",) and cfg.betas == {"pkd": FEATURE_LOSSES["pkd"].beta}
    assert cfg.kd and cfg.options == {"bg_weight": 0.25}
    alone = KDConfig.from_opt(train_kd.parse_opt(["--feat", "none"]))  # output KD alone
    assert alone.feat == () and alone.betas == {} and alone.kd
    assert KDConfig.from_opt({"kd": True}).feat == ()  # an older checkpoint's opt without 'feat': no feature loss
    assert KDConfig(feat=("fgfi", "at")).betas == {"fgfi": 4e-6, "at": 1.0}  # calibrated, not 1.0
    assert default_betas() == {name: spec.beta for name, spec in FEATURE_LOSSES.items()}
    help_text = kd_parser().format_help()
    for name, spec in FEATURE_LOSSES.items():
        assert f"{name} ({spec.help})" in help_text and f"{name} {spec.beta:g}" in help_text


def test_invalid_options_fail_with_the_flag_name():
    with pytest.raises(ValueError, match="kd_loss_selected"):
        KDConfig(kd_loss_selected="mse")
    with pytest.raises(ValueError, match="--feat"):
        KDConfig(feat=("sim",))
    with pytest.raises(ValueError, match="not in feat"):
        KDConfig(feat=("at",), betas={"cwd": 1.0})
    with pytest.raises(TypeError, match="KDConfig"):
        Distiller(argparse.Namespace(feat=["at"]))


def test_resume_reads_saved_options_including_the_old_ratio_key():
    current = train_kd.parse_opt(["--resume", "x.pt"])  # flags at their defaults
    old = {"teacher_weight": "t.pt", "feat": ["wat"], "beta": ["0.5"], "ratio": 0.4, "alpha": 2.0}
    cfg = KDConfig.resumed(current, old)
    assert cfg.teacher_weight == "t.pt" and cfg.feat == ("wat",) and cfg.betas == {"wat": 0.5}
    assert cfg.options["bg_weight"] == 0.4 and cfg.alpha == 2.0
    assert KDConfig.resumed(current, {**old, "bg_weight": 0.1}).options["bg_weight"] == 0.1
    stored = cfg.store(argparse.Namespace())
    assert stored.feat == ["wat"] and stored.bg_weight == 0.4


def test_train_kd_parses_beta_once_and_hands_the_config_over(monkeypatch, tmp_path):
    import train

    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"0000")
    calls, seen = [], {}
    real = kd_config_mod.parse_betas
    monkeypatch.setattr(kd_config_mod, "parse_betas", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(train, "main", lambda opt, plugins=(): seen.update(opt=opt, plugins=plugins))
    train_kd.main(train_kd.parse_opt(["--teacher_weight", str(teacher), "--feat", "fgfi", "--beta", "at=2"]))
    assert len(calls) == 1
    (plugin,), opt = seen["plugins"], seen["opt"]
    assert isinstance(plugin, Distiller) and plugin.cfg.betas == {"fgfi": 4e-6} and plugin.loss_names == ("kd", "fgfi")
    assert opt.feat == ["fgfi"] and opt.noautoanchor and opt.bg_weight == 0.25


@pytest.fixture
def l1_loss():
    """A feature loss registered for one test: one function and one decorator."""
    scale = FeatureOption("l1_scale", 2.0, "scale of the toy l1 loss")

    @feature_loss("l1", beta=0.5, adapter=True, roles=("neck",), options=(scale,), help="toy mean absolute difference")
    def l1(f_s, f_t, ctx):
        return ctx.option("l1_scale") * (f_s - f_t).abs().mean()

    yield l1
    FEATURE_LOSSES.pop("l1")


def test_a_registered_loss_is_selectable_weighted_and_trained(l1_loss, tmp_path):
    from test_distiller import batch, make_distiller, tiny_model

    opt = train_kd.parse_opt(["--feat", "l1", "--l1-scale", "3"])
    cfg = KDConfig.from_opt(opt)
    assert cfg.betas == {"l1": 0.5} and cfg.options == {"bg_weight": 0.25, "l1_scale": 3.0}
    assert "toy mean absolute difference" in kd_parser().format_help()
    teacher, student = tiny_model(seed=1), tiny_model(seed=2).train()
    d = make_distiller(tmp_path, student, teacher, feat=["l1"], betas={"l1": 0.5}, kd=False)
    assert d.loss_names == ("l1",) and set(d.adapters.keys()) == {"s17", "s20", "s23"}  # neck only, adapted
    imgs, targets = batch()
    terms = d.loss_terms(imgs, targets, student(imgs))
    loss, items = d.step_loss(imgs, targets, student(imgs))
    assert torch.allclose(loss, 0.5 * terms["l1"]) and terms["l1"].item() > 0
    loss.backward()
    assert all(p.grad is not None for p in d.adapters.parameters())
    d.teardown()


def test_registry_rejects_duplicates_bad_roles_and_clashing_options():
    with pytest.raises(ValueError, match="already registered"):
        feature_loss("at", beta=1.0, help="again")(lambda f_s, f_t, ctx: 0)
    with pytest.raises(ValueError, match="roles"):
        feature_loss("x1", beta=1.0, roles=("head",), help="bad role")(lambda f_s, f_t, ctx: 0)
    assert "x1" not in FEATURE_LOSSES
    feature_loss("x2", beta=1.0, options=(FeatureOption("bg_weight", 0.5, "other"),), help="clash")(lambda *a: 0)
    try:
        with pytest.raises(ValueError, match="bg_weight"):
            feature_options()
    finally:
        FEATURE_LOSSES.pop("x2")

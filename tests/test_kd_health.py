"""KD health check: each KD term's student gradient next to detection, warnings on broken KD paths."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from test_distiller import batch, fake_engine, make_cfg, save_ours, tiny_model
from utils.distill import health as health_mod
from utils.distill.distiller import Distiller
from utils.distill.features import FEATURE_LOSSES
from utils.distill.taps import FeatureTaps


@pytest.fixture
def warnings(monkeypatch):
    """Every LOGGER.warning line of the health module."""
    lines = []
    monkeypatch.setattr(health_mod.LOGGER, "warning", lines.append)
    return lines


def run_steps(tmp_path, steps=health_mod.STEPS, break_taps=False, **cfg):
    """A Distiller on tiny models (student trained by `steps` KD steps) -> kd_health.json as a dict."""
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    d = Distiller(make_cfg(save_ours(teacher, tmp_path / "teacher.pt"), **cfg))
    engine = fake_engine(student)
    engine.save_dir = tmp_path / "run"
    d.setup(engine)
    d.on_train_start(engine)
    if break_taps:  # hooks on a copy of the student: a module that never runs in training
        d.s_taps.close()
        d.s_taps = FeatureTaps(copy.deepcopy(student), d.s_taps.indices)
    try:
        for k in range(steps):
            imgs, targets = batch(seed=k)
            loss, _ = d.step_loss(imgs, targets, student(imgs))
            if loss.requires_grad:
                loss.backward()
    finally:
        d.teardown()
    return json.loads((engine.save_dir / "kd_health.json").read_text())


def test_healthy_run_reports_every_term(tmp_path, warnings):
    report = run_steps(tmp_path, feat=["at"], betas={"at": 1.0})
    assert report["steps"] == health_mod.STEPS and report["detection_grad"] > 0
    assert set(report["terms"]) == {"kd", "at"}
    for t in report["terms"].values():
        assert math.isfinite(t["ratio_to_det"]) and t["ratio_to_det"] > 0


def test_detached_features_warned(tmp_path, warnings, monkeypatch):
    spec = FEATURE_LOSSES["at"]
    monkeypatch.setitem(FEATURE_LOSSES, "at", dataclasses.replace(spec, fn=lambda s, t, ctx: spec.fn(s.detach(), t, ctx)))
    report = run_steps(tmp_path, feat=["at"], kd=False)
    assert report["terms"]["at"]["ratio_to_det"] == 0 and "zero gradient" in report["terms"]["at"]["warning"]
    assert any("at grad 0x detection" in w for w in warnings)


def test_zero_weight_warned(tmp_path, warnings):
    report = run_steps(tmp_path, feat=["at"], betas={"at": 0.0}, alpha=0.0)
    assert all(t["ratio_to_det"] == 0 for t in report["terms"].values())
    assert sum("zero gradient" in w for w in warnings) == 2  # kd and at


def test_hook_that_never_runs_warned(tmp_path, warnings):
    report = run_steps(tmp_path, feat=["at"], kd=False, break_taps=True)
    assert report["terms"]["at"]["ratio_to_det"] == 0
    assert any("never ran" in w and "at grad" in w for w in warnings)


def test_out_of_band_and_nonfinite_ratios_flagged():
    assert health_mod.problem(0.5) is None
    assert "more than" in health_mod.problem(11.0) and "less than" in health_mod.problem(0.005)
    assert "non-finite" in health_mod.problem(float("nan")) and "zero" in health_mod.problem(0.0)


def test_short_first_epoch_still_reports(tmp_path, warnings):
    """Fewer steps than the health window: the epoch end reports what was measured."""
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    d = Distiller(make_cfg(save_ours(teacher, tmp_path / "teacher.pt")))
    engine = fake_engine(student)
    engine.save_dir = tmp_path / "run"
    d.setup(engine)
    d.on_train_start(engine)
    imgs, targets = batch()
    d.step_loss(imgs, targets, student(imgs))
    assert not (engine.save_dir / "kd_health.json").exists()
    d.on_epoch_end(engine, 0)
    d.teardown()
    assert json.loads((engine.save_dir / "kd_health.json").read_text())["steps"] == 1
    assert torch.is_tensor(d.teacher.model[-1].anchors)

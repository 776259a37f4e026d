"""benchmarks/step_breakdown.py times the engine's own step: its parts cover the step, the EMA it wraps is
the one the engine updates, and nothing stays instrumented afterwards."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_parts_cover_the_step(tmp_path):
    from step_breakdown import PARTS, main
    from test_engine import make_tiny_data

    backward = torch.Tensor.backward
    data = make_tiny_data(tmp_path / "data", n_train=6, n_val=2)
    res = main(["--data", str(data), "--img", "64", "--batch-size", "2", "--workers", "0", "--batches", "2",
                "--warmup", "1", "--train-args=--noautoanchor", "--project", str(tmp_path / "runs"),
                "--out", str(tmp_path / "sb.json")])
    steps = res["per_step"]
    assert len(steps) == 3 and res["steps"] == 2
    for s in steps:
        assert set(s) <= {*PARTS, "wall"}
        assert all(s[p] > 0 for p in ("loader", "prepare", "forward", "loss", "backward", "progress"))
        assert abs(sum(s.get(p, 0.0) for p in PARTS) - s["wall"]) < 1e-9
    assert res["parts_pct"]["other"] < 15, res["parts_ms"]  # the named parts account for the step
    assert res["ema_updates"] == sum("ema" in s for s in steps) > 0  # one EMA update per optimiser step
    assert torch.Tensor.backward is backward
    assert (tmp_path / "sb.json").is_file()

"""Driving entry points with crafted input (tests/test_fuzz_*.py): one subprocess per case, and the promise
every case must keep -- a non-zero exit, exactly one ``prog: error:`` line naming the file or option, no
Python traceback, and an end within seconds (a hang fails the test instead of stalling the suite)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 90  # generous for 2 slow cores; a case that hangs is killed here and reported as a hang


def run_entry(script, *args, timeout=CASE_TIMEOUT_S, env=None, cwd=ROOT):
    """Run ``python script args...`` (a repo entry point) -> CompletedProcess; a hang fails the test."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    env.pop("YOLOV5KD_TRACEBACK", None)
    cmd = [sys.executable, str(ROOT / script), *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: {' '.join(cmd)} still running after {timeout} s")


def error_lines(stderr, prog):
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]


def assert_clear_error(r, prog, *names, rc=1):
    """``r`` ended with exit status ``rc`` and one ``prog: error:`` line containing every string in ``names``."""
    tail = f"\n--- stdout ---\n{r.stdout[-1500:]}\n--- stderr ---\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, f"traceback:{tail}"
    assert r.returncode == rc, f"exit status {r.returncode}, expected {rc}:{tail}"
    lines = error_lines(r.stderr, prog)
    assert len(lines) == 1, f"expected one '{prog}: error:' line, got {len(lines)}:{tail}"
    missing = [str(n) for n in names if str(n) not in lines[0]]
    assert not missing, f"error line does not name {missing}: {lines[0]}{tail}"
    return lines[0]


def assert_ran_cleanly(r):
    """``r`` exited 0 without a traceback (a bad item was skipped with a warning, the rest went on)."""
    assert r.returncode == 0 and "Traceback" not in r.stderr, \
        f"exit status {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"


def tiny_model():
    """The smallest real model: yolov5n at width 0.25, 6 classes (built once per call, on CPU)."""
    from models.yolo import DetectionModel

    cfg = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    cfg["width_multiple"], cfg["nc"] = 0.25, 6
    torch.manual_seed(0)
    return DetectionModel(cfg).eval()


def tiny_world(root):
    """A tiny synthetic dataset, its YAML and a clean checkpoint under ``root`` -> dict of paths."""
    from utils.checkpoint import make_checkpoint, save_checkpoint
    from utils.synthetic import make_synthetic

    root = Path(root)
    data = make_synthetic(root / "syn", 4, 2)
    data_yaml = root / "syn.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(data), "train": "images/train", "val": "images/val",
                                         "names": ["a", "b", "c", "d", "e", "f"]}))
    model = tiny_model()
    model.names = dict(enumerate("abcdef"))
    weights = save_checkpoint(make_checkpoint(model), root / "clean.pt")
    return {"dir": root, "data_dir": data, "data": data_yaml, "weights": weights, "model": model,
            "image": next((data / "images" / "val").glob("*.jpg"))}

"""train_kd.py end to end on a tiny generated dataset (CPU, 64 px, 1 epoch)."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.distill import distiller as distiller_mod
from utils.distill.taps import hook_count

IMG = 64
NC = 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four 64x64 images with boxes, used for train and val."""
    root = tmp_path_factory.mktemp("kd_data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)
        cv2.rectangle(img, (10 + i * 4, 12), (40 + i * 3, 50), (255, 255, 255), -1)
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), img)
        (root / "labels" / f"im{i}.txt").write_text(f"{i % NC} 0.45 0.48 0.45 0.55\n1 0.8 0.2 0.2 0.2\n")
    yaml_file = root / "tiny.yaml"
    yaml_file.write_text(f"path: {root}\ntrain: images\nval: images\nnc: {NC}\nnames: ['a', 'b']\n")
    return yaml_file


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    from models.yolo import DetectionModel
    from utils.checkpoint import make_checkpoint, save_checkpoint
    from utils.general import ROOT, yaml_load
    d = yaml_load(ROOT / "models" / "yolov5n.yaml")
    torch.manual_seed(3)
    m = DetectionModel(d, nc=NC)
    m.names = {0: "a", 1: "b"}
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(make_checkpoint(m), path)
    return str(path)


def common_args(data, project, name):
    return ["--cfg", "models/yolov5n.yaml", "--data", str(data), "--imgsz", str(IMG), "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--project", str(project), "--name", name,
            "--noplots", "--seed", "0", "--noautoanchor"]


class Spy:
    """Record the Distiller's models and the teacher's state, then check them after the run."""

    def __init__(self, monkeypatch, fail_at_step=None):
        self.models, self.teacher_state, self.calls = [], None, 0
        orig_setup, orig_step = distiller_mod.Distiller.setup, distiller_mod.Distiller.step_loss
        spy = self

        def setup(d, engine):
            orig_setup(d, engine)
            spy.models = [d.student, d.teacher]
            spy.teacher_state = {k: v.clone() for k, v in d.teacher.state_dict().items()}

        def step_loss(d, *args):
            spy.calls += 1
            if fail_at_step is not None and spy.calls >= fail_at_step:
                raise RuntimeError("injected failure")
            return orig_step(d, *args)

        monkeypatch.setattr(distiller_mod.Distiller, "setup", setup)
        monkeypatch.setattr(distiller_mod.Distiller, "step_loss", step_loss)


def run_kd(data, project, name, teacher, extra=()):
    import train_kd
    opt = train_kd.parse_opt(common_args(data, project, name) + ["--teacher_weight", teacher, *extra])
    train_kd.main(opt)
    return project / name


def test_kd_run_outputs_hooks_teacher_and_checkpoints(tmp_path, tiny_data, teacher_file, monkeypatch):
    import train
    spy = Spy(monkeypatch)
    save = run_kd(tiny_data, tmp_path, "kd", teacher_file, ["--feat", "fgfi"])
    student, teacher = spy.models
    assert spy.calls > 0 and hook_count(student) == 0 and hook_count(teacher) == 0
    assert all(torch.equal(spy.teacher_state[k], v.to(spy.teacher_state[k].device))
               for k, v in teacher.state_dict().items())
    with open(save / "results.csv") as f:
        header = [h.strip() for h in next(csv.reader(f))]
    assert "train/kd" in header and "train/fgfi" in header
    health = json.loads((save / "kd_health.json").read_text())  # the KD health check of every KD run
    assert health["steps"] > 0 and set(health["terms"]) == {"kd", "fgfi"}
    last = torch.load(save / "weights" / "last.pt", weights_only=True)
    adapters = last["plugin"]["adapters"]
    assert adapters and any(k.endswith("0.weight") for k in adapters)
    best = torch.load(save / "weights" / "best.pt", weights_only=True)
    train.main(train.parse_opt(args=common_args(tiny_data, tmp_path, "plain")))
    plain_best = torch.load(tmp_path / "plain" / "weights" / "best.pt", weights_only=True)
    assert list(best["model"]["state_dict"]) == list(plain_best["model"]["state_dict"])


def test_hooks_removed_when_training_raises(tmp_path, tiny_data, teacher_file, monkeypatch):
    spy = Spy(monkeypatch, fail_at_step=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_kd(tiny_data, tmp_path, "boom", teacher_file, ["--feat", "at"])
    assert spy.models and all(hook_count(m) == 0 for m in spy.models)


def test_zero_weights_reproduce_plain_training(tmp_path, tiny_data, teacher_file):
    import train
    train.main(train.parse_opt(args=common_args(tiny_data, tmp_path, "plain")))
    run_kd(tiny_data, tmp_path, "kd0", teacher_file, ["--alpha", "0", "--beta", "0", "--feat", "fgfi"])
    a = torch.load(tmp_path / "plain" / "weights" / "last.pt", weights_only=True)["model"]["state_dict"]
    b = torch.load(tmp_path / "kd0" / "weights" / "last.pt", weights_only=True)["model"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_teacher_is_a_clear_error(tmp_path, tiny_data):
    import train_kd
    from utils.cli import UserError
    opt = train_kd.parse_opt(common_args(tiny_data, tmp_path, "x"))
    with pytest.raises(UserError, match="teacher_weight is required"):
        train_kd.main(opt)
    opt.teacher_weight = str(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="nope.pt does not exist"):
        train_kd.main(opt)
    assert train_kd.parse_opt(["--no-kd"]).kd is False and train_kd.parse_opt([]).kd is True


def _interrupt_after_first_epoch(monkeypatch):
    def on_epoch_end(d, engine, epoch):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after epoch 0")
    monkeypatch.setattr(distiller_mod.Distiller, "on_epoch_end", on_epoch_end, raising=False)


def _count_reads(monkeypatch, path):
    """Count load_checkpoint calls on `path` (wherever it is imported) -> a one-item list."""
    import utils.checkpoint
    import utils.resume
    reads, real = [0], utils.checkpoint.load_checkpoint

    def counting(f, *a, **k):
        reads[0] += Path(f).resolve() == Path(path).resolve()
        return real(f, *a, **k)
    for mod in (utils.checkpoint, utils.resume):
        monkeypatch.setattr(mod, "load_checkpoint", counting)
    return reads


def _last(save):
    return torch.load(save / "weights" / "last.pt", weights_only=True)


@pytest.mark.parametrize("feat", [[], ["--feat", "ft", "at"]], ids=["output_kd", "ft_at"])
def test_kd_resume_equals_uninterrupted_run(tmp_path, tiny_data, teacher_file, monkeypatch, feat):
    """2 epochs == 1 epoch, kill, --resume 1 epoch: student, EMA, adapters and KD options."""
    import train_kd
    two = ["--epochs", "2", "--noval", *feat]
    full = run_kd(tiny_data, tmp_path, "full", teacher_file, two)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            run_kd(tiny_data, tmp_path, "cut", teacher_file, two)
    cut = tmp_path / "cut"
    assert _last(cut)["epoch"] == 0 and _last(cut)["opt"]["teacher_weight"] == teacher_file
    reads = _count_reads(monkeypatch, cut / "weights" / "last.pt")
    train_kd.main(train_kd.parse_opt(["--resume", str(cut / "weights" / "last.pt"), "--workers", "0",
                                      "--device", "cpu"]))
    assert reads == [1]  # one read of last.pt restores options, KD options, weights and state
    a, b = _last(full), _last(cut)
    assert b["epoch"] == 1 and b["opt"]["feat"] == a["opt"]["feat"]
    states = [(a["model"]["state_dict"], b["model"]["state_dict"]), (a["ema"], b["ema"])]
    if feat:
        states.append((a["plugin"]["adapters"], b["plugin"]["adapters"]))
    for sa, sb in states:
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_optimizer_steps_counted_as_upstream(tmp_path, tiny_data, monkeypatch):
    """Batch 1 (nominal 64), 4 batches x 3 epochs, all in warmup (accumulate 1, 2, 2, 3, 4, 4, 5, 5, ...):
    upstream steps at iterations 0, 2 and 7 only; no extra step closes an epoch's partial window."""
    import train
    from utils import engine
    steps = []
    real = engine.Trainer._optimizer_step

    def counting(self, epoch, first_batch):
        steps.append((epoch, first_batch))
        return real(self, epoch, first_batch)
    monkeypatch.setattr(engine.Trainer, "_optimizer_step", counting)
    args = common_args(tiny_data, tmp_path, "acc") + ["--batch-size", "1", "--epochs", "3", "--noval", "--nosave"]
    train.main(train.parse_opt(args=args))
    assert steps == [(0, 0), (0, 1), (1, 0)]


def test_resumed_accumulation_continues_the_schedule():
    """A run resumed at iteration ni continues from the last step the uninterrupted run took."""
    from utils.accumulation import last_step_before
    assert [last_step_before(ni, 100, 64, 1) for ni in (0, 1, 3, 4, 8, 12)] == [-1, 0, 2, 2, 7, 7]
    assert last_step_before(1000, 100, 64, 16) % 4 == 3  # after warmup: every 4th batch, phase kept


DDP_DRIVER = """
import sys
import torch
import train_kd
from utils.distill import distiller as dm
from utils.torch_utils import de_parallel

out, kd_items, step = sys.argv[1], [], dm.Distiller.step_loss


def step_loss(d, *a):
    loss, items = step(d, *a)
    kd_items.append({k: float(v) for k, v in items.items()})
    return loss, items


def on_epoch_end(d, engine, epoch):
    if epoch + 1 == engine.epochs:
        torch.save({"student": {k: v.detach().clone() for k, v in de_parallel(engine.model).named_parameters()},
                    "adapters": {k: v.detach().clone() for k, v in d.adapters.named_parameters()},
                    "items": kd_items}, f"{out}/rank{engine.rank}.pt")


dm.Distiller.step_loss, dm.Distiller.on_epoch_end = step_loss, on_epoch_end
train_kd.main(train_kd.parse_opt(sys.argv[2:]))
"""


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_kd_two_processes(tmp_path, tiny_data, teacher_file):
    """train_kd under torch.distributed.run (gloo, 2 CPU ranks, 3 optimiser steps): both ranks end with the
    same student and the same adapters (broadcast at start, gradients averaged), a non-zero KD loss on each
    rank, one run folder, KD columns and adapters saved by rank 0."""
    import os
    import subprocess
    import sys
    from utils.general import ROOT
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    driver, dumps = tmp_path / "driver.py", tmp_path / "dumps"
    driver.write_text(DDP_DRIVER)
    dumps.mkdir()
    runs = tmp_path / "runs"
    args = common_args(tiny_data, runs, "ddp") + ["--teacher_weight", teacher_file, "--feat", "ft", "fgfi",
                                                  "--noval", "--batch-size", "4", "--epochs", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(driver), str(dumps), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in runs.iterdir()) == ["ddp"]
    r0, r1 = (torch.load(dumps / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    for part in ("student", "adapters"):
        assert r0[part] and r0[part].keys() == r1[part].keys()
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    for rank in (r0, r1):
        assert len(rank["items"]) == 3 and all(it["kd"] > 0 and it["fgfi"] > 0 for it in rank["items"])
    with open(runs / "ddp" / "results.csv") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    assert len(rows) == 3 and float(rows[-1]["train/kd"]) > 0 and float(rows[-1]["train/ft"]) > 0
    last = _last(runs / "ddp")
    assert last["plugin"]["adapters"] and all(torch.isfinite(v.float()).all() for v in last["plugin"]["adapters"].values())

"""Optimiser groups, LR/warmup schedule, EMA, early stopping; checkpoint round-trip, resume, plug-in, DDP."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.dataloaders import WORKER_NICE
from utils.engine import Plugin
from utils.stopping import EarlyStopping
from utils.optim import ModelEMA, apply_warmup, cosine_lr, linear_lr, smart_optimizer, warmup_iters

ROOT = Path(__file__).resolve().parents[1]
HYP = {"warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "momentum": 0.937}


# ----------------------------------------------------------------- helpers shared with test_train.py
def make_tiny_data(root, n_train=8, n_val=8, size=64, seed=0):
    """A tiny YOLO dataset: bright rectangles (class 0) and dark ellipses (class 1) on grey."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = np.full((size, size, 3), 120, np.uint8)
            rows = []
            for _ in range(2):
                c = int(rng.integers(2))
                w, h = rng.integers(size // 6, size // 2, 2)
                x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
                if c == 0:
                    cv2.rectangle(im, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), (250, 250, 250), -1)
                else:
                    cv2.ellipse(im, (int(x0 + w / 2), int(y0 + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, (10, 10, 10), -1)
                rows.append(f"{c} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), im)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    yaml_file = root / "tiny.yaml"
    yaml_file.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n  1: blob\n")
    return yaml_file


def train_args(data, project, *extra, epochs=2, batch=4, img=64, name="exp"):
    return ["--data", str(data), "--cfg", "yolov5n.yaml", "--epochs", str(epochs), "--batch-size", str(batch),
            "--imgsz", str(img), "--device", "cpu", "--workers", "0", "--project", str(project), "--name", name,
            "--noplots", "--seed", "0", *extra]


def run_train(args, plugin=None, plugins=()):
    import train

    opt = train.parse_opt(args=args)
    train.main(opt, plugins=plugins, plugin=plugin)
    return Path(opt.save_dir)


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


# ----------------------------------------------------------------- optimiser, schedules, EMA
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)


def test_smart_optimizer_groups_and_extra_modules():
    m, extra = Small(), nn.Linear(2, 2)
    for name, cls in (("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)):
        opt = smart_optimizer(m, name, lr=0.01, momentum=0.9, decay=5e-4, extra_modules=[extra])
        assert isinstance(opt, cls)
        biases, weights, norms = (set(map(id, g["params"])) for g in opt.param_groups)
        assert biases == {id(m.bn.bias), id(m.head.bias), id(extra.bias)}
        assert weights == {id(m.conv.weight), id(m.head.weight), id(extra.weight)}
        assert norms == {id(m.bn.weight)}
        assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    sgd = smart_optimizer(m, "SGD", lr=0.01, momentum=0.9, decay=5e-4)
    assert sgd.param_groups[0]["nesterov"]
    with pytest.raises(NotImplementedError):
        smart_optimizer(m, "RMSprop")


def test_lr_lambdas():
    lf = linear_lr(10, 0.01)
    assert lf(0) == pytest.approx(1.0) and lf(10) == pytest.approx(0.01) and lf(5) == pytest.approx(0.505)
    cf = cosine_lr(10, 0.1)
    assert cf(0) == pytest.approx(1.0) and cf(10) == pytest.approx(0.1) and cf(5) == pytest.approx(0.55)
    assert cf(2) > lf(2) * 0 + 0.9  # cosine stays high early


def test_warmup_values_at_chosen_iterations():
    m = Small()
    opt = smart_optimizer(m, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    for g in opt.param_groups:
        g["initial_lr"] = 0.01
    lf = linear_lr(10, 0.01)
    nw = warmup_iters(3.0, 10)
    assert nw == 100 and warmup_iters(3.0, 50) == 150
    acc = apply_warmup(opt, 0, nw, 0, lf, HYP, 64, 16)
    assert acc == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    acc = apply_warmup(opt, 25, nw, 0, lf, HYP, 64, 16)
    # a quarter of the way: bias 0.1 -> 0.01, others 0 -> 0.01, momentum 0.8 -> 0.937, accumulate 1 -> 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 - 0.25 * 0.09, 0.0025, 0.0025])
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.8 + 0.25 * 0.137)
    assert acc == round(1 + 0.25 * 3)
    acc = apply_warmup(opt, 100, nw, 2, lf, HYP, 64, 16)  # end of warmup in epoch 2: lr0 * lf(2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lf(2)] * 3)
    assert acc == 4 and opt.param_groups[2]["momentum"] == pytest.approx(0.937)


def test_ema_decay_formula_and_buffers():
    m = Small()
    ema = ModelEMA(m, decay=0.9999, tau=2000)
    e0 = ema.ema.head.weight.clone()
    assert ema.decay(0) == 0 and ema.decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    expected, rm = e0.clone(), ema.ema.bn.running_mean.clone()
    for k in range(1, 4):
        with torch.no_grad():
            m.head.weight.add_(1.0)
            m.bn.running_mean.add_(0.5)
        m.bn.num_batches_tracked += 1
        ema.update(m)
        d = 0.9999 * (1 - math.exp(-k / 2000))
        expected = d * expected + (1 - d) * m.head.weight.detach()
        rm = d * rm + (1 - d) * m.bn.running_mean
    assert ema.updates == 3
    assert torch.allclose(ema.ema.head.weight, expected, atol=1e-6)
    assert torch.allclose(ema.ema.bn.running_mean, rm, atol=1e-6)  # BN buffers are averaged too
    assert ema.ema.bn.num_batches_tracked == 0  # integer entries are left alone
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_early_stopping_needs_strict_improvement():
    s = EarlyStopping(patience=2)
    assert not s(0, 0.5)
    assert not s(1, 0.5)  # equal is not an improvement
    assert s(2, 0.5)
    s = EarlyStopping(patience=2)
    assert not s(0, 0.5) and not s(1, 0.6) and not s(2, 0.6) and s(3, 0.6)


# ----------------------------------------------------------------- engine runs
class Interrupt(Plugin):
    """Raises after the checkpoint of `at_epoch` is written (a kill between epochs)."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_end(self, engine, epoch):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def _state(path, key="model"):
    ck = load_ckpt(path)
    return ck["model"]["state_dict"] if key == "model" else ck[key]


def _assert_same_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_round_trip_and_resume_equivalence(tiny_data, tmp_path):
    full = run_train(train_args(tiny_data, tmp_path, "--noval", name="full"))
    with pytest.raises(KeyboardInterrupt):
        run_train(train_args(tiny_data, tmp_path, "--noval", name="cut"), plugin=Interrupt(0))
    cut = tmp_path / "cut"
    ck = load_ckpt(cut / "weights" / "last.pt")  # round-trip with weights_only
    assert ck["epoch"] == 0 and ck["optimizer"] is not None and ck["ema"] is not None and ck["updates"] > 0
    assert all(v.dtype != torch.float16 for v in ck["model"]["state_dict"].values())
    run_train(["--resume", str(cut / "weights" / "last.pt"), "--workers", "0", "--device", "cpu"])
    _assert_same_states(_state(full / "weights/last.pt"), _state(cut / "weights/last.pt"))
    _assert_same_states(_state(full / "weights/last.pt", "ema"), _state(cut / "weights/last.pt", "ema"))
    assert load_ckpt(cut / "weights/last.pt")["epoch"] == 1
    # the finished run extends with a larger --epochs; a resume without it is refused
    with pytest.raises(ValueError, match="larger --epochs"):
        run_train(["--resume", str(full / "weights/last.pt"), "--workers", "0", "--epochs", "2"])
    run_train(["--resume", str(full / "weights/last.pt"), "--workers", "0", "--epochs", "3"])
    assert load_ckpt(full / "weights/last.pt")["epoch"] == 2
    rows = (full / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and [int(float(r.split(",")[0])) for r in rows[1:]] == [0, 1, 2]


class FakePlugin(Plugin):
    loss_names = ("fake",)

    def __init__(self):
        self.calls = []
        self.module = nn.Linear(1, 1, bias=True)
        nn.init.constant_(self.module.weight, 0.0)

    def setup(self, engine):
        self.calls.append("setup")
        assert not hasattr(engine, "optimizer")
        self.module.to(engine.device)
        self.worker_nice = [ld.worker_init_fn.keywords["nice"] for ld in (engine.train_loader, engine.val_loader)]

    def trainable_modules(self):
        return [self.module]

    def before_forward(self, imgs, targets):
        self.calls.append("before")

    def step_loss(self, imgs, targets, preds):
        self.calls.append("step")
        loss = (self.module.weight - 1.0).pow(2).sum() * imgs.shape[0]
        return loss.reshape(1), {"fake": loss.detach()}

    def teardown(self, engine):
        self.calls.append("teardown")

    def state_dict(self):
        return {"w": self.module.weight.detach().clone()}


def test_plugin_loss_column_trainable_module_and_teardown(tiny_data, tmp_path):
    p = FakePlugin()
    save = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1), plugin=p)
    assert p.calls[0] == "setup" and p.calls[-1] == "teardown" and "step" in p.calls
    assert p.calls[1:-1] == ["before", "step"] * ((len(p.calls) - 2) // 2)  # each step: before, forward, loss
    assert p.worker_nice == [WORKER_NICE, WORKER_NICE]  # a CPU run: its loaders' workers yield to torch
    assert p.module.weight.item() != 0.0  # the optimiser updated the plug-in module
    header = [c.strip() for c in (save / "results.csv").read_text().splitlines()[0].split(",")]
    assert header[-1] == "train/fake" and header[-2] == "x/lr2"
    last, best = load_ckpt(save / "weights/last.pt"), load_ckpt(save / "weights/best.pt")
    assert torch.equal(last["plugin"]["w"], p.module.weight.detach())
    assert best["plugin"] is None and best["optimizer"] is None and best["epoch"] == -1
    assert all(v.dtype == torch.float16 for v in best["model"]["state_dict"].values() if v.is_floating_point())

    class Boom(FakePlugin):
        def step_loss(self, imgs, targets, preds):
            raise RuntimeError("boom")

    b = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1), plugin=b)
    assert b.calls[-1] == "teardown"


class Counter(Plugin):
    """No loss names: its step_loss must still be called every step; it adds nothing to the loss."""

    def __init__(self):
        self.steps, self.torn_down = 0, False

    def step_loss(self, imgs, targets, preds):
        self.steps += 1
        return None, {}

    def teardown(self, engine):
        self.torn_down = True


def test_every_plugin_is_called_and_saved(tiny_data, tmp_path):
    fake, counter = FakePlugin(), Counter()
    save = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1), plugins=[counter, fake])
    assert counter.steps == 2 and "step" in fake.calls  # 8 images at batch 4, every step
    assert counter.torn_down and fake.calls[-1] == "teardown"
    header = [c.strip() for c in (save / "results.csv").read_text().splitlines()[0].split(",")]
    assert header[-2:] == ["x/lr2", "train/fake"]
    states = load_ckpt(save / "weights/last.pt")["plugin"]["plugin_states"]
    assert states[0] is None and torch.equal(states[1]["w"], fake.module.weight.detach())


def test_plugins_teardown_all_and_restore_each_state():
    from utils.plugins import Plugins

    class Failing(Counter):
        def teardown(self, engine):
            raise RuntimeError("first")

    a, b = Failing(), Counter()
    with pytest.raises(RuntimeError, match="first"):
        Plugins([a, b]).teardown(None)
    assert b.torn_down  # the second plugin still released its resources
    f1, f2 = FakePlugin(), FakePlugin()
    nn.init.constant_(f1.module.weight, 3.0)
    loaded = []
    f2.load_state_dict = loaded.append
    Plugins([Counter(), f2]).load_state_dict(Plugins([Counter(), f1]).state_dict())
    assert len(loaded) == 1 and loaded[0]["w"].item() == 3.0
    assert Plugins([Counter()]).state_dict() is None and Plugins([f1]).state_dict()["w"].item() == 3.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes(tiny_data, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "train.py"), *train_args(tiny_data, tmp_path, "--noval", epochs=1, name="ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["ddp"]  # both ranks used rank 0's folder; only one created
    rows = (tmp_path / "ddp" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # only rank 0 wrote
    assert load_ckpt(tmp_path / "ddp" / "weights/last.pt")["epoch"] == 0

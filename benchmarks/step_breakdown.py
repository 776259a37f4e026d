"""Where a training step's time goes, measured inside the engine itself (issue 16).

    python benchmarks/step_breakdown.py                        # NEU-DET, yolov5n, img 224, batch 16, our defaults
    python benchmarks/step_breakdown.py --train-args "--precision fp32" --batches 40

train.py's options build a utils.engine.Trainer; its own setup runs, then --warmup + --batches batches of
epoch 0 go through its own _train_epoch. Its methods are wrapped with perf_counter timers (exclusive time:
a part nested in another is not counted twice) and the loader is wrapped to time the wait for each batch:

    loader    waiting for the next batch (workers compete with the step for the same cores)
    prepare   _prepare_batch: uint8 -> float /255, warmup lr/momentum, channels_last
    forward   the model's forward (module hooks)
    loss      ComputeLoss incl. target building (+ plugins' step_loss, none here)
    backward  Tensor.backward
    optimizer _optimizer_step without the parts below: unscale, clip, SGD step, zero_grad
    guard     the non-finite guard (note_loss, check_step, start_window's BN-buffer copy)
    ema       ModelEMA.update
    progress  _show_progress (running means, tqdm description)
    other     the rest of the step and the loop (autocast, tqdm's iteration, mloss update)

CPU timings are synchronous; on CUDA every timestamp synchronises (slower, but attributable). Prints a table
(ms per step and %) and writes runs/benchmarks/step_breakdown.json.
"""

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("loader", "prepare", "forward", "loss", "backward", "optimizer", "guard", "ema", "progress", "other")


class Timer:
    """Exclusive time per part for the current step: a part's time excludes the parts timed inside it."""

    def __init__(self):
        self.sync = lambda: None
        self.stack, self.step = [], None
        self.steps = []  # one {part: seconds, 'wall': seconds} per batch

    def set_device(self, device):
        """On CUDA every timestamp waits for the queued kernels."""
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def now(self):
        self.sync()
        return time.perf_counter()

    def enter(self, part):
        self.stack.append([part, self.now(), 0.0])

    def leave(self):
        part, t0, inner = self.stack.pop()
        dt = self.now() - t0
        if self.step is not None:
            self.step[part] = self.step.get(part, 0.0) + dt - inner
        if self.stack:
            self.stack[-1][2] += dt

    def wrap(self, part, fn):
        """fn, timed as `part`."""
        def timed(*args, **kwargs):
            self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        return timed


class TimedBatches:
    """The engine's train loader, limited to n batches; each batch starts a step, timed from the request
    of its batch to the request of the next one. Other attributes (generator, sampler) pass through."""

    def __init__(self, loader, n, timer):
        self.loader, self.n, self.timer = loader, n, timer

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return self.n

    def __iter__(self):
        it, t = iter(self.loader), self.timer
        for _ in range(self.n):
            t0 = t.now()
            self._close_step(t0)
            batch = next(it)
            t.step = {"start": t0, "loader": t.now() - t0}
            yield batch
        self._close_step(t.now())

    def _close_step(self, t_end):
        t = self.timer
        if t.step is not None:
            step, t.step = t.step, None
            step["wall"] = t_end - step.pop("start")
            step["other"] = step["wall"] - sum(v for k, v in step.items() if k != "wall")
            t.steps.append(step)


def instrument(trainer, timer):
    """Wrap the engine's step methods (instance attributes) and Tensor.backward -> undo()."""
    saved = []
    for obj, name, part in ((trainer, "_prepare_batch", "prepare"), (trainer, "compute_loss", "loss"),
                            (trainer.plugins, "step_loss", "loss"), (trainer, "_optimizer_step", "optimizer"),
                            (trainer.guard, "note_loss", "guard"), (trainer.guard, "check_step", "guard"),
                            (trainer.guard, "start_window", "guard"), (trainer.ema, "update", "ema"),
                            (trainer, "_show_progress", "progress")):
        saved.append((obj, name, obj.__dict__.get(name)))  # an instance attribute (compute_loss) or None
        setattr(obj, name, timer.wrap(part, getattr(obj, name)))
    hooks = [trainer.train_model.register_forward_pre_hook(lambda m, a: timer.enter("forward")),
             trainer.train_model.register_forward_hook(lambda m, a, o: timer.leave())]
    backward = torch.Tensor.backward
    torch.Tensor.backward = timer.wrap("backward", backward)

    def restore():
        torch.Tensor.backward = backward
        for h in hooks:
            h.remove()
        for obj, name, own in saved:
            if own is None:
                delattr(obj, name)  # the class's method shows through again
            else:
                setattr(obj, name, own)
    return restore


def timed_loop(trainer, n_batches, timer):
    """Replaces Trainer._train_loop: the engine's own first epoch, cut to n_batches, instrumented."""
    trainer._prepare_loop()
    timer.set_device(trainer.device)
    trainer.train_loader = TimedBatches(trainer.train_loader, min(n_batches, len(trainer.train_loader)), timer)
    restore = instrument(trainer, timer)
    try:
        trainer._train_epoch(0)
    finally:
        restore()
        trainer.train_loader = trainer.train_loader.loader
    return (0.0,) * 7


def make_trainer(a):
    """A Trainer from train.py's parser, as train.main() prepares it (without training)."""
    import train
    from utils.engine import Trainer
    from utils.general import increment_path
    from utils.options import check_train_options

    args = ["--data", a.data, "--cfg", a.cfg, "--img", str(a.img), "--batch-size", str(a.batch_size),
            "--workers", str(a.workers), "--epochs", str(a.epochs), "--noval", "--noplots",
            "--project", a.project, "--name", "exp", *shlex.split(a.train_args)]
    opt = train.parse_opt(args=args)
    check_train_options(opt)
    opt.cfg = train._resolve_cfg(opt.cfg)
    opt.save_dir = str(increment_path(Path(opt.project) / opt.name))
    return Trainer(opt, opt.hyp)


def summarise(steps, warmup):
    """Mean ms per step of each part over the timed steps, its share of the step, and the step's wall time."""
    timed = steps[warmup:]
    wall = statistics.fmean(s["wall"] for s in timed)
    rows = {p: statistics.fmean(s.get(p, 0.0) for s in timed) for p in PARTS}
    return {"steps": len(timed), "wall_ms": wall * 1e3,
            "median_wall_ms": statistics.median(s["wall"] for s in timed) * 1e3,
            "parts_ms": {p: v * 1e3 for p, v in rows.items()},
            "parts_pct": {p: 100 * v / wall for p, v in rows.items()},
            "optimizer_steps": sum(1 for s in timed if "optimizer" in s)}


def print_table(res, a, trainer):
    print(f"\nstep breakdown: {Path(a.cfg).stem} img {trainer.imgsz} batch {trainer.batch_size}, {a.workers} workers, "
          f"precision {trainer.precision.name}, channels_last {trainer.channels_last}, "
          f"{torch.get_num_threads()} threads; {res['steps']} steps after {a.warmup} warm-up "
          f"({res['optimizer_steps']} with an optimiser step)")
    print(f"{'part':<10}{'ms/step':>10}{'%':>7}")
    for p in PARTS:
        print(f"{p:<10}{res['parts_ms'][p]:10.1f}{res['parts_pct'][p]:7.1f}")
    print(f"{'step':<10}{res['wall_ms']:10.1f}{100.0:7.1f}   (median {res['median_wall_ms']:.1f} ms, "
          f"{trainer.batch_size * 1e3 / res['wall_ms']:.1f} img/s)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "NEU-DET.yaml"))
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="the schedule's length (only epoch 0 is run)")
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed first batches (worker start, first allocations)")
    p.add_argument("--train-args", default="", help='extra train.py flags, e.g. "--precision fp32"')
    p.add_argument("--cv2-threads", type=int, default=None,
                   help="cv2.setNumThreads(N) before the loader forks its workers (default: leave OpenCV's)")
    p.add_argument("--project", default=str(ROOT / "runs" / "benchmarks" / "step_breakdown"))
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "step_breakdown.json"))
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.cv2_threads is not None:
        import cv2

        cv2.setNumThreads(a.cv2_threads)
    trainer = make_trainer(a)
    timer = Timer()
    trainer._train_loop = lambda: timed_loop(trainer, a.warmup + a.batches, timer)
    trainer.run()  # the engine's setup, our loop, then its (empty: no best.pt) final validation
    res = summarise(timer.steps, a.warmup)
    res.update(config=vars(a), precision=trainer.precision.name, precision_reason=trainer.precision.reason,
               channels_last=trainer.channels_last, threads=torch.get_num_threads(), torch=torch.__version__,
               ema_updates=trainer.ema.updates, per_step=timer.steps)
    print_table(res, a, trainer)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"saved {out}")
    return res


if __name__ == "__main__":
    main()

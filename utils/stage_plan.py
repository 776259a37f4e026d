"""Fit a multi-stage job (teacher, KD student, baseline student) into a wall-clock budget.

`split_budget` gives each stage its seconds; each stage runs under that `--time` cap, so the budget holds
whatever the machine. `probe_costs` times a few training steps of each model here (random images, the run's
precision, image size and batch size) in the job's first seconds, and `epochs_for` turns a stage's seconds
into the first guess of its epochs (the span of its LR schedule until the engine has timed real epochs);
`calibrate` rescales the guesses of later stages by how far the probe was off on an earlier one.
"""

import time
from dataclasses import dataclass

import torch

from utils.precision import Precision


@dataclass
class Costs:
    """Seconds per training image (forward + loss + backward + step) and per inference image."""

    teacher_train: float
    student_train: float
    teacher_forward: float
    student_forward: float

    def epoch_seconds(self, stage, n_train, n_val):
        """Estimated seconds of one epoch of a stage ('teacher', 'kd', 'baseline') with validation."""
        if stage == "teacher":
            return n_train * self.teacher_train + n_val * self.teacher_forward
        train = self.student_train + (self.teacher_forward if stage == "kd" else 0.0)
        return n_train * train + n_val * self.student_forward


def _model(spec, nc):
    """A fresh model from a YAML, or a trained one from a weights file (.pt)."""
    from models.yolo import DetectionModel
    from utils.checkpoint import load_model

    model = load_model(spec) if str(spec).endswith(".pt") else DetectionModel(spec, nc=nc)
    return model.float().to(memory_format=torch.channels_last)


def _time_steps(fn, steps):
    """Best per-call seconds of fn over `steps` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def time_model(spec, nc, imgsz, batch_size, precision: Precision, steps=2):
    """(train seconds per image, forward seconds per image) of a model (YAML or .pt) on this machine."""
    model = _model(spec, nc)
    x = torch.rand(batch_size, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def train_step():
        with torch.autocast("cpu", dtype=precision.autocast_dtype or torch.float32, enabled=precision.autocast):
            out = model(x)
            loss = sum(o.float().square().mean() for o in out)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=precision.autocast_dtype or torch.float32,
                                             enabled=precision.autocast):
            model(x)

    model.train()
    t_train = _time_steps(train_step, steps)
    model.eval()
    t_fwd = _time_steps(forward, steps)
    return t_train / batch_size, t_fwd / batch_size


def probe_costs(teacher, student_cfg, nc, imgsz, batch_size, precision, steps=2):
    """Costs of both models on this machine (CPU; a few seconds). teacher: a YAML or a trained .pt."""
    t_train, t_fwd = time_model(teacher, nc, imgsz, batch_size, precision, steps)
    s_train, s_fwd = time_model(student_cfg, nc, imgsz, batch_size, precision, steps)
    return Costs(t_train, s_train, t_fwd, s_fwd)


def split_budget(seconds, teacher_share=0.4, train_teacher=True, baseline=True):
    """Seconds for the teacher and for the KD student. The baseline then runs the KD student's epochs:
    each of its epochs does strictly less work (no teacher forward), so giving the KD student half of the
    students' time bounds the pair by it whatever the machine."""
    teacher = seconds * teacher_share if train_teacher else 0.0
    return {"teacher": teacher, "kd": (seconds - teacher) / (2 if baseline else 1)}


def epochs_for(costs, stage, seconds, n_train, n_val):
    """How many epochs of a stage the probe expects in `seconds` (at least 1): the first guess of the LR
    schedule, which the stage's --time cap then corrects."""
    return max(int(seconds // costs.epoch_seconds(stage, n_train, n_val)), 1)


def calibrate(costs, planned_seconds_per_epoch, measured_seconds_per_epoch):
    """Costs scaled by measured/planned of a finished stage (the probe does not see data loading etc.)."""
    k = measured_seconds_per_epoch / max(planned_seconds_per_epoch, 1e-9)
    return Costs(costs.teacher_train * k, costs.student_train * k, costs.teacher_forward * k,
                 costs.student_forward * k), k

"""KD health check: how hard each KD term pulls on the student next to the detection loss.

The quantity is the one benchmarks/kd_grad_balance.py measures: the norm of d term / d student
parameters over the norm of d detection loss / d student parameters, both batch-scaled as trained.
Every KD run measures it over its first steps, logs one line per term, warns when a term cannot
be doing its job and writes kd_health.json in the run folder.
"""

import json
import math
from pathlib import Path

import torch

from utils.general import LOGGER, colorstr
from utils.run_dirs import writing

STEPS = 3  # training steps averaged
LOW, HIGH = 0.01, 10.0  # healthy ratio band to the detection gradient


def grad_norm(loss, params):
    """Norm of d loss / d params (graph kept); 0 for a loss with no path to them."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros(()))))


def problem(ratio):
    """Why a term's gradient ratio to detection is unhealthy, or None."""
    if not math.isfinite(ratio):
        return "non-finite gradient"
    if ratio == 0:
        return "zero gradient: this term does not train the student (detached features, weight 0, hook never ran?)"
    if ratio > HIGH:
        return f"more than {HIGH:g}x the detection gradient: it drowns the detection loss (gradient clip 10)"
    if ratio < LOW:
        return f"less than {LOW:g}x the detection gradient: it changes almost nothing (weight too small?)"
    return None


class KDHealth:
    """Average each term's student-gradient norm over the first `steps` steps, then report once."""

    def __init__(self, params, steps=STEPS):
        self.params, self.steps = list(params), steps
        self.sums, self.n, self.notes = {}, 0, {}

    @property
    def active(self):
        return self.n < self.steps

    def record(self, det_loss, terms):
        """Add one step: the detection loss and the KD terms {name: loss} as they enter the total."""
        for name, loss in {"det": det_loss, **terms}.items():
            self.sums[name] = self.sums.get(name, 0.0) + grad_norm(loss, self.params)
        self.n += 1

    def note(self, name, text):
        """Attach an explanation to a term (e.g. which hook never ran)."""
        self.notes[name] = text

    def summary(self):
        """{'steps', 'detection_grad', 'terms': {name: {grad_student, ratio_to_det, warning}}}."""
        g_det = self.sums.get("det", 0.0) / max(self.n, 1)
        terms = {}
        for name, total in self.sums.items():
            if name == "det":
                continue
            g = total / max(self.n, 1)
            ratio = g / g_det if g_det > 0 else float("nan")
            why = problem(ratio)
            if name in self.notes:
                why = f"{why or 'check'}; {self.notes[name]}"
            terms[name] = {"grad_student": g, "ratio_to_det": ratio, "warning": why}
        return {"steps": self.n, "detection_grad": g_det, "terms": terms}

    def report(self, save_dir=None):
        """Log one line per term (a WARNING for each unhealthy one), write kd_health.json -> summary."""
        s = summary = self.summary()
        for name, t in s["terms"].items():
            line = f"{colorstr('KD health:')} {name} grad {t['ratio_to_det']:.3g}x detection"
            if t["warning"]:
                LOGGER.warning(f"WARNING: {line}: {t['warning']}")
            else:
                LOGGER.info(line)
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            with writing(Path(save_dir) / "kd_health.json") as f:
                f.write_text(json.dumps(summary, indent=2))
        return summary

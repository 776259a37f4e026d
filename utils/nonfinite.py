"""Non-finite guard of the training engine: a NaN/inf loss or gradient skips that optimiser step, is
counted and logged; too many in a row stop the run with a clear error; checkpoints never hold NaN/inf.

With CUDA AMP the GradScaler keeps handling inf/NaN gradients itself (it skips the step and lowers its
scale); only non-finite losses are counted then.
"""


import torch
import torch.distributed as dist

from utils.cli import UserError
from utils.general import LOGGER

DEFAULT_LIMIT = 20  # consecutive non-finite steps before training stops (hyp key 'nonfinite_limit')


class NonFiniteError(UserError, ValueError):
    """Training diverged: too many consecutive non-finite losses or gradients."""


class NonFiniteGuard:
    """Watches one accumulation window at a time: note_loss() per batch (no host sync), then check_step()
    at the optimiser step (one sync). A bad window is skipped as a whole: its gradients are dropped by the
    caller and the BatchNorm statistics its forwards changed are put back."""

    def __init__(self, model, limit=DEFAULT_LIMIT, lr0=None, distributed=False, check_grads=True):
        self.limit = int(limit)
        self.lr0 = lr0
        self.distributed = distributed
        self.check_grads = check_grads  # False under CUDA AMP: GradScaler handles inf gradients
        self.total = self.consecutive = 0
        self.buffers = [b for b in model.buffers() if b.dtype.is_floating_point]
        self.saved = [b.detach().clone() for b in self.buffers]
        self.flags = []

    def start_window(self):
        """Keep the BatchNorm statistics from before the window's first forward."""
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)
        self.flags = []

    def note_loss(self, loss):
        """Remember whether this batch's loss was finite (a device tensor: no sync)."""
        self.flags.append(~torch.isfinite(loss.detach()).all())

    def check_step(self, total_norm, epoch, first_batch):
        """True when the window may step; else restore the statistics, count, log (and maybe raise)."""
        dev = total_norm.device if torch.is_tensor(total_norm) else "cpu"
        flags = torch.stack(self.flags).float() if self.flags else torch.zeros(0, device=dev)
        if self.distributed:  # every rank takes the same decision
            dist.all_reduce(flags)
        grad_bad = ~torch.isfinite(torch.as_tensor(total_norm, device=flags.device)) if self.check_grads \
            else torch.zeros((), dtype=torch.bool, device=flags.device)
        bad = torch.cat((flags > 0, grad_bad.reshape(1))).tolist()
        self.flags = []
        if not any(bad):
            self.consecutive = 0
            return True
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)
        k = bad.index(True)
        what, batch = ("loss", first_batch + k) if k < len(bad) - 1 else ("gradient", first_batch + len(bad) - 2)
        self._bad(what, epoch, batch)
        return False

    def _bad(self, what, epoch, batch):
        self.total += 1
        self.consecutive += 1
        LOGGER.warning(f"WARNING: non-finite {what} at epoch {epoch}, batch {batch} ({self.total} so far), "
                       "optimiser step skipped")
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"training stopped: {self.consecutive} consecutive optimiser steps with a non-finite loss or "
                f"gradient (last at epoch {epoch}, batch {batch}; {self.total} in all). The run diverged: try a "
                f"lower lr0 (now {self.lr0}) in the --hyp file. weights/last.pt and best.pt keep the last finite "
                "state; hyp 'nonfinite_limit' sets how many bad steps in a row are tolerated")


def nonfinite_entries(obj, prefix="", limit=5):
    """Names of up to `limit` tensors in a (nested) checkpoint dict/list holding NaN or inf."""
    found = []

    def walk(x, name):
        if len(found) >= limit:
            return
        if torch.is_tensor(x):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                found.append(name)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{name}[{i}]")

    walk(obj, prefix)
    return found

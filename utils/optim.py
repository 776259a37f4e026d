"""Optimiser construction (3 parameter groups), LR schedules, warmup and the model EMA."""

import math
from copy import deepcopy

import numpy as np
import torch
import torch.nn as nn

from utils.cli import OptionError
from utils.general import LOGGER, colorstr
from utils.torch_utils import de_parallel

NORM_TYPES = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))


def split_param_groups(modules):
    """Trainable parameters of modules as (biases, weights with decay, norm weights) lists."""
    biases, weights, norm_weights = [], [], []
    seen = set()
    for module in modules:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if name == "bias":
                    biases.append(p)
                elif isinstance(m, NORM_TYPES) and name == "weight":
                    norm_weights.append(p)
                else:
                    weights.append(p)
    return biases, weights, norm_weights


def smart_optimizer(model, name="SGD", lr=0.001, momentum=0.9, decay=1e-5, extra_modules=()):
    """Optimizer with groups [0] biases (no decay), [1] weights (decay), [2] norm weights (no decay).

    Parameters of extra_modules (e.g. distillation adapters) join the same groups.
    Group 0 is the biases so that warmup's bias lr and results.csv's x/lr0 refer to it, as upstream.
    """
    biases, weights, norm_weights = split_param_groups([de_parallel(model), *extra_modules])
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise NotImplementedError(f"optimizer '{name}' not supported: use SGD, Adam or AdamW")
    optimizer.add_param_group({"params": weights, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(f"{colorstr('optimizer:')} {type(optimizer).__name__}(lr={lr}) with parameter groups "
                f"{len(norm_weights)} weight(decay=0.0), {len(weights)} weight(decay={decay}), {len(biases)} bias")
    return optimizer


def linear_lr(epochs, lrf):
    """LR multiplier per epoch: linear from 1 to lrf."""
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def cosine_lr(epochs, lrf):
    """LR multiplier per epoch: half cosine from 1 to lrf."""
    return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1


def lr_lambda(epochs, lrf, cos=False):
    """LR multiplier per epoch (cosine or linear); refuses epochs < 1 (it divides by it)."""
    if epochs < 1:
        raise OptionError(f"--epochs {epochs}: must be at least 1")
    return cosine_lr(epochs, lrf) if cos else linear_lr(epochs, lrf)


def warmup_iters(warmup_epochs, batches_per_epoch):
    """Number of warmup iterations: max(round(warmup_epochs * nb), 100)."""
    return max(round(warmup_epochs * batches_per_epoch), 100)


def apply_warmup(optimizer, ni, nw, epoch, lf, hyp, nbs, batch_size):
    """Set lr/momentum of every group for iteration ni < nw; returns the accumulate count to use."""
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for j, g in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 0 else 0.0
        g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * lf(epoch)]))
        if "momentum" in g:
            g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate


class ModelEMA:
    """Exponential moving average of every floating-point state entry (weights and BN buffers).

    decay(updates) = decay * (1 - exp(-updates / tau)), so early updates follow the model closely.
    """

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.base_decay, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates):
        return self.base_decay * (1 - math.exp(-updates / self.tau))

    def _pairs(self, model):
        """(EMA tensors, model tensors) of every floating state entry, built once per model: reading them
        through state_dict() every step cost more than the update itself on a CPU."""
        key = id(model)
        if getattr(self, "_pairs_key", None) != key:
            own = dict(self.ema.named_parameters()) | dict(self.ema.named_buffers())
            theirs = dict(model.named_parameters()) | dict(model.named_buffers())
            names = [k for k in self.ema.state_dict() if own[k].dtype.is_floating_point]
            self._pairs_cache = ([own[k] for k in names], [theirs[k] for k in names])
            self._pairs_key = key
        return self._pairs_cache

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay(self.updates)
        ema_t, model_t = self._pairs(de_parallel(model))
        if ema_t:  # ema = d * ema + (1 - d) * model, in one fused pass
            torch._foreach_lerp_(ema_t, [t.detach().to(e.dtype) for e, t in zip(ema_t, model_t)], 1.0 - d)

    def update_attr(self, model, include=("yaml", "nc", "hyp", "names", "stride", "class_weights"),
                    exclude=("process_group", "reducer", "training")):
        """Copy plain attributes (names, hyp, nc, ...) from the model to the EMA."""
        for k, v in de_parallel(model).__dict__.items():
            if (include and k not in include) or k.startswith("_") or k in exclude:
                continue
            setattr(self.ema, k, v)


def restore_optimizer(optimizer, state):
    """optimizer.load_state_dict(state), then check that every saved per-parameter tensor (momentum, Adam's
    moments) has its parameter's shape and is finite: torch would only fail (or train on garbage) at the
    first step. Raises ValueError naming the parameter group."""
    optimizer.load_state_dict(state)
    for g, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                if v is None:
                    continue
                if not isinstance(v, torch.Tensor):
                    if not (isinstance(v, (int, float)) and math.isfinite(v)):
                        raise ValueError(f"group {g}: state '{name}' is {v!r}")
                elif v.dim() and v.shape != p.shape or v.is_floating_point() and not torch.isfinite(v).all():
                    raise ValueError(f"group {g}: state '{name}' of shape {tuple(v.shape)} for a parameter of "
                                     f"shape {tuple(p.shape)}, or not finite")

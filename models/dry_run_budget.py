"""A budget for the stride dry run of a model rebuilt from someone else's file (a weights file's stored YAML).

Its parameters are bounded before allocation (parse_model's max_params), but parameter-free layers are not:
thousands of pooling layers or large upsample factors would make the one forward pass that measures the
strides take minutes or gigabytes. Forward pre-hooks on every leaf module stop that pass, before the
layer runs, once one activation or the total work exceeds utils.limits' DRY_RUN_* bounds.
"""

import math

import torch.nn as nn
from torch.nn.modules.module import register_module_forward_pre_hook

from utils.limits import DRY_RUN_CALLS, DRY_RUN_ELEMENTS, DRY_RUN_WORK


def _elements(x):
    if isinstance(x, (list, tuple)):
        return sum(_elements(v) for v in x)
    return x.numel() if hasattr(x, "numel") else 0


def _upsampled(m, x):
    """Elements an nn.Upsample will produce from input x (predicted, nothing computed)."""
    spatial = x.shape[2:]
    if m.size is not None:
        sizes = m.size if isinstance(m.size, (list, tuple)) else [m.size] * len(spatial)
        return x.shape[0] * x.shape[1] * math.prod(int(s) for s in sizes)
    scales = m.scale_factor if isinstance(m.scale_factor, (list, tuple)) else [m.scale_factor] * len(spatial)
    return x.numel() * math.prod(float(s) for s in scales)


class DryRunBudget:
    """Context manager: hooks on ``model``'s leaf modules; ``error(message)`` is raised when over budget."""

    def __init__(self, model, error):
        self.model, self.error = model, error
        self.calls = self.work = 0
        self.handles, self.leaves = [], set()

    def _check(self, m, inputs):
        self.calls += 1
        n = _elements(inputs)
        if isinstance(m, nn.Upsample) and inputs and hasattr(inputs[0], "shape"):
            n = max(n, _upsampled(m, inputs[0]))
        self.work += n
        if n > DRY_RUN_ELEMENTS:
            raise self.error(f"{type(m).__name__} would hold {n:,.0f} elements in the dry run at 256 px "
                             f"(limit {DRY_RUN_ELEMENTS:,})")
        if self.calls > DRY_RUN_CALLS or self.work > DRY_RUN_WORK:
            raise self.error(f"the model needs more than {DRY_RUN_CALLS:,} layer calls or {DRY_RUN_WORK:,} "
                             f"activation elements for one 256 px image: far more compute than any YOLO model")

    def _check_leaf(self, m, inputs):
        if m in self.leaves:  # containers only pass their input on: the leaves do the work
            self._check(m, inputs)

    def __enter__(self):
        # one process-wide pre-hook for the pass instead of one per module: registering hundreds of handles
        # cost ~10 ms per model load
        self.leaves = {m for m in self.model.modules() if not m._modules}
        self.handles = [register_module_forward_pre_hook(self._check_leaf)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return False

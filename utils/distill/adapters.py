"""Trainable student->teacher channel adapters (1x1 conv + BN), one per student layer."""

import torch.nn as nn


class Adapter(nn.Sequential):
    """1x1 conv (no bias) + BatchNorm mapping c_in student channels to c_out teacher channels."""

    def __init__(self, c_in, c_out):
        super().__init__(nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out))


class AdapterSet(nn.ModuleDict):
    """Adapters keyed by the student layer index ('s17' ...), built from (s_idx, c_s, c_t)."""

    def __init__(self, specs=()):
        super().__init__({f"s{s}": Adapter(c_s, c_t) for s, c_s, c_t in specs})

    def apply_to(self, s_idx, x):
        """Adapt the student feature of layer s_idx to the teacher's channel count."""
        return self[f"s{s_idx}"](x)

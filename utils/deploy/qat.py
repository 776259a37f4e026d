"""Quantization-aware fine-tuning (`train.py --qat`, `train_kd.py --qat`): INT8 fake quantization in the forward,
straight-through gradients, so the weights learn to live on the INT8 grid the deployed model will use.

What is simulated is what export.py --int8 deploys: every convolution's weight per output channel, symmetric,
8 bits (levels -127..127), after the BatchNorm is folded into it (the fused weight is what gets quantized), and
its input per tensor, 8 bits, over the range an EMA min/max observer sees in training. BatchNorm statistics are
frozen (folded with their running values, never updated), as in the late phase of standard QAT.

The model keeps its modules and state_dict keys (the classes of conv modules are swapped for subclasses; the
observer ranges are attributes, saved as plugin state in last.pt), so best.pt is an ordinary float checkpoint
of quantization-ready weights: export.py --int8 calibrates and quantizes it as any other (NNCF for OpenVINO,
QDQ for onnxruntime). Conv+BatchNorm pairs inside nn.Sequential blocks (MobileNetV3) are quantized unfolded in
training and not after fuse(); every YOLOv5 block is exact.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.common import Conv
from utils.general import LOGGER
from utils.plugins import Plugin

W_LEVELS = 127  # symmetric weight levels: -127..127
A_LEVELS = 255  # activation levels: 0..255 with a zero point
OBSERVER_MOMENTUM = 0.01


def fake_quant_weight(w):
    """Per-output-channel symmetric 8-bit fake quantization of a conv weight (gradient passes straight)."""
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / W_LEVELS).clamp(min=1e-8).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -W_LEVELS, W_LEVELS).to(w.dtype)


class RangeObserver:
    """EMA of an activation's min and max (always spanning 0), and the fake quantization over that range."""

    def __init__(self):
        self.lo = self.hi = None

    def observe(self, x):
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.lo is None:
            self.lo, self.hi = min(lo, 0.0), max(hi, 0.0)
        else:
            m = OBSERVER_MOMENTUM
            self.lo, self.hi = min((1 - m) * self.lo + m * lo, 0.0), max((1 - m) * self.hi + m * hi, 0.0)

    def __call__(self, x, training):
        if training:
            self.observe(x)
        if self.lo is None or self.hi <= self.lo:  # nothing seen yet (an EMA copy before its first sync)
            return x
        scale = (self.hi - self.lo) / A_LEVELS
        zero = min(max(round(-self.lo / scale), 0), A_LEVELS)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, A_LEVELS).to(x.dtype)


def _quantized_conv(m, conv, x, w, b):
    """conv's arithmetic with weight w and bias b, input and weight fake-quantized (m owns the observer)."""
    return F.conv2d(m.observer(x, m.training), fake_quant_weight(w), b, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


class QATConv2d(nn.Conv2d):
    """nn.Conv2d whose input and weight pass through fake quantization."""

    def forward(self, x):
        return self._conv_forward(self.observer(x, self.training), fake_quant_weight(self.weight), self.bias)


class QATConv(Conv):
    """YOLOv5 Conv (conv + BN + act) computing with the BN folded into a fake-quantized weight; after fuse()
    the same arithmetic on the fused conv."""

    def forward(self, x):
        c, bn = self.conv, self.bn
        k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return self.act(_quantized_conv(self, c, x, c.weight * k.view(-1, 1, 1, 1), bn.bias - bn.running_mean * k))

    def forward_fuse(self, x):
        return self.act(_quantized_conv(self, self.conv, x, self.conv.weight, self.conv.bias))


def quantized_modules(model):
    """[(name, module)] of the modules prepare_qat swapped, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QATConv, QATConv2d))]


def prepare_qat(model):
    """Swap model's Conv blocks and remaining bare nn.Conv2d for their fake-quantizing subclasses, in place
    (same parameters, buffers and keys); BatchNorms of Conv blocks are frozen. -> number of quantized convs."""
    inner = set()
    for m in model.modules():
        if type(m) is Conv and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            m.__class__ = QATConv
            m.observer = RangeObserver()
            inner.add(m.conv)
    for m in model.modules():
        if type(m) is nn.Conv2d and m not in inner:
            m.__class__ = QATConv2d
            m.observer = RangeObserver()
    return len(quantized_modules(model))


class QATPlugin(Plugin):
    """The engine plug-in behind --qat (the engine appends it): fake quantization from the first step, the EMA
    copy's ranges kept in step."""

    def __init__(self):
        self.engine, self.saved, self.pairs = None, {}, []

    def setup(self, engine):
        self.engine = engine
        n = prepare_qat(engine.model)
        self._restore_ranges()
        LOGGER.info(f"QAT: {n} convolutions train with INT8 fake quantization (weights per channel, inputs per "
                    f"tensor, BatchNorm folded and frozen); export with export.py --int8")

    def _restore_ranges(self):
        for name, m in quantized_modules(self.engine.model):
            if name in self.saved:
                m.observer.lo, m.observer.hi = self.saved[name]

    def on_train_start(self, engine):
        if self.engine is not None:
            self.pairs = list(zip(quantized_modules(engine.model), quantized_modules(engine.ema.ema)))
            self.step_loss(None, None, None)

    def step_loss(self, imgs, targets, preds):
        """Keep the EMA copy's observers at the trained model's ranges (it validates with them)."""
        for (_, a), (_, b) in self.pairs:
            b.observer.lo, b.observer.hi = a.observer.lo, a.observer.hi
        return None, {}

    def state_dict(self):
        return {"ranges": {n: [m.observer.lo, m.observer.hi] for n, m in quantized_modules(self.engine.model)
                           if m.observer.lo is not None}}

    def load_state_dict(self, state):
        ranges = (state or {}).get("ranges", {})
        if not isinstance(ranges, dict):
            return
        self.saved = {n: (float(v[0]), float(v[1])) for n, v in ranges.items()
                      if isinstance(n, str) and isinstance(v, (list, tuple)) and len(v) == 2
                      and all(isinstance(x, (int, float)) and abs(x) < 1e6 for x in v) and v[0] <= 0 <= v[1]}
        if self.engine is not None:  # restored after setup
            self._restore_ranges()

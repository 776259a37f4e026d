"""Attention blocks usable from model YAMLs: SE, CBAM, CA (SPEC.md section 3).

YAML args: `[c_out, reduction, need11=False, reverse=False]`; the input channel count is
prepended by the parser. When c_in != c_out a 1x1 Conv matches channels, before the attention
(`need11`) or after it (`need11` and `reverse`); a mismatch without `need11` is an error.
"""

import torch
import torch.nn as nn

from models.common import Conv, YamlSpec
from utils.torch_utils import fuse_conv_and_bn


class _ChannelMatched(YamlSpec, nn.Module):
    """Base: wraps `self.attend(x)` with the optional 1x1 channel-matching conv."""

    def _setup_match(self, c1, c2, need11, reverse):
        if c1 != c2 and not need11:
            raise ValueError(
                f"{type(self).__name__}: input has {c1} channels but {c2} were asked; "
                "pass need11=True to add a 1x1 channel-matching conv"
            )
        self.reverse = bool(reverse)
        self.match = Conv(c1, c2, 1, 1) if need11 and c1 != c2 else nn.Identity()
        return c1 if self.reverse else c2  # channels the attention itself sees

    def forward(self, x):
        if self.reverse:
            return self.match(self.attend(x))
        return self.attend(self.match(x))


class SE(_ChannelMatched):
    """Squeeze-and-excitation: avg-pool -> Linear(c, c/r) -> ReLU -> Linear(c/r, c) -> sigmoid -> scale."""

    def __init__(self, c1, c2, r=16, need11=False, reverse=False):
        super().__init__()
        c = self._setup_match(c1, c2, need11, reverse)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.l1 = nn.Linear(c, max(c // r, 1), bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.l2 = nn.Linear(max(c // r, 1), c, bias=False)
        self.sig = nn.Sigmoid()

    def attend(self, x):
        b, c = x.shape[:2]
        y = self.sig(self.l2(self.relu(self.l1(self.avgpool(x).view(b, c)))))
        return x * y.view(b, c, 1, 1)


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled maps through a shared 1x1-conv MLP, summed, sigmoid."""

    def __init__(self, c, ratio=16):
        super().__init__()
        hidden = max(c // ratio, 1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.f1 = nn.Conv2d(c, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.f2 = nn.Conv2d(hidden, c, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg = self.f2(self.relu(self.f1(self.avg_pool(x))))
        mx = self.f2(self.relu(self.f1(self.max_pool(x))))
        return x * self.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: [channel-mean, channel-max] -> 7x7 conv (no bias) -> sigmoid."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        maps = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
        return x * self.sigmoid(self.conv(maps))


class CBAM(_ChannelMatched):
    """Convolutional block attention module: channel attention then spatial attention."""

    def __init__(self, c1, c2, ratio=16, need11=False, reverse=False, kernel_size=7):
        super().__init__()
        c = self._setup_match(c1, c2, need11, reverse)
        self.channel_attention = ChannelAttention(c, ratio)
        self.spatial_attention = SpatialAttention(kernel_size)

    def attend(self, x):
        return self.spatial_attention(self.channel_attention(x))


class HSwish(nn.Module):
    """x * relu6(x + 3) / 6."""

    def forward(self, x):
        return x * nn.functional.relu6(x + 3.0) / 6.0


class CA(_ChannelMatched):
    """Coordinate attention: pool along W and H, shared 1x1 conv + BN + h_swish, two 1x1 convs + sigmoid."""

    def __init__(self, c1, c2, reduction=32, need11=False, reverse=False):
        super().__init__()
        c = self._setup_match(c1, c2, need11, reverse)
        mip = max(8, c // reduction)
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def fuse_bn(self):
        """Fold bn1 into conv1 (called by DetectionModel.fuse)."""
        self.conv1 = fuse_conv_and_bn(self.conv1, self.bn1)
        self.bn1 = nn.Identity()

    def attend(self, x):
        h, w = x.shape[-2:]
        x_h = x.mean(3, keepdim=True)  # (b, c, h, 1)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)  # (b, c, w, 1)
        y = self.act(self.bn1(self.conv1(torch.cat((x_h, x_w), 2))))
        y_h, y_w = torch.split(y, [h, w], 2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_h * a_w

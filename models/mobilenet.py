"""MobileNetV3 blocks for backbone YAMLs (SPEC.md section 3). Channels are not width-scaled."""

import torch.nn as nn

from models.common import YamlSpec
from utils.general import make_divisible


class ConvBNHswish(YamlSpec, nn.Module):
    """MobileNetV3 stem: k x k conv (stride s, no bias) + BN + hardswish. YAML args [c_out, k, s]."""

    yaml_width = False

    def __init__(self, c1, c2, k=3, s=2):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: avg-pool -> Linear(c, c_) -> ReLU -> Linear(c_, c) -> hardsigmoid -> scale,
    c_ = make_divisible(c / 4, 8)."""

    def __init__(self, c):
        super().__init__()
        c_ = make_divisible(c / 4, 8)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c_), nn.ReLU(inplace=True), nn.Linear(c_, c), nn.Hardsigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class InvertedResidual(YamlSpec, nn.Module):
    """MobileNetV3 inverted residual. YAML args [c_out, k, expansion, use_se, use_hardswish, stride].

    1x1 expand + BN + act (skipped when expansion == c_in), k x k depth-wise + BN + act,
    optional SE, 1x1 project + BN; residual when stride 1 and c_in == c_out.
    """

    yaml_width = False

    def __init__(self, c1, c2, k=3, exp=16, use_se=0, use_hs=0, s=1):
        super().__init__()
        assert s in (1, 2), f"InvertedResidual: stride must be 1 or 2, got {s}"
        self.identity = s == 1 and c1 == c2
        act = nn.Hardswish if use_hs else nn.ReLU
        layers = []
        if exp != c1:
            layers += [nn.Conv2d(c1, exp, 1, 1, 0, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, s, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if use_se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, c2, 1, 1, 0, bias=False), nn.BatchNorm2d(c2)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.identity else y

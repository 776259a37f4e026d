"""YOLOv5 building blocks (upstream attribute names, so state_dict keys match) and the
YAML-building convention every block follows (see `YamlSpec`)."""

import math

import torch
import torch.nn as nn

from utils.general import make_divisible


def autopad(k, p=None, d=1):
    """'same' padding for kernel k (int or list) with dilation d, unless p is given."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class YamlSpec:
    """How `parse_model` turns a YAML row `[from, number, Block, args]` into a block.

    Declarative flags (override in a subclass):
      yaml_out     True: args[0] is the output channel count; False: output = input channels.
      yaml_width   True: args[0] is scaled by width_multiple (ceil to a multiple of 8).
      yaml_c_in    True: the input channel count is prepended to args.
      yaml_repeats True: the row's `number` is passed inside as the 3rd argument (c1, c2, n)
                   and the block is built once; False: the block is repeated `number` times.
    For anything else override the classmethod `yaml_build` (Concat and Detect do).
    """

    yaml_out = True
    yaml_width = True
    yaml_c_in = True
    yaml_repeats = False

    @classmethod
    def yaml_build(cls, c_in, args, n, width):
        """(input channels per `from`, YAML args, repeats, width) -> (ctor args, repeats, c_out)."""
        c1 = c_in[0]
        args = list(args)
        if cls.yaml_out:
            c2 = args[0]
            if cls.yaml_width:
                c2 = make_divisible(c2 * width, 8)
            args = args[1:]
        else:
            c2 = c1
        ctor = ([c1, c2] if cls.yaml_out else [c1]) if cls.yaml_c_in else ([c2] if cls.yaml_out else [])
        ctor += args
        if cls.yaml_repeats:
            ctor.insert(2 if cls.yaml_out else 1, n)
            n = 1
        return ctor, n, c2


class Conv(YamlSpec, nn.Module):
    """Conv2d (no bias) + BatchNorm2d (eps 1e-3, momentum 0.03) + SiLU."""

    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        """Forward after `fuse()` folded the BN into the conv."""
        return self.act(self.conv(x))


class DWConv(Conv):
    """Depth-wise convolution (groups = gcd(c1, c2))."""

    def __init__(self, c1, c2, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(YamlSpec, nn.Module):
    """1x1 then 3x3 Conv, residual when shortcut and c1 == c2."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(YamlSpec, nn.Module):
    """CSP bottleneck with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    yaml_repeats = True

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(YamlSpec, nn.Module):
    """Spatial pyramid pooling with parallel max-pools of sizes k."""

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(YamlSpec, nn.Module):
    """Fast SPP: three chained k x k max-pools (equivalent to SPP(k=(5, 9, 13)) for k=5)."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(YamlSpec, nn.Module):
    """Space-to-depth (4 pixel phases stacked on channels) then Conv."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(YamlSpec, nn.Module):
    """Concatenate a list of tensors along `dimension`; output channels = sum of inputs."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    @classmethod
    def yaml_build(cls, c_in, args, n, width):
        return list(args), n, sum(c_in)

    def forward(self, x):
        return torch.cat(x, self.d)


class GhostConv(YamlSpec, nn.Module):
    """Ghost convolution: half the channels from a Conv, half from a cheap 5x5 depth-wise Conv."""

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x):
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(YamlSpec, nn.Module):
    """Ghost bottleneck (k, s): GhostConv -> [DWConv when s=2] -> GhostConv (+ shortcut)."""

    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        c_ = c2 // 2
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1),
            DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False),
        )
        self.shortcut = (
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False)) if s == 2 else nn.Identity()
        )

    def forward(self, x):
        return self.conv(x) + self.shortcut(x)


class C3Ghost(C3):
    """C3 with GhostBottlenecks."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(GhostBottleneck(c_, c_) for _ in range(n)))

"""Detect head, DetectionModel and the YAML parser (blocks resolve by name, no per-class branches).

Usage: python models/yolo.py --cfg yolov5s.yaml --img 640 [--profile]
"""

import argparse
import contextlib
import importlib
import math
import sys
import time
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn
import yaml

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import attention, common, mobilenet  # noqa: E402
from models.common import YamlSpec  # noqa: E402
from models.dry_run_budget import DryRunBudget  # noqa: E402
from utils.cli import UserError  # noqa: E402
from utils.general import LOGGER, ROOT, yaml_load  # noqa: E402
from utils.torch_utils import fuse_conv_and_bn, fuse_sequential, initialize_weights, model_info, scale_img  # noqa: E402

try:
    import thop
except ImportError:  # pragma: no cover
    thop = None

BLOCK_NAMESPACES = (common, attention, mobilenet)  # searched in order, then the registry, torch.nn, dotted paths
BLOCK_REGISTRY = {}
# Bounds for a model dict that came from a file someone else wrote (a weights file's stored YAML).
UNTRUSTED_LIMITS = {"layers": 1000, "repeats": 1000, "modules": 3000, "multiple": 16.0, "int_arg": 100_000,
                    "nc": 100_000}


class ModelConfigError(UserError, ValueError):
    """A model YAML (or a model dict stored in a weights file) that cannot be built; the message says where."""


def register_block(cls):
    """Class decorator: make a block usable from model YAMLs by its class name."""
    BLOCK_REGISTRY[cls.__name__] = cls
    return cls


@register_block
class Detect(YamlSpec, nn.Module):
    """YOLOv5 head: one 1x1 conv per level to na*(nc+5). Train: raw maps; eval: (decoded, raw maps)."""

    stride = None  # set by DetectionModel (tensor [8, 16, 32])

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))  # grid units once built
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    @classmethod
    def yaml_build(cls, c_in, args, n, width):
        args = list(args)
        if isinstance(args[1], int):  # number of anchors per level -> placeholder anchors
            args[1] = [list(range(args[1] * 2))] * len(c_in)
        return args[:2] + [list(c_in)] + args[2:], n, None

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                bf16_autocast = x[i].dtype == torch.bfloat16 and torch.is_autocast_enabled(x[i].device.type)
                p = x[i].float() if bf16_autocast else x[i]  # bf16 autocast: boxes decoded in float32
                grid, anchor_grid = self._grids(i, nx, ny, p)
                xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no))
        return x if self.training else (torch.cat(z, 1), x)

    def _grids(self, i, nx, ny, like):
        """Cell offsets (minus 0.5) and pixel anchors for level i, cached per shape/device/dtype."""
        g = self.grid[i]
        if g.shape[2:4] != (ny, nx) or g.device != like.device or g.dtype != like.dtype:
            d, t = like.device, like.dtype
            yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t),
                                    indexing="ij")
            shape = (1, self.na, ny, nx, 2)
            self.grid[i] = torch.stack((xv, yv), 2).expand(shape) - 0.5
            anchors_px = (self.anchors[i] * self.stride[i]).to(d, t)
            self.anchor_grid[i] = anchors_px.view(1, self.na, 1, 1, 2).expand(shape)
        return self.grid[i], self.anchor_grid[i]


class DetectionModel(nn.Module):
    """YOLOv5 detection model built from a YAML path or dict (see ARCHITECTURE.md for attributes)."""

    def __init__(self, cfg="yolov5s.yaml", ch=3, nc=None, anchors=None, source=None, allow_imports=None,
                 max_params=None):
        """cfg: a model YAML path (the user's own file: its blocks may be dotted import paths) or a dict
        (data, e.g. stored in a weights file: blocks resolve only among known nn.Module classes).
        source names the dict's origin in errors; allow_imports overrides the path/dict default;
        max_params bounds the size of a model rebuilt from a weights file (checked before allocating)."""
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml, self.yaml_file, row_lines = deepcopy(cfg), str(source or "<dict>"), None
        else:
            path = find_model_yaml(cfg)
            self.yaml, self.yaml_file, row_lines = yaml_load(path), path.name, yaml_row_lines(path)
        allow_imports = not isinstance(cfg, dict) if allow_imports is None else bool(allow_imports)
        check_model_dict(self.yaml, self.yaml_file, trusted=allow_imports)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            LOGGER.info(f"Overriding model.yaml nc={self.yaml['nc']} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors)
        self._untrusted = not allow_imports
        self.model, self.save, self.rows = parse_model(deepcopy(self.yaml), ch, self.yaml_file, row_lines,
                                                       allow_imports=allow_imports, max_params=max_params)
        self.nc = self.yaml["nc"]
        self.names = {i: str(i) for i in range(self.nc)}
        self.inplace = self.yaml.get("inplace", True)
        self.stride = torch.tensor([32.0])
        m = self.model[-1]
        if isinstance(m, Detect):
            strides = self._measure_strides(ch)
            m.stride = torch.tensor(strides)
            check_anchor_order(m)
            m.anchors /= m.stride.view(-1, 1, 1)
            self.stride = m.stride
            self._initialize_biases(strides)
        initialize_weights(self)

    def _measure_strides(self, ch, s=256):
        """Strides from an eval-mode, no-grad forward of an s x s zero image; shape errors name the layer."""
        was_training, m = self.training, self.model[-1]
        m.stride = torch.ones(m.nl)  # placeholder so the eval-mode decode can run
        self.eval()
        budget = DryRunBudget(self, lambda msg: ModelConfigError(f"{self.yaml_file}: {msg}"))
        try:
            with torch.no_grad(), (budget if self._untrusted else contextlib.nullcontext()):
                out = self._forward_once(torch.zeros(1, ch, s, s), _diagnose=True)[1]
        finally:
            self.train(was_training)
        m.grid = [torch.empty(0) for _ in out]  # drop grids made by the dry run
        m.anchor_grid = [torch.empty(0) for _ in out]
        return [s / x.shape[-3] for x in out]

    def forward(self, x, augment=False, profile=False, visualize=False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile, visualize)

    def _forward_once(self, x, profile=False, visualize=False, _diagnose=False):
        y, dt = [], []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                self._profile_one_layer(m, x, dt)
            if _diagnose:
                x = self._run_diagnosed(m, x)
            else:
                x = m(x)
            y.append(x if m.i in self.save else None)
        if profile:
            LOGGER.info(f"{sum(dt):10.2f} {'-':>10s} {'-':>10s}  Total")
        return x

    def _run_diagnosed(self, m, x):
        try:
            return m(x)
        except ModelConfigError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            shapes = [tuple(t.shape) for t in x] if isinstance(x, list) else tuple(x.shape)
            raise ModelConfigError(f"{self.rows[m.i]}: forward failed for input shape(s) {shapes} "
                             f"(wrong channel count or `from` index?): {e}") from None

    def _profile_one_layer(self, m, x, dt):
        last = m is self.model[-1]
        inp = x.copy() if last else x
        flops = thop.profile(m, inputs=(inp,), verbose=False)[0] / 1e9 * 2 if thop else 0
        t = time.perf_counter()
        for _ in range(10):
            m(x.copy() if last else x)
        dt.append((time.perf_counter() - t) * 100)
        if m is self.model[0]:
            LOGGER.info(f"{'time (ms)':>10s} {'GFLOPs':>10s} {'params':>10s}  module")
        LOGGER.info(f"{dt[-1]:10.2f} {flops:10.2f} {m.np:10.0f}  {m.type}")

    def _forward_augment(self, x):
        """Test-time augmentation: scales 1, 0.83, 0.67 with flips none, left-right, none."""
        img_size = x.shape[-2:]
        gs = int(self.stride.max())
        outputs = []
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = scale_img(x.flip(fi) if fi else x, si, gs=gs)
            yi = self._forward_once(xi)[0]
            outputs.append(self._descale_pred(yi, fi, si, img_size))
        return torch.cat(self._clip_augmented(outputs), 1), None

    @staticmethod
    def _descale_pred(p, flips, scale, img_size):
        """Undo TTA scaling and flips on decoded predictions (bs, N, no)."""
        xy, wh, rest = p[..., 0:2] / scale, p[..., 2:4] / scale, p[..., 4:]
        x, y = xy[..., 0:1], xy[..., 1:2]
        if flips == 2:
            y = img_size[0] - y
        elif flips == 3:
            x = img_size[1] - x
        return torch.cat((x, y, wh, rest), -1)

    def _clip_augmented(self, y):
        """Drop the largest-object level of the first (full-scale) pass and the smallest of the last pass."""
        nl = self.model[-1].nl
        g = sum(4 ** k for k in range(nl))
        i = (y[0].shape[1] // g) * 1
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * 4 ** (nl - 1)
        y[-1] = y[-1][:, i:]
        return y

    def _initialize_biases(self, strides):
        """obj bias += log(8 / (640/s)^2); class biases += log(0.6 / (nc - 0.99999))."""
        m = self.model[-1]
        for mi, s in zip(m.m, strides):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def fuse(self, verbose=True):
        """Fold every BatchNorm that follows a conv into it (Conv-like blocks, Sequentials, `fuse_bn()` blocks);
        verbose: log it and the fused model's summary."""
        if verbose:
            LOGGER.info("Fusing layers...")
        for m in self.model.modules():
            if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d) \
                    and hasattr(m, "forward_fuse"):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
            elif isinstance(m, nn.Sequential):
                fuse_sequential(m)
            elif hasattr(m, "fuse_bn"):
                m.fuse_bn()
        for layer in self.model:  # keep the per-layer parameter counts true after fusing
            layer.np = sum(p.numel() for p in layer.parameters())
        if verbose:
            self.info()
        return self

    def info(self, verbose=False, img_size=640):
        """Log layers, parameters, gradients and GFLOPs (thop); returns them."""
        return model_info(self, verbose, img_size)

    def layer_roles(self):
        """[{'i', 'type', 'section', 'c_out'}] for every layer (distillation pairing metadata)."""
        n_backbone = len(self.yaml["backbone"])
        return [{"i": m.i, "type": m.type.split(".")[-1], "section": "backbone" if m.i < n_backbone else "head",
                 "c_out": m.c_out} for m in self.model]

    def _apply(self, fn):
        """Keep Detect's stride/grids on the model's device and dtype (.to(), .cuda(), .half())."""
        self = super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect) and m.stride is not None:
            m.stride = fn(m.stride)
            m.grid = list(map(fn, m.grid))
            m.anchor_grid = list(map(fn, m.anchor_grid))
            self.stride = m.stride
        return self


Model = DetectionModel  # upstream alias


def check_anchor_order(m):
    """Flip the anchor levels if their mean area order disagrees with the stride order."""
    if m.anchors.is_meta:
        return
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and da.sign() != ds.sign():
        LOGGER.info("AutoAnchor: reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


def find_model_yaml(cfg):
    """A model YAML path as given, else by name in models/; FileNotFoundError naming it otherwise."""
    p = Path(cfg)
    for c in (p, ROOT / "models" / p.name, ROOT / "models" / p.with_suffix(".yaml").name):
        if c.is_file():
            return c
    raise FileNotFoundError(f"model YAML {cfg!s} not found (looked as given and in {ROOT / 'models'})")


def yaml_row_lines(path):
    """{('backbone'|'head', k): 1-based line number} of each layer row in a model YAML file."""
    try:
        root = yaml.compose(Path(path).read_text())
    except yaml.YAMLError:
        return None
    lines = {}
    for key_node, val_node in getattr(root, "value", []):
        if key_node.value in ("backbone", "head") and isinstance(val_node, yaml.SequenceNode):
            for k, row in enumerate(val_node.value):
                lines[(key_node.value, k)] = row.start_mark.line + 1
    return lines


def check_model_dict(d, source, trusted=True):
    """Clear errors for a model dict without the keys the parser needs; bounds on an untrusted one."""
    if not isinstance(d, dict):
        raise ModelConfigError(f"{source}: a model YAML must be a mapping, got {type(d).__name__}")
    missing = [k for k in ("nc", "backbone", "head") if k not in d]
    if missing:
        raise ModelConfigError(f"{source}: model YAML lacks key(s) {missing}")
    for section in ("backbone", "head"):
        if not isinstance(d[section], (list, tuple)):
            raise ModelConfigError(f"{source}: '{section}' must be a list of [from, number, module, args] rows")
        for k, row in enumerate(d[section]):
            if not (isinstance(row, (list, tuple)) and len(row) == 4):
                raise ModelConfigError(f"{source}: {section} row {k} must be [from, number, module, args], got {row!r}")
            if not (_is_int(row[1]) and isinstance(row[3], (list, tuple))):
                raise ModelConfigError(f"{source}: {section} row {k}: number must be an int and args a list, got {row!r}")
    if not trusted:
        _check_untrusted_bounds(d, source)


def _is_int(v):
    """An int that is not a bool (YAML true/false load as bools, which are ints to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _int_within(v, low, high):
    return _is_int(v) and low <= v <= high


def _ints_in(x, depth=0):
    """Every int inside nested lists/tuples (depth-limited)."""
    if depth > 8:
        raise ModelConfigError("nested deeper than 8 levels")
    if _is_int(x):
        return [x]
    if isinstance(x, (list, tuple)):
        return [i for v in x for i in _ints_in(v, depth + 1)]
    return []


def _check_untrusted_bounds(d, source):
    """Sizes a stored model dict may not exceed (so a crafted file cannot make the parser allocate without end)."""
    lim = UNTRUSTED_LIMITS
    rows = list(d["backbone"]) + list(d["head"])
    problems = []
    if len(rows) > lim["layers"]:
        problems.append(f"{len(rows)} layers (limit {lim['layers']})")
    for key in ("depth_multiple", "width_multiple"):
        v = d.get(key, 1.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= lim["multiple"]:
            problems.append(f"{key}={v!r} (must be a number in (0, {lim['multiple']:g}])")
    nc = d.get("nc")
    if not _int_within(nc, 1, lim["nc"]):
        problems.append(f"nc={nc!r} (must be an int in 1..{lim['nc']})")
    gd = d.get("depth_multiple", 1.0)
    if isinstance(gd, (int, float)) and 0 < gd <= lim["multiple"]:
        blocks = sum(max(round(n * gd), 1) if _is_int(n) and n > 1 else 1 for _, n, _, _ in rows)
        if blocks > lim["modules"]:
            problems.append(f"{blocks} blocks after depth_multiple (limit {lim['modules']})")
    try:
        for k, (_, n, _, args) in enumerate(rows):
            if not 0 < n <= lim["repeats"]:
                problems.append(f"layer {k}: number={n} (limit 1..{lim['repeats']})")
            big = [i for i in _ints_in(args) if abs(i) > lim["int_arg"]]
            if big:
                problems.append(f"layer {k}: argument {big[0]} (limit {lim['int_arg']})")
        big = [i for i in _ints_in(d.get("anchors") or []) if abs(i) > lim["int_arg"]]
        if big:
            problems.append(f"anchors: {big[0]} (limit {lim['int_arg']})")
    except ModelConfigError as e:
        problems.append(str(e))
    ch = d.get("ch", 3)
    if not _int_within(ch, 1, 64):
        problems.append(f"ch={ch!r} (must be an int in 1..64)")
    if problems:
        raise ModelConfigError(f"{source}: stored model YAML is out of bounds: {'; '.join(problems[:5])}")


def _is_block_class(obj):
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _known_block(name):
    """A block class by plain name: project namespaces, @register_block, torch.nn; None if unknown."""
    for ns in BLOCK_NAMESPACES:
        if _is_block_class(getattr(ns, name, None)):
            return getattr(ns, name)
    if name in BLOCK_REGISTRY:
        return BLOCK_REGISTRY[name]
    return getattr(nn, name) if _is_block_class(getattr(nn, name, None)) else None


_CANONICAL_PREFIXES = ("nn.", "torch.nn.", "models.common.", "models.attention.", "models.mobilenet.", "models.yolo.")


def resolve_block(name, allow_imports=False):
    """Block class from its YAML name; only ``nn.Module`` subclasses, never a function or another class.

    Known names (project blocks, ``@register_block`` classes, ``torch.nn``, also spelled ``nn.X`` or
    ``models.common.X``) always resolve. Any other dotted path is imported only when allow_imports is
    True, i.e. for the user's own --cfg file: a YAML stored in a weights file never imports anything.
    Raises KeyError with the reason.
    """
    if _is_block_class(name):
        return name
    if not isinstance(name, str) or not name:
        raise KeyError(f"module name must be a non-empty string, got {name!r}")
    short = next((name[len(p):] for p in _CANONICAL_PREFIXES if name.startswith(p)), name)
    cls = _known_block(short) if "." not in short else None
    if cls is not None:
        return cls
    searched = "models.common, models.attention, models.mobilenet, @register_block classes and torch.nn"
    if "." not in name:
        raise KeyError(f"unknown module {name!r} (searched {searched})")
    if not allow_imports:
        raise KeyError(f"module {name!r} is not a known block, and a model YAML stored in a weights file "
                       f"never imports anything (searched {searched})")
    mod, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise KeyError(f"cannot import module {name!r}: {e}") from None
    if not _is_block_class(cls):
        raise KeyError(f"{name!r} is a {type(cls).__name__}, not an nn.Module class: model YAMLs may only "
                       f"name nn.Module classes")
    return cls


def _yaml_build(cls, c_in, args, n, width):
    """The class's own YAML convention; plain torch.nn modules are channel-preserving with args as written."""
    if hasattr(cls, "yaml_build"):
        return cls.yaml_build(c_in, args, n, width)
    return list(args), n, c_in[0]


def _layer_params(cls, ctor, n):
    """Parameter count of n blocks cls(*ctor), measured on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in cls(*ctor).parameters()) * n


def parse_model(d, ch, source="<dict>", row_lines=None, allow_imports=False, max_params=None):
    """Model dict -> (nn.Sequential of layers, sorted save list, per-layer row descriptions).

    allow_imports: resolve dotted module paths by importing them (only for the user's own --cfg file).
    max_params: refuse, before allocating it, a layer that takes the model past this many parameters.
    """
    nc, gd, gw = d["nc"], d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    anchors = d.get("anchors")
    names = {"nc": nc, "anchors": anchors, "None": None}
    LOGGER.debug(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    rows = [("backbone", k, r) for k, r in enumerate(d["backbone"])] + [("head", k, r) for k, r in enumerate(d["head"])]
    layers, save, chs, descriptions, n_params = [], [], [], [], 0
    for i, (section, k, (f, n, mname, args)) in enumerate(rows):
        line = f" (line {row_lines[(section, k)]})" if row_lines and (section, k) in row_lines else ""
        where = f"{source}: layer {i} = {section} row {k}{line} {[f, n, mname, args]}"
        descriptions.append(where)
        froms = [f] if isinstance(f, int) else list(f)
        c_in = []
        for x in froms:
            if not isinstance(x, int) or not (-i <= x < i or (x == -1 and i == 0)):
                raise ModelConfigError(f"{where}: `from` index {x!r} does not name an earlier layer "
                                       f"(valid: -{i}..{i - 1})")
            c_in.append(ch if i == 0 else chs[x])
        try:
            cls = resolve_block(mname, allow_imports=allow_imports)
        except KeyError as e:
            raise ModelConfigError(f"{where}: {e.args[0]}") from None
        args = [names.get(a, a) if isinstance(a, str) else a for a in args]
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        try:
            ctor, n, c_out = _yaml_build(cls, c_in, args, n, gw)
            if max_params is not None:  # size it on the meta device first: nothing is allocated
                n_params += _layer_params(cls, ctor, n)
                if n_params > max_params:
                    raise ModelConfigError(f"{where}: the model grows past {max_params:,} parameters here, more "
                                           f"than its weights file holds")
            m_ = nn.Sequential(*(cls(*ctor) for _ in range(n))) if n > 1 else cls(*ctor)
        except ModelConfigError:
            raise
        except Exception as e:
            raise ModelConfigError(f"{where}: cannot build {mname} with input channels {c_in}: {e}") from None
        m_.i, m_.f, m_.type = i, f, f"{cls.__module__}.{cls.__qualname__}"
        m_.np, m_.c_out = sum(p.numel() for p in m_.parameters()), c_out
        LOGGER.debug(f"{i:>3}{f!s:>18}{n_:>3}{m_.np:10.0f}  {m_.type:<40}{args!s:<30}")
        save.extend(x % i for x in froms if x != -1)
        layers.append(m_)
        chs.append(c_out)
    return nn.Sequential(*layers), sorted(set(save)), descriptions


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build a model YAML and print its summary")
    parser.add_argument("--cfg", type=str, default="yolov5s.yaml", help="model.yaml")
    parser.add_argument("--nc", type=int, default=None, help="override the class count")
    parser.add_argument("--img", "--img-size", type=int, default=640, help="image size for GFLOPs / profiling")
    parser.add_argument("--profile", action="store_true", help="profile each layer")
    parser.add_argument("--verbose", action="store_true", help="list every parameter")
    opt = parser.parse_args(argv)
    model = DetectionModel(opt.cfg, nc=opt.nc)
    for m in model.model:
        LOGGER.info(f"{m.i:>3}{m.f!s:>18}{m.np:10.0f}  {m.type}")
    model.info(verbose=opt.verbose, img_size=opt.img)
    if opt.profile:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.yaml["ch"], opt.img, opt.img), profile=True)
    return model


if __name__ == "__main__":
    from models.yolo import main as canonical_main  # one copy of the classes (models.yolo.Detect, not __main__.Detect)

    from utils.cli import run_cli

    run_cli(canonical_main, lambda argv: argv, "models/yolo.py")

"""PyTorch helpers: device selection, timing, Conv+BN folding, model summary (thop GFLOPs)."""

import math
import time
from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.general import LOGGER

try:
    import thop  # FLOPs counter
except ImportError:  # pragma: no cover - optional
    thop = None


def select_device(device="", batch_size=0):
    """'' (first GPU if any, else CPU), 'cpu', '0' or '0,1' -> torch.device; clear error if CUDA is absent."""
    spec = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if spec in ("cpu", "mps"):
        if spec == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        LOGGER.info(f"device: CPU ({torch.get_num_threads()} threads)")
        return torch.device("cpu")
    if spec == "":
        if torch.cuda.is_available():
            return _cuda_device([0], batch_size)
        LOGGER.info(f"device: CPU ({torch.get_num_threads()} threads)")
        return torch.device("cpu")
    try:
        ids = [int(x) for x in spec.split(",") if x.strip() != ""]
    except ValueError as e:
        raise ValueError(f"invalid --device {device!r}: use '', 'cpu', '0' or '0,1'") from e
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} asks for CUDA but torch.cuda.is_available() is False; use --device cpu")
    n = torch.cuda.device_count()
    bad = [i for i in ids if i >= n]
    if bad:
        raise ValueError(f"--device {device!r}: CUDA device(s) {bad} do not exist ({n} visible)")
    return _cuda_device(ids, batch_size)


def _cuda_device(ids, batch_size):
    if len(ids) > 1 and batch_size > 0 and batch_size % len(ids):
        raise ValueError(f"batch size {batch_size} is not a multiple of the GPU count {len(ids)}")
    for i in ids:
        p = torch.cuda.get_device_properties(i)
        LOGGER.info(f"device: CUDA:{i} ({p.name}, {p.total_memory / 1024 ** 2:.0f}MiB)")
    return torch.device(f"cuda:{ids[0]}")


def smart_inference_mode(fn=None):
    """Decorator: torch.inference_mode when available, else torch.no_grad."""
    mode = torch.inference_mode if hasattr(torch, "inference_mode") else torch.no_grad
    return mode()(fn) if fn is not None else mode()


def time_sync():
    """time.time() after synchronising CUDA (if used)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


class Timer:
    """Accumulating wall-clock timer (`with timer:` adds to timer.t, seconds); synchronises CUDA
    around the block so that GPU work is counted."""

    def __init__(self, device=None):
        self.t, self.cuda = 0.0, device is not None and torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *args):
        if self.cuda:
            torch.cuda.synchronize()
        self.t += time.perf_counter() - self.start


@torch.no_grad()
def fuse_conv_and_bn(conv, bn):
    """Return a Conv2d with bias whose output equals bn(conv(x)) in eval mode (plain leaf parameters)."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
    ).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b_conv = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
    fused.bias.copy_((b_conv - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_sequential(seq):
    """Fold each Conv2d directly followed by BatchNorm2d inside an nn.Sequential (BN -> Identity)."""
    for j in range(len(seq) - 1):
        if isinstance(seq[j], nn.Conv2d) and isinstance(seq[j + 1], nn.BatchNorm2d):
            with torch.no_grad():
                seq[j] = fuse_conv_and_bn(seq[j], seq[j + 1])
            seq[j + 1] = nn.Identity()


@torch.no_grad()
def fused_copy(model):
    """A copy of model with BatchNorm folded into its convs (same eval outputs, faster), for evaluation while
    model trains on; a model without fuse() is returned as it is."""
    if not hasattr(model, "fuse"):
        return model
    return deepcopy(model).fuse(verbose=False)


def model_info(model, verbose=False, imgsz=640):
    """Log layers, parameters, gradients and GFLOPs at imgsz (thop MACs x 2); returns the numbers."""
    n_p = sum(p.numel() for p in model.parameters())
    n_g = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            LOGGER.info(f"{i:5g} {name:>40} {p.requires_grad!s:>9} {p.numel():12g} {list(p.shape)!s:>20} "
                        f"{p.mean():10.3g} {p.std() if p.numel() > 1 else 0:10.3g}")
    gflops = model_flops(model, imgsz)
    fs = f", {gflops:.1f} GFLOPs" if gflops is not None else ""
    n_layers = len(list(model.modules()))
    name = type(model).__name__.replace("DetectionModel", "Model")
    LOGGER.info(f"{name} summary: {n_layers} layers, {n_p} parameters, {n_g} gradients{fs}")
    return n_layers, n_p, n_g, gflops


def model_flops(model, imgsz=640):
    """GFLOPs of one forward at imgsz (int or [h, w]), via thop on a stride-sized image; None without thop."""
    if thop is None:
        return None
    try:
        p = next(model.parameters())
        stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
        im = torch.zeros((1, getattr(model, "yaml", {}).get("ch", 3), stride, stride), device=p.device)
        macs = thop.profile(deepcopy(model), inputs=(im,), verbose=False)[0]
        imgsz = imgsz if isinstance(imgsz, (list, tuple)) else [imgsz, imgsz]
        return macs / 1e9 * 2 * imgsz[0] / stride * imgsz[1] / stride
    except Exception as e:  # thop can fail on exotic modules; a summary must not
        LOGGER.warning(f"WARNING: GFLOPs not computed ({e})")
        return None


def is_parallel(model):
    """True for DataParallel / DistributedDataParallel wrappers."""
    return type(model) in (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)


def de_parallel(model):
    """The bare model inside a DP/DDP wrapper."""
    return model.module if is_parallel(model) else model


def initialize_weights(model):
    """Upstream init: BN eps 1e-3 momentum 0.03, activations in place (conv weights keep PyTorch's init)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def scale_img(img, ratio=1.0, same_shape=False, gs=32):
    """Resize a (b, c, h, w) batch by ratio; pad (value 0.447) to a gs multiple unless same_shape."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)

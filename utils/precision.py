"""Training precision chosen by what the machine can do: ``--precision auto|fp32|bf16|fp16``.

CPUs differ by two orders of magnitude in bfloat16: with AVX-512 BF16 / AMX a bf16 matmul runs ~2.7x
faster than fp32, while on AVX2-only CPUs PyTorch emulates it ~300x slower. ``auto`` therefore picks
bf16 autocast on a CPU only when its flags claim bf16 support *and* a probe of a few milliseconds
confirms that it is faster here; otherwise fp32. On CUDA, ``auto`` is fp16 AMP with GradScaler, as
upstream YOLOv5 trains.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.cli import OptionError

CHOICES = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
SPEED_CPU_FLAGS = (*BF16_CPU_FLAGS, "avx512f", "avx2")  # named beside speed figures
PIN_ENV = "YOLOV5KD_PRECISION"
MIN_PROBE_SPEEDUP = 1.15  # bf16 must beat fp32 by this much in the probe to be chosen


@dataclass(frozen=True)
class Precision:
    """The chosen training precision and why (logged once)."""

    name: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def autocast_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def autocast(self):
        return self.name != "fp32"

    @property
    def grad_scaler(self):
        """float16 needs loss scaling (GradScaler); bfloat16 has fp32's exponent range and does not."""
        return self.name == "fp16"


def _cpuinfo_value(cpuinfo, matches):
    """The value (after ':') of the first /proc/cpuinfo line for which matches(line) holds; '' where there is
    none or the file is unreadable (e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="ignore")
    except OSError:
        return ""
    return next((line.split(":", 1)[1] for line in text.splitlines() if matches(line) and ":" in line), "")


def cpu_flags(cpuinfo=Path("/proc/cpuinfo")):
    """The CPU's feature flags (empty where /proc/cpuinfo is unreadable, e.g. not Linux)."""
    return set(_cpuinfo_value(cpuinfo, lambda line: line.startswith(("flags", "Features"))).split())


def cpu_name(cpuinfo=Path("/proc/cpuinfo")):
    """The CPU's model name ('' where /proc/cpuinfo is unreadable), for speed figures and reports."""
    return _cpuinfo_value(cpuinfo, lambda line: line.lower().startswith("model name")).strip()


def cpu_description():
    """'<model name> (flags avx512_bf16, avx2, ...)': the CPU and the flags that decide its speed, as every
    reported speed figure names them."""
    flags = cpu_flags()
    have = [f for f in SPEED_CPU_FLAGS if f in flags]
    return f"{cpu_name() or 'unknown CPU'} ({'flags ' + ', '.join(have) if have else 'no AVX2/AVX-512'})"


def probe_bf16_speedup(size=128, repeats=4, rounds=5):
    """fp32 time / bf16-autocast time of a small conv + matmul on this CPU (a few ms when bf16 is native).

    The two are timed in alternation, best of `rounds` each, so that other work on the machine slows both
    alike instead of deciding the ratio."""
    x = torch.randn(4, 32, size // 4, size // 4)
    w = torch.randn(64, 32, 3, 3)
    a, b = torch.randn(size, size), torch.randn(size, size)

    def once(dtype):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            t = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.conv2d(x, w, padding=1)
                a @ b
            return time.perf_counter() - t

    once(None), once(torch.bfloat16)  # warm-up
    best = {None: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(rounds):
        for dtype in best:
            best[dtype] = min(best[dtype], once(dtype))
    return best[None] / max(best[torch.bfloat16], 1e-9)


def choose_precision(requested="auto", device_type="cpu", flags=None, probe=probe_bf16_speedup):
    """Precision for ``requested`` on ``device_type`` ('cpu' or 'cuda'), with the reason for the log."""
    if requested not in CHOICES:
        raise OptionError(f"--precision {requested!r}: choose one of {', '.join(CHOICES)}")
    if device_type == "cuda":
        if requested in ("auto", "fp16"):
            return Precision("fp16", "CUDA: float16 AMP with GradScaler (upstream's default)")
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            raise OptionError("--precision bf16: this GPU has no bfloat16 support; use fp16 or auto")
        return Precision(requested, f"CUDA: {requested} as requested")
    if requested == "fp16":
        raise OptionError("--precision fp16 is for CUDA; on a CPU use auto, bf16 or fp32")
    flags = cpu_flags() if flags is None else set(flags)
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if requested == "fp32":
        return Precision("fp32", "float32 as requested")
    if requested == "bf16":
        why = f"CPU has {'/'.join(native)}" if native else "this CPU has no avx512_bf16/amx_bf16: expect it much slower"
        return Precision("bf16", f"bfloat16 autocast as requested ({why})")
    if not native:
        return Precision("fp32", "CPU without avx512_bf16/amx_bf16: bfloat16 would be emulated, far slower")
    speedup = probe()
    if speedup < MIN_PROBE_SPEEDUP:
        return Precision("fp32", f"CPU has {'/'.join(native)} but bfloat16 measured only {speedup:.2f}x "
                                 f"fp32's speed here")
    return Precision("bf16", f"CPU has {'/'.join(native)} and bfloat16 measured {speedup:.2f}x fp32's speed")


def requested_precision(opt):
    """--precision, with the older shorthands (--bf16, --fp32); 'auto' may be pinned for every run on a
    machine with the environment variable YOLOV5KD_PRECISION (e.g. fp32 for reproducible test runs)."""
    if getattr(opt, "bf16", False):
        return "bf16"
    if getattr(opt, "fp32", False):
        return "fp32"
    requested = getattr(opt, "precision", None) or "auto"
    return os.environ.get(PIN_ENV, "").strip() or requested if requested == "auto" else requested

"""Per-layer model profiler: parameters, FLOPs (thop), bytes moved, arithmetic intensity, latency, roofline.

Bytes of a layer = its weights (floating parameters and buffers) + the input activations it reads + the
output activations it writes, at the tensors' dtype (i.e. the profiling dtype). `kernel_bytes` / `kernels`
repeat that count per leaf module (conv, BN, activation, pool, ...) inside the layer: the traffic of running
the layer kernel by kernel without caching, which is what hurts blocks made of many small, cheap ops.
"""

import statistics
import time
from copy import deepcopy

import torch
import torch.nn as nn

from utils.general import LOGGER

try:
    import thop
except ImportError:  # pragma: no cover - optional
    thop = None

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- counting helpers
def flat_tensors(obj):
    """Every tensor inside a tensor / (nested) list or tuple, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in flat_tensors(o)]
    return []


def tensor_bytes(obj):
    """Bytes of all tensors in obj (numel x element size)."""
    return sum(t.numel() * t.element_size() for t in flat_tensors(obj))


def weight_bytes(module, recurse=True):
    """Bytes of a module's floating-point parameters and buffers (what a forward reads besides activations)."""
    tensors = list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
    return sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point())


def layer_flops(layer, inputs):
    """FLOPs of one forward of `layer` on `inputs` (thop MACs x 2, on a copy so the layer stays clean)."""
    if thop is None:
        raise ImportError("utils/profiler.py: FLOPs need the `thop` package (pip install thop)")
    macs = thop.profile(deepcopy(layer), inputs=(_fresh(inputs),), verbose=False)[0]
    return float(macs) * 2


def is_depthwise(conv):
    """True for a grouped conv with one input channel per group (depth-wise)."""
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def layer_tags(layer):
    """'dw' if the layer holds a depth-wise conv, 'se' if it holds a global-pool attention, joined by '+'."""
    tags = []
    if any(is_depthwise(m) for m in layer.modules()):
        tags.append("dw")
    if any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for m in layer.modules()):
        tags.append("se")
    return "+".join(tags)


def _fresh(inputs):
    """A new list for list inputs (Detect writes into the list it gets), the tensor otherwise."""
    return list(inputs) if isinstance(inputs, list) else inputs


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, repeats=10, warmup=2):
    """Median wall time (s) of fn() over `repeats` calls after `warmup` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def batch1_latency_ms(fn, img, repeats=50, warmup=10, channels_last=False):
    """Median ms of fn(x) on one zero CPU image (1, 3, img, img) under inference mode: the deploy latency."""
    x = torch.zeros(1, 3, img, img)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with torch.inference_mode():
        return round(median_time(lambda: fn(x), torch.device("cpu"), repeats=repeats, warmup=warmup) * 1e3, 2)


# ----------------------------------------------------------------------------- recording one forward
def record_layers(model, x):
    """Run model(x) once with hooks; per layer of model.model: inputs, output, leaf-kernel count and bytes."""
    layers = list(model.model)
    recs = [{"inputs": None, "output": None, "kernels": 0, "kernel_bytes": 0} for _ in layers]
    current = [None]  # index of the layer running now (leaves such as Conv's shared SiLU belong to many layers)

    def pre(m, args):
        current[0] = m.i
        recs[m.i]["inputs"] = _fresh(args[0])

    def post(m, args, out):
        recs[m.i]["output"] = out
        current[0] = None

    def leaf(m, args, out):
        if current[0] is not None:
            r = recs[current[0]]
            r["kernels"] += 1
            r["kernel_bytes"] += weight_bytes(m, recurse=False) + tensor_bytes(args) + tensor_bytes(out)

    handles = []
    for layer in layers:
        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    leaves = {id(m): m for layer in layers for m in layer.modules() if not list(m.children())}
    handles += [m.register_forward_hook(leaf) for m in leaves.values()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return recs


# ----------------------------------------------------------------------------- profiling
def profile_model(model, imgsz=640, batch=1, device="cpu", dtype="fp32", repeats=10, warmup=2, timing=True):
    """Profile a DetectionModel layer by layer. Returns {'layers': [row per layer], 'total': {...}}.

    The model is used as given (call .fuse()/.eval() first for inference numbers) but moved to device/dtype.
    Row keys: i, f, type, tags, params, flops, gflops, weight_bytes, in_bytes, out_bytes, bytes, intensity,
    kernels, kernel_bytes, latency_ms, achieved_gflops, in_shape, out_shape.
    """
    if dtype not in DTYPES:
        raise ValueError(f"utils/profiler.py: dtype {dtype!r} not one of {list(DTYPES)}")
    device = torch.device(device)
    model = model.to(device=device, dtype=DTYPES[dtype]).requires_grad_(False)
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    ch = getattr(model, "yaml", {}).get("ch", 3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, ch, *hw), generator=g).to(device=device, dtype=DTYPES[dtype])
    recs = record_layers(model, x)
    rows = []
    with torch.no_grad():
        for layer, rec in zip(model.model, recs):
            rows.append(_layer_row(layer, rec, device, repeats, warmup, timing))
        model_s = median_time(lambda: model(x), device, repeats, warmup) if timing else None
    return {"layers": rows, "total": _totals(model, rows, model_s),
            "img": list(hw), "batch": batch, "dtype": dtype, "device": str(device)}


def _layer_row(layer, rec, device, repeats, warmup, timing):
    inputs, out = rec["inputs"], rec["output"]
    flops = layer_flops(layer, inputs)
    wb, ib, ob = weight_bytes(layer), tensor_bytes(inputs), tensor_bytes(out)
    total_b = wb + ib + ob
    sec = median_time(lambda: layer(_fresh(inputs)), device, repeats, warmup) if timing else None
    shape = lambda o: [list(t.shape) for t in flat_tensors(o)]  # noqa: E731
    return {"i": layer.i, "f": layer.f, "type": layer.type.split(".")[-1], "tags": layer_tags(layer),
            "params": sum(p.numel() for p in layer.parameters()), "flops": flops, "gflops": flops / 1e9,
            "weight_bytes": wb, "in_bytes": ib, "out_bytes": ob, "bytes": total_b,
            "intensity": flops / total_b if total_b else 0.0,
            "kernels": rec["kernels"], "kernel_bytes": rec["kernel_bytes"],
            "kernel_intensity": flops / rec["kernel_bytes"] if rec["kernel_bytes"] else 0.0,
            "latency_ms": sec * 1e3 if sec is not None else None,
            "achieved_gflops": flops / sec / 1e9 if sec else None,
            "in_shape": shape(inputs), "out_shape": shape(out)}


def _totals(model, rows, model_s):
    flops = sum(r["flops"] for r in rows)
    nbytes = sum(r["bytes"] for r in rows)
    layer_ms = [r["latency_ms"] for r in rows]
    return {"params": sum(p.numel() for p in model.parameters()), "layer_params": sum(r["params"] for r in rows),
            "flops": flops, "gflops": flops / 1e9, "bytes": nbytes, "intensity": flops / nbytes if nbytes else 0.0,
            "kernels": sum(r["kernels"] for r in rows), "kernel_bytes": sum(r["kernel_bytes"] for r in rows),
            "latency_ms": model_s * 1e3 if model_s is not None else None,
            "sum_layer_latency_ms": sum(layer_ms) if None not in layer_ms else None,
            "achieved_gflops": flops / model_s / 1e9 if model_s else None}


# ----------------------------------------------------------------------------- device peaks
def measure_peak_gflops(device="cpu", dtype="fp32", n=None, repeats=5):
    """Matmul throughput (GFLOP/s) of an n x n x n product at dtype: the compute roof."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024 if dtype == "fp32" else 512)
    a = torch.randn(n, n, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(DTYPES[dtype])
    sec = median_time(lambda: a @ b, device, repeats, warmup=2)
    return 2 * n ** 3 / sec / 1e9


def measure_bandwidth_gbps(device="cpu", mbytes=None, repeats=5):
    """Copy bandwidth (GB/s, bytes read + written) of a large tensor copy: the memory roof."""
    device = torch.device(device)
    mbytes = mbytes or (1024 if device.type == "cuda" else 128)
    n = int(mbytes * 2 ** 20) // 4
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)
    sec = median_time(lambda: dst.copy_(src), device, repeats, warmup=2)
    return 2 * n * 4 / sec / 1e9


# ----------------------------------------------------------------------------- interpretation
def group_stats(result, ridge=None):
    """Totals for the dw/se layers vs the rest: flops, bytes, intensity, share of layer time, kernels."""
    out = {}
    for name, keep in (("dw_se", lambda r: r["tags"]), ("other", lambda r: not r["tags"])):
        rows = [r for r in result["layers"] if keep(r)]
        f, b = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
        kb, ms = sum(r["kernel_bytes"] for r in rows), sum(r["latency_ms"] or 0 for r in rows)
        out[name] = {"layers": len(rows), "flops": f, "bytes": b, "intensity": f / b if b else 0.0,
                     "kernel_intensity": f / kb if kb else 0.0, "achieved_gflops": f / ms / 1e6 if ms else 0.0,
                     "latency_ms": ms, "kernels": sum(r["kernels"] for r in rows)}
    all_ms = sum(r["latency_ms"] or 0 for r in result["layers"]) or 1.0
    for g in out.values():
        g["time_share"] = g["latency_ms"] / all_ms
    if ridge:
        mem_ms = sum(r["latency_ms"] or 0 for r in result["layers"] if r["intensity"] < ridge)
        out["memory_bound_time_share"] = mem_ms / all_ms
    return out


def explain_puzzle(named_results, ridge=None):
    """Lines explaining each pair where a model with fewer FLOPs is not proportionally faster (the numbers
    that make it so: achieved GFLOP/s, intensity, kernel count, and the depth-wise/SE share when present)."""
    lines = []
    items = [(n, r) for n, r in named_results if r["total"]["latency_ms"]]
    for na, a in items:
        for nb, b in items:
            ta, tb = a["total"], b["total"]
            if na == nb or ta["gflops"] >= tb["gflops"]:
                continue
            flop_ratio, time_ratio = tb["gflops"] / ta["gflops"], tb["latency_ms"] / ta["latency_ms"]
            if time_ratio >= flop_ratio:  # at least as much faster as it is cheaper: no puzzle
                continue
            ga = group_stats(a, ridge)
            why = [f"it achieves {ta['achieved_gflops']:.1f} vs {tb['achieved_gflops']:.1f} GFLOP/s",
                   f"intensity {ta['intensity']:.1f} vs {tb['intensity']:.1f} FLOP/B"
                   + (f" (ridge {ridge:.1f})" if ridge else ""),
                   f"{ta['kernels']} vs {tb['kernels']} kernels ({ta['gflops'] * 1e3 / max(ta['kernels'], 1):.1f} vs "
                   f"{tb['gflops'] * 1e3 / max(tb['kernels'], 1):.1f} MFLOP per kernel)"]
            dw = ga["dw_se"]
            if dw["layers"]:
                why.append(f"its {dw['layers']} depthwise/SE layers run at {dw['intensity']:.1f} FLOP/B "
                           f"({dw['kernel_intensity']:.1f} kernel by kernel; other layers {ga['other']['intensity']:.1f}/"
                           f"{ga['other']['kernel_intensity']:.1f}), achieve {dw['achieved_gflops']:.1f} vs "
                           f"{ga['other']['achieved_gflops']:.1f} GFLOP/s and take {100 * dw['time_share']:.0f}% of its layer time for "
                           f"{100 * dw['flops'] / max(ta['flops'], 1):.0f}% of its FLOPs")
            lines.append(f"{na} has {flop_ratio:.1f}x fewer GFLOPs than {nb} ({ta['gflops']:.2f} vs {tb['gflops']:.2f}) "
                         f"but is only {time_ratio:.2f}x as fast ({ta['latency_ms']:.1f} vs {tb['latency_ms']:.1f} ms): "
                         + "; ".join(why) + ".")
    return lines


def summary_line(name, result, ridge=None):
    """One line: where a single model spends time relative to the roofline."""
    t, g = result["total"], group_stats(result, ridge)
    s = (f"{name}: {t['gflops']:.2f} GFLOPs, {t['bytes'] / 1e6:.1f} MB moved, intensity {t['intensity']:.1f} FLOP/B, "
         f"{t['kernels']} kernels")
    if t["latency_ms"]:
        s += f", {t['latency_ms']:.2f} ms -> {t['achieved_gflops']:.1f} GFLOP/s achieved"
    if g["dw_se"]["layers"]:
        d, o = g["dw_se"], g["other"]
        s += (f"; depthwise/SE layers: {d['intensity']:.1f} FLOP/B ({d['kernel_intensity']:.1f} kernel by kernel, "
              f"other layers {o['intensity']:.1f}/{o['kernel_intensity']:.1f}), {d['kernels']} kernels, "
              f"{d['achieved_gflops']:.1f} vs {o['achieved_gflops']:.1f} GFLOP/s, "
              f"{100 * d['time_share']:.0f}% of layer time for {100 * d['flops'] / max(t['flops'], 1):.0f}% of FLOPs")
    if ridge and "memory_bound_time_share" in g:
        s += f"; {100 * g['memory_bound_time_share']:.0f}% of layer time below the ridge ({ridge:.1f} FLOP/B)"
    return s


def log_table(result, log=LOGGER.info):
    """Print the per-layer table and the total row."""
    log(f"{'i':>3} {'type':<18}{'tags':<6}{'params':>10}{'GFLOPs':>9}{'MB':>9}{'FLOP/B':>8}{'kern':>5}{'kFLOP/B':>8}"
        f"{'ms':>9}{'GFLOP/s':>9}  out")
    for r in result["layers"]:
        ms = f"{r['latency_ms']:9.3f}" if r["latency_ms"] is not None else f"{'-':>9}"
        ach = f"{r['achieved_gflops']:9.1f}" if r["achieved_gflops"] else f"{'-':>9}"
        log(f"{r['i']:>3} {r['type']:<18}{r['tags']:<6}{r['params']:>10}{r['gflops']:9.3f}{r['bytes'] / 1e6:9.2f}"
            f"{r['intensity']:8.1f}{r['kernels']:>5}{r['kernel_intensity']:8.1f}{ms}{ach}  {r['out_shape'][0] if r['out_shape'] else ''}")
    t = result["total"]
    ms = f"{t['latency_ms']:9.3f}" if t["latency_ms"] is not None else f"{'-':>9}"
    ach = f"{t['achieved_gflops']:9.1f}" if t["achieved_gflops"] else f"{'-':>9}"
    log(f"{'':>3} {'total':<24}{t['params']:>10}{t['gflops']:9.3f}{t['bytes'] / 1e6:9.2f}{t['intensity']:8.1f}"
        f"{t['kernels']:>5}{t['flops'] / max(t['kernel_bytes'], 1):8.1f}{ms}{ach}  (sum of layer times {t['sum_layer_latency_ms'] or 0:.3f} ms)")


# ----------------------------------------------------------------------------- roofline plot
def plot_roofline(named_results, peak_gflops, peak_gbps, path, title="Roofline"):
    """Log-log roofline PNG: the memory and compute roofs, each layer at (intensity, achieved GFLOP/s),
    each whole model as a star. named_results: [(name, profile_model result)]. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ridge = peak_gflops / peak_gbps
    pts = [r for _, res in named_results for r in res["layers"] if r["achieved_gflops"] and r["intensity"] > 0]
    xs = [r["intensity"] for r in pts] + [ridge]
    lo, hi = min(xs) / 3, max(xs) * 3
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.plot([lo, ridge], [peak_gbps * lo, peak_gflops], "k-", lw=2, label=f"memory roof {peak_gbps:.1f} GB/s")
    ax.plot([ridge, hi], [peak_gflops, peak_gflops], "k--", lw=2, label=f"compute roof {peak_gflops:.1f} GFLOP/s")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, res) in enumerate(named_results):
        c = colors[k % len(colors)]
        for tagged, marker in ((False, "o"), (True, "^")):
            rows = [r for r in res["layers"] if r["achieved_gflops"] and r["intensity"] > 0 and bool(r["tags"]) == tagged]
            if rows:
                ax.scatter([r["intensity"] for r in rows], [r["achieved_gflops"] for r in rows], color=c, marker=marker,
                           s=22, alpha=0.7, label=f"{name} {'depthwise/SE' if tagged else 'other'} layers")
        t = res["total"]
        if t["achieved_gflops"]:
            ax.scatter([t["intensity"]], [t["achieved_gflops"]], color=c, marker="*", s=320, edgecolors="k",
                       zorder=5, label=f"{name} whole model ({t['latency_ms']:.1f} ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

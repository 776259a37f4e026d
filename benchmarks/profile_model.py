"""Per-layer profile of a model: params, GFLOPs, bytes moved, arithmetic intensity, latency; optional roofline.

    python benchmarks/profile_model.py --cfg models/yolov5s.yaml --img 640 --device cpu
    python benchmarks/profile_model.py --cfg models/yolov5s.yaml --roofline --json runs/profile/s.json
    python benchmarks/profile_model.py --cfg models/yolov5s.yaml --compare models/mobilenetv3small_yolo5s.yaml

Peaks for the roofline come from --peak-gflops/--peak-gbps, else from a quick matmul and a large copy.
Models are fused (Conv+BN) and in eval mode unless --no-fuse / --train-mode.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.general import LOGGER  # noqa: E402
from utils.profiler import (DTYPES, explain_puzzle, log_table, measure_bandwidth_gbps, measure_peak_gflops,  # noqa: E402
                            plot_roofline, profile_model, summary_line)
from utils.torch_utils import model_flops, select_device  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", type=str, default="models/yolov5s.yaml", help="model YAML")
    p.add_argument("--weights", type=str, default="", help="optional checkpoint (else random init from --cfg)")
    p.add_argument("--compare", nargs="*", default=[], help="more model YAMLs to profile and compare")
    p.add_argument("--nc", type=int, default=None, help="override the class count of every model")
    p.add_argument("--img", "--img-size", type=int, default=640, help="square input size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", type=str, default="cpu", help="cpu, 0, ...")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers unfused")
    p.add_argument("--train-mode", action="store_true", help="profile in train mode (no Detect decoding)")
    p.add_argument("--roofline", action="store_true", help="save a roofline PNG")
    p.add_argument("--roofline-path", type=str, default="", help="PNG path (default: next to --json or runs/profile)")
    p.add_argument("--peak-gflops", type=float, default=None, help="device peak GFLOP/s (default: measured)")
    p.add_argument("--peak-gbps", type=float, default=None, help="device memory bandwidth GB/s (default: measured)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=str, default="", help="write all rows to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no per-layer table")
    return p


def load(cfg, opt, device):
    """Fused (unless --no-fuse), eval (unless --train-mode) DetectionModel from a YAML or --weights."""
    if opt.weights and cfg == opt.cfg:
        from utils.checkpoint import load_model
        model = load_model(opt.weights, device="cpu", fuse=not opt.no_fuse)
    else:
        from models.yolo import DetectionModel
        model = DetectionModel(cfg, nc=opt.nc)
        if not opt.no_fuse:
            with torch.no_grad():
                model = model.fuse()
    return model.train(opt.train_mode)


def device_peaks(opt, device):
    """(peak GFLOP/s, GB/s, measured?) from flags, else measured."""
    measured = opt.peak_gflops is None or opt.peak_gbps is None
    gflops = opt.peak_gflops or measure_peak_gflops(device, opt.dtype)
    gbps = opt.peak_gbps or measure_bandwidth_gbps(device)
    return gflops, gbps, measured


def compare_table(named, log=LOGGER.info):
    log(f"\n{'model':<32}{'params':>11}{'GFLOPs':>9}{'MB moved':>10}{'FLOP/B':>8}{'kernels':>8}{'ms':>9}{'GFLOP/s':>9}")
    for name, res in named:
        t = res["total"]
        log(f"{name:<32}{t['params']:>11}{t['gflops']:9.2f}{t['bytes'] / 1e6:10.1f}{t['intensity']:8.1f}"
            f"{t['kernels']:>8}{t['latency_ms']:9.2f}{t['achieved_gflops']:9.1f}")


def main(argv=None):
    opt = build_parser().parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = select_device(opt.device)
    named = []
    for cfg in [opt.cfg] + list(opt.compare):
        model = load(cfg, opt, device)
        check = model_flops(model, opt.img)  # whole-model thop count, to cross-check the per-layer sum
        res = profile_model(model, opt.img, opt.batch, device, opt.dtype, opt.repeats, opt.warmup)
        res["cfg"], res["model_flops_gflops"] = cfg, check
        name = Path(opt.weights).name if opt.weights and cfg == opt.cfg else Path(cfg).stem
        named.append((name, res))
        if not opt.quiet:
            LOGGER.info(f"\n{name} @ {opt.img}px batch {opt.batch} {opt.dtype} on {device} "
                        f"({torch.get_num_threads()} threads):")
            log_table(res)
        del model

    peaks = device_peaks(opt, device) if opt.roofline or opt.peak_gflops or opt.peak_gbps else None
    ridge = peaks[0] / peaks[1] if peaks else None
    if peaks:
        LOGGER.info(f"\ndevice roofs ({'measured' if peaks[2] else 'given'}): {peaks[0]:.1f} GFLOP/s, "
                    f"{peaks[1]:.1f} GB/s -> ridge {ridge:.1f} FLOP/B")
    if len(named) > 1:
        compare_table(named)
    for name, res in named:
        LOGGER.info(summary_line(name, res, ridge))
    for line in explain_puzzle(named, ridge):
        LOGGER.info(f"why: {line}")

    out = {"img": opt.img, "batch": opt.batch, "dtype": opt.dtype, "device": str(device),
           "threads": torch.get_num_threads(), "fused": not opt.no_fuse,
           "peak_gflops": peaks[0] if peaks else None, "peak_gbps": peaks[1] if peaks else None,
           "peaks_measured": peaks[2] if peaks else None,
           "models": [{"name": n, **r} for n, r in named], "explanation": explain_puzzle(named, ridge)}
    if opt.roofline:
        png = Path(opt.roofline_path or (Path(opt.json).with_suffix(".png") if opt.json
                                         else ROOT / "runs" / "profile" / f"roofline_{named[0][0]}_{opt.img}.png"))
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_roofline(named, peaks[0], peaks[1], png, title=f"Roofline {device} {opt.dtype}, img {opt.img}")
        out["roofline_png"] = str(png)
        LOGGER.info(f"roofline saved to {png}")
    if opt.json:
        Path(opt.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.json).write_text(json.dumps(out, indent=1))
        LOGGER.info(f"rows saved to {opt.json}")
    return out


if __name__ == "__main__":
    main()

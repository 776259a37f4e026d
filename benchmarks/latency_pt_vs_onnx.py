"""CPU latency per image of models in PyTorch (fused, eval) and in onnxruntime, batch 1.

    python benchmarks/latency_pt_vs_onnx.py --cfg models/yolov5n.yaml models/mobilenetv3small_yolo5s.yaml --img 224 640

Random weights (latency does not depend on them); prints a table and writes JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import export  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.backends import InferenceBackend  # noqa: E402
from utils.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from utils.profiler import median_time  # noqa: E402


def median_ms(fn, x, repeats, warmup=3):
    """Median ms of fn(x) on the CPU (utils.profiler's timer)."""
    return median_time(lambda: fn(x), torch.device("cpu"), repeats, warmup) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["models/yolov5n.yaml", "models/mobilenetv3small_yolo5s.yaml"])
    p.add_argument("--img", nargs="+", type=int, default=[224, 640])
    p.add_argument("--nc", type=int, default=6)
    p.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime uses its default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks/latency_pt_vs_onnx.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in a.cfg:
            weights = Path(tmp) / f"{Path(cfg).stem}.pt"
            save_checkpoint(make_checkpoint(DetectionModel(ROOT / cfg, nc=a.nc)), weights)
            onnx_file = export.run(weights=str(weights), imgsz=(max(a.img), max(a.img)), dynamic=True)[0]
            pt, ort = InferenceBackend(str(weights), fuse=True), InferenceBackend(str(onnx_file))
            for img in a.img:
                x = torch.rand(1, 3, img, img)
                with torch.inference_mode():
                    t_pt = median_ms(pt, x, a.repeats)
                t_ort = median_ms(ort, x, a.repeats)
                rows.append({"model": Path(cfg).stem, "img": img, "pytorch_ms": round(t_pt, 2), "onnxruntime_ms": round(t_ort, 2)})
                print(f"{Path(cfg).stem:28s} img {img:4d}  PyTorch {t_pt:8.2f} ms   onnxruntime {t_ort:8.2f} ms")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"threads": a.threads, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"saved {a.out}")
    return rows


if __name__ == "__main__":
    main()

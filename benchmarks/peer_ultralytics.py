r"""The peer side of benchmarks/kd_convergence.py: the `ultralytics` package's trainer, run in its own venv.

    PEER=/root/venvs/ultralytics/bin/python
    $PEER benchmarks/peer_ultralytics.py train --cfg yolo11n.yaml --data D.yaml --epochs 100 --img 224 \
        --batch 16 --seed 0 --workers 2 --project P --name N [--teacher T.pt] [--resume]
    $PEER benchmarks/peer_ultralytics.py val --weights P/N/weights/best.pt --data D.yaml --img 224
    $PEER benchmarks/peer_ultralytics.py measure --weights P/N/weights/best.pt --img 224

Models are built from the package's YAMLs (no pretrained weights, no download); `--teacher` turns on the
package's own distillation (`distill_model=`, its default `dis`). The environment kd_convergence.py gives it
is offline (YOLO_OFFLINE=1). Each command ends with one line `RESULT {json}` for the caller to read.
This file imports only ultralytics, torch and the standard library (plus utils.profiler.batch1_latency_ms,
this repo's timer), so it runs in a venv that does not have our requirements.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--cfg", required=True, help="a model YAML of the package, e.g. yolo11n.yaml")
    t.add_argument("--data", required=True)
    t.add_argument("--epochs", type=int, required=True)
    t.add_argument("--img", type=int, default=224)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--project", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--teacher", default=None, help="teacher best.pt: the package's distill_model=")
    t.add_argument("--resume", action="store_true", help="continue project/name/weights/last.pt")
    for name in ("val", "measure"):
        s = sub.add_parser(name)
        s.add_argument("--weights", required=True)
        s.add_argument("--img", type=int, default=224)
        if name == "val":
            s.add_argument("--data", required=True)
            s.add_argument("--batch", type=int, default=32)
            s.add_argument("--workers", type=int, default=2)
        else:
            s.add_argument("--repeats", type=int, default=50)
            s.add_argument("--warmup", type=int, default=10)
    return p.parse_args(argv)


def train(a):
    from ultralytics import YOLO

    last = Path(a.project) / a.name / "weights" / "last.pt"
    if a.resume:
        if not last.is_file():
            raise SystemExit(f"peer_ultralytics: --resume: no {last}")
        YOLO(str(last)).train(resume=True)
    else:
        extra = {"distill_model": a.teacher} if a.teacher else {}
        YOLO(a.cfg).train(data=a.data, epochs=a.epochs, imgsz=a.img, batch=a.batch, seed=a.seed,
                          workers=a.workers, device="cpu", pretrained=False, amp=False, plots=False,
                          project=str(Path(a.project).resolve()), name=a.name, exist_ok=True, verbose=False,
                          **extra)
    return {"save_dir": str(Path(a.project) / a.name)}


def val(a):
    from ultralytics import YOLO

    m = YOLO(a.weights).val(data=a.data, imgsz=a.img, batch=a.batch, workers=a.workers, device="cpu",
                            plots=False, verbose=False, project=str(Path(a.weights).resolve().parents[1]),
                            name="final_val", exist_ok=True)
    return {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4)}


def measure(a):
    """Parameters, GFLOPs at 640 and at --img, and batch-1 CPU latency (fused, fp32, median)."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    sys.path.insert(0, str(ROOT))
    from utils.profiler import batch1_latency_ms

    model = YOLO(a.weights).model.float().eval()
    params = sum(p.numel() for p in model.parameters())
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    return {"params": params, "GFLOPs_640": round(float(get_flops(model, 640)), 2),
            "GFLOPs_img": round(float(get_flops(model, a.img)), 3),
            "ms_per_img": batch1_latency_ms(model, a.img, a.repeats, a.warmup), "threads": torch.get_num_threads()}


def main(argv=None):
    a = parse_args(argv)
    result = {"train": train, "val": val, "measure": measure}[a.cmd](a)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Validate a detection model on a dataset: mAP as YOLOv5 computes it, plots, speed, COCO JSON.

Usage:
    python val.py --weights best.pt --data data/NEU-DET.yaml --img 224
    python val.py --weights a.pt b.pt --data data/NEU-DET.yaml   # ensemble
This file is the CLI; the evaluation itself is utils/evaluation.py (`run` here is its validate_weights,
the training engine calls its validate()).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.evaluation import validate_weights as run  # noqa: E402  (upstream's name: val.run)
from utils.cli import add_cfg_argument  # noqa: E402
from utils.general import LOGGER  # noqa: E402
from utils.options import check_val_options  # noqa: E402
from utils.run_dirs import make_dir, writing  # noqa: E402


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Validate a YOLOv5 model on a dataset")
    p.add_argument("--data", type=str, default=str(ROOT / "data/NEU-DET.yaml"), help="dataset.yaml path")
    p.add_argument("--weights", nargs="+", type=str, default=["yolov5s.pt"], help="model path(s); several = ensemble")
    add_cfg_argument(p)
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", help="train, val, test, speed or study")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--augment", action="store_true", help="augmented inference (TTA)")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    p.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    opt = p.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def study(opt):
    """mAP and speed against image size for each weights file -> study_*.txt and study.png."""
    from utils.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    for w in opt.weights:
        rows = []
        for size in range(256, 1536 + 128, 128):
            LOGGER.info(f"\nRunning {w} --imgsz {size}...")
            r, _, t = run(**{**vars(opt), "weights": w, "imgsz": size, "plots": False})
            rows.append([size, *r, *t])
        rows = np.array(rows)
        f = make_dir(opt.project) / f"study_{Path(opt.data).stem}_{Path(w).stem}.txt"
        with writing(f):
            np.savetxt(f, rows, fmt="%10.4g")
        ax[0].plot(rows[:, 0], rows[:, 4], ".-", label=Path(w).stem)
        ax[1].plot(rows[:, 9], rows[:, 4], ".-", label=Path(w).stem)
    ax[0].set(xlabel="image size", ylabel="mAP50-95")
    ax[1].set(xlabel="inference ms/img", ylabel="mAP50-95")
    ax[0].legend()
    with writing(Path(opt.project) / "study.png") as f:
        fig.savefig(f, dpi=200)


def main(opt):
    check_val_options(opt)
    if opt.task in ("train", "val", "test"):
        if opt.conf_thres > 0.001:
            LOGGER.info(f"WARNING: confidence threshold {opt.conf_thres} > 0.001 produces invalid results")
        if opt.save_hybrid:
            LOGGER.info("WARNING: --save-hybrid returns high mAP from hybrid labels, not from predictions alone")
        return run(**vars(opt))
    opt.half = torch.cuda.is_available() and opt.device != "cpu"
    if opt.task == "speed":
        opt.conf_thres, opt.iou_thres, opt.save_json = 0.25, 0.45, False
        for w in opt.weights:
            run(**{**vars(opt), "weights": w, "plots": False})
    elif opt.task == "study":
        study(opt)
    else:
        raise ValueError(f"--task {opt.task} not in train, val, test, speed, study")


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "val.py", echo="val")

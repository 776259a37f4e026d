"""The KD report: did the distilled student beat the same student trained alone, and where?

    python utils/report.py --student runs/kd/exp --baseline runs/train/exp2 --teacher runs/train/exp \\
        --data data/synthetic.yaml --img 128

Each run is a training folder (its weights/best.pt and results.csv) or a .pt file. Writes report.md and
report.png under --out: mAP50 per epoch of the KD and baseline students (the teacher's final mAP50 as a
line), AP50 per class of every model, and a few val images with each model's detections side by side.
All metrics are val.py's, measured here on the same val set.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.augmentations import model_input  # noqa: E402
from utils.boxes import scale_boxes, xywhn2xyxy  # noqa: E402
from utils.cli import UserError  # noqa: E402
from utils.general import LOGGER  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.plots import Annotator, _plt, colors, read_results_csv  # noqa: E402

ROLES = ("teacher", "student_kd", "student_baseline")
LABELS = {"teacher": "teacher", "student_kd": "KD student", "student_baseline": "baseline student"}
STYLE = {"teacher": ("tab:gray", "--"), "student_kd": ("tab:red", "-"), "student_baseline": ("tab:blue", "-")}
MAP50 = "metrics/mAP_0.5"
FLAGS = {"teacher": "--teacher", "student_kd": "--student", "student_baseline": "--baseline"}  # the CLI's


@dataclass
class Run:
    """One model of the report: its role, weights and (for a training folder) results.csv."""

    role: str
    weights: Path
    results_csv: Path = None
    metrics: dict = field(default_factory=dict)  # filled by measure()
    model: object = None  # the loaded model (measure() keeps it for the detection images)


def find_run(path, role):
    """A training folder (weights/best.pt, results.csv) or a weights file -> Run; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        weights = path / "weights" / "best.pt"
        if not weights.is_file():
            weights = path / "weights" / "last.pt"
        csv = path / "results.csv"
    else:
        weights, csv = path, path.parent.parent / "results.csv"
    if not weights.is_file():
        raise UserError(f"{FLAGS[role]} {path}: no weights (weights/best.pt or a .pt file)")
    return Run(role, weights, csv if csv.is_file() else None)


def map50_per_epoch(results_csv):
    """(epochs, mAP50) columns of a results.csv."""
    header, rows = read_results_csv(results_csv)
    if MAP50 not in header or "epoch" not in header:
        raise UserError(f"{results_csv}: no 'epoch' and '{MAP50}' columns")
    return rows[:, header.index("epoch")], rows[:, header.index(MAP50)]


def measure(run, data, imgsz, batch_size=32, device="", workers=2, project=ROOT / "runs/report"):
    """Validate run.weights as val.py does; fills and returns run.metrics (mAP50, mAP50-95, AP50 per class,
    inference ms/img, parameters, GFLOPs at imgsz)."""
    from utils.checkpoint import load_model
    from utils.evaluation import evaluate_weights
    from utils.torch_utils import model_flops

    r = evaluate_weights(data, weights=str(run.weights), batch_size=batch_size, imgsz=imgsz, device=device,
                         workers=workers, project=Path(project) / "val", name=run.role, exist_ok=True, plots=False)
    model = run.model = load_model(run.weights)
    gflops = model_flops(model, imgsz)
    run.metrics = {"mAP50": round(float(r.results[2]), 4), "mAP50-95": round(float(r.results[3]), 4),
                   "ap50": [round(float(a), 4) for a in r.ap50], "ms/img": round(float(r.speed[1]), 2),
                   "params": sum(p.numel() for p in model.parameters()),
                   "GFLOPs": round(gflops, 2) if gflops else None}
    return run.metrics


def pick_images(im_files, label_rows, k=3):
    """k val images, greedily the ones that add the most classes not shown yet (ties: file order)."""
    shown, picked = set(), []
    candidates = list(range(len(im_files)))
    while candidates and len(picked) < k:
        best = max(candidates, key=lambda i: (len({int(c) for c in label_rows[i][:, 0]} - shown), -i))
        picked.append(best)
        candidates.remove(best)
        shown |= {int(c) for c in label_rows[best][:, 0]}
    return picked


@torch.no_grad()
def detect(model, im, imgsz, conf_thres=0.25, iou_thres=0.45):
    """Detections (n, 6: x1 y1 x2 y2 conf cls) of one BGR image, in its own pixels."""
    x = torch.from_numpy(model_input(im, imgsz))
    det = non_max_suppression(model(x)[0], conf_thres, iou_thres)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im.shape[:2])
    return det.numpy()


def _tile(im, boxes, names, title, size):
    """One annotated tile: boxes (n, 6) drawn with class labels (and confidence), title on top."""
    scale = size / max(im.shape[:2])
    im = cv2.resize(im, (round(im.shape[1] * scale), round(im.shape[0] * scale)))
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[:im.shape[0], :im.shape[1]] = im
    ann = Annotator(canvas, line_width=2)
    for *xyxy, conf, cls in boxes:
        label = names[int(cls)] if conf >= 1 else f"{names[int(cls)]} {conf:.2f}"
        ann.box_label([v * scale for v in xyxy], label, color=colors(int(cls), bgr=True))
    ann.text((4, size - 16), title, txt_color=(0, 0, 0))
    return ann.result()


def detection_grid(runs, data_dict, imgsz, k=3, size=256):
    """Rows of val images; columns: ground truth, then each run's detections (conf >= 0.25). BGR uint8."""
    from utils.checkpoint import load_model
    from utils.label_files import list_image_files, load_labels

    records, _ = load_labels(list_image_files(data_dict["val"]), nc=int(data_dict["nc"]))
    files, rows = [r["im_file"] for r in records], [r["labels"] for r in records]
    names = data_dict["names"]
    models = [(LABELS[r.role], r.model if r.model is not None else load_model(r.weights)) for r in runs]
    grid = []
    for i in pick_images(files, rows, k):
        im = cv2.imread(str(files[i]))
        h, w = im.shape[:2]
        gt = np.zeros((len(rows[i]), 6))
        gt[:, :4] = xywhn2xyxy(rows[i][:, 1:5], w, h)
        gt[:, 4], gt[:, 5] = 1.0, rows[i][:, 0]
        tiles = [_tile(im, gt, names, "ground truth", size)]
        tiles += [_tile(im, detect(m, im, imgsz), names, label, size) for label, m in models]
        grid.append(np.concatenate(tiles, 1))
    return np.concatenate(grid, 0) if grid else None


def render_png(path, runs, names, grid):
    """report.png: mAP50 per epoch, AP50 per class, and the detection grid below."""
    plt = _plt()
    fig = plt.figure(figsize=(13, 12 if grid is not None else 5), tight_layout=True)
    gs = fig.add_gridspec(2 if grid is not None else 1, 2, height_ratios=[1, 1.6] if grid is not None else [1])
    ax = fig.add_subplot(gs[0, 0])
    for r in runs:
        color, ls = STYLE[r.role]
        if r.role == "teacher":
            ax.axhline(r.metrics["mAP50"], color=color, ls=ls, label=f"teacher (final {r.metrics['mAP50']:.3f})")
        elif r.results_csv is not None:
            ep, m = map50_per_epoch(r.results_csv)
            ax.plot(ep, m, color=color, ls=ls, marker=".", label=f"{LABELS[r.role]} (best.pt {r.metrics['mAP50']:.3f})")
    ax.set(xlabel="epoch", ylabel="mAP50 (val)", title="mAP50 per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = fig.add_subplot(gs[0, 1])
    x, width = np.arange(len(names)), 0.8 / max(len(runs), 1)
    for j, r in enumerate(runs):
        ax.bar(x + (j - (len(runs) - 1) / 2) * width, r.metrics["ap50"], width, color=STYLE[r.role][0],
               label=LABELS[r.role])
    ax.set_xticks(x, [names[i] for i in range(len(names))], rotation=20)
    ax.set(ylabel="AP50 (val)", title="AP50 per class", ylim=(0, 1))
    ax.legend()
    if grid is not None:
        ax = fig.add_subplot(gs[1, :])
        ax.imshow(grid[:, :, ::-1])
        ax.set_axis_off()
        ax.set_title("val images: ground truth | " + " | ".join(LABELS[r.role] for r in runs) + " (conf >= 0.25)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(rows, columns):
    """Markdown table of dict rows (missing values blank, parameter counts with thousands separators)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else f"{r[c]:,}" if c == "params" else str(r[c])
                                       for c in columns) + " |")
    return "\n".join(lines)


def metrics_table(runs, extra_columns=()):
    """Markdown table of the runs' metrics (and extra per-run columns from run.metrics)."""
    cols = ("run", "params", "GFLOPs", "mAP50", "mAP50-95", "ms/img", *extra_columns)
    return markdown_table([{"run": r.role, **r.metrics} for r in runs], cols)


def write_report(out, runs, data_dict, imgsz, basis="", extra_columns=(), images=3):
    """report.md + report.png under out -> path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = data_dict["names"]
    grid = detection_grid(runs, data_dict, imgsz, k=images) if images else None
    render_png(out / "report.png", runs, names, grid)
    by_role = {r.role: r for r in runs}
    lines = ["# Knowledge-distillation report", "", metrics_table(runs, extra_columns), ""]
    if "student_kd" in by_role and "student_baseline" in by_role:
        kd, base = by_role["student_kd"].metrics, by_role["student_baseline"].metrics
        lines += [f"KD student vs baseline: {kd['mAP50'] - base['mAP50']:+.4f} mAP50, "
                  f"{kd['mAP50-95'] - base['mAP50-95']:+.4f} mAP50-95 (best.pt of each, val set).", ""]
    lines += ["AP50 per class:", "", "| class | " + " | ".join(r.role for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines += [f"| {names[i]} | " + " | ".join(f"{r.metrics['ap50'][i]:.3f}" for r in runs) + " |"
              for i in range(len(names))]
    if basis:
        lines += ["", basis]
    lines += ["", "![report](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    LOGGER.info(f"report: {out / 'report.md'} and {out / 'report.png'}")
    return out / "report.md"


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="KD student: training folder or .pt")
    p.add_argument("--baseline", default="", help="the same student trained alone: training folder or .pt")
    p.add_argument("--teacher", default="", help="teacher: training folder or .pt")
    p.add_argument("--data", default=str(ROOT / "data/synthetic.yaml"), help="dataset YAML (its val set)")
    p.add_argument("--img", "--imgsz", dest="img", type=int, default=640, help="val image size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=3, help="val images shown with detections (0: none)")
    p.add_argument("--out", default=str(ROOT / "runs/report/exp"), help="folder for report.md / report.png")
    return p.parse_args(argv)


def main(opt):
    from utils.dataset_yaml import check_dataset

    data_dict = check_dataset(opt.data)
    given = {"teacher": opt.teacher, "student_kd": opt.student, "student_baseline": opt.baseline}
    runs = [find_run(given[role], role) for role in ROLES if given[role]]
    for r in runs:
        measure(r, data_dict, opt.img, opt.batch_size, opt.device, opt.workers, project=opt.out)
    return write_report(opt.out, runs, data_dict, opt.img, images=opt.images)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "report.py")

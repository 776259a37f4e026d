"""Drawing and plotting: box annotation (cv2), batch mosaics, label statistics, metric curves,
results.csv plots and run comparison (also a CLI: python utils/plots.py --compare RUN ...)."""

import argparse
import csv
import io
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch

from utils.boxes import xywh2xyxy, xyxy2xywh
from utils.general import LOGGER
from utils.metrics import smooth
from utils.run_dirs import imwrite, make_dir, writing


def _plt():
    """matplotlib.pyplot with a file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, file, dpi):
    """fig.savefig(file) through memory (matplotlib does not report every failed write of a path, a full
    disk for one): a failed write is an OutputError naming the file (utils.run_dirs.writing)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(file).suffix[1:].lower() or None)
    with writing(file), open(file, "wb") as f:
        f.write(buf.getbuffer())
    return Path(file)


class Colors:
    """The YOLOv5 20-colour palette; colors(i, bgr=False) -> (r, g, b) tuple."""

    HEX = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
           "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")

    def __init__(self):
        self.palette = [tuple(int(h[k:k + 2], 16) for k in (0, 2, 4)) for h in self.HEX]
        self.n = len(self.palette)

    def __call__(self, i, bgr=False):
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()


class Annotator:
    """Draw boxes and text on a contiguous uint8 HWC image with cv2 (no fonts to download)."""

    def __init__(self, im, line_width=None):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8:
            raise TypeError("Annotator needs a uint8 numpy image (H, W, 3)")
        self.im = np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # font thickness
        self.fs = self.lw / 3  # font scale

    def box_label(self, box, label="", color=(128, 128, 128), txt_color=(255, 255, 255)):
        """Rectangle for an xyxy box with an optional filled label tag above (or inside) it."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            w, h = cv2.getTextSize(label, 0, fontScale=self.fs, thickness=self.tf)[0]
            outside = p1[1] - h >= 3
            p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
            cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
            org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
            cv2.putText(self.im, label, org, 0, self.fs, txt_color, thickness=self.tf, lineType=cv2.LINE_AA)

    def rectangle(self, xy, fill=None, outline=None, width=1):
        cv2.rectangle(self.im, (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3])),
                      fill if fill is not None else outline, -1 if fill is not None else width)

    def text(self, xy, text, txt_color=(255, 255, 255)):
        """Text with its top-left corner at xy."""
        h = cv2.getTextSize(text, 0, fontScale=self.fs, thickness=self.tf)[0][1]
        cv2.putText(self.im, text, (int(xy[0]), int(xy[1]) + h), 0, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def result(self):
        return self.im


def detections_line(det, names):
    """'2 crazings, 1 patches, ': counts per class of a (n, 6) detections tensor, as detect.py logs them."""
    counts = torch.bincount(det[:, 5].long().cpu()) if len(det) else torch.zeros(0)
    return "".join(f"{int(n)} {names.get(c, c)}{'s' * (n > 1)}, " for c, n in enumerate(counts.tolist()) if n)


def save_one_box(xyxy, im, file=Path("im.jpg"), gain=1.02, pad=10, square=False, save=True):
    """Crop an xyxy box (enlarged by gain and pad) from a BGR image; save it (parents created)."""
    b = xyxy2xywh(torch.as_tensor(xyxy, dtype=torch.float32).view(-1, 4))
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True)[0]
    b[:, 2:] = b[:, 2:] * gain + pad
    xyxy = xywh2xyxy(b).long()[0]
    h, w = im.shape[:2]
    x1, x2 = (int(v) for v in xyxy[[0, 2]].clamp(0, w))
    y1, y2 = (int(v) for v in xyxy[[1, 3]].clamp(0, h))
    crop = im[y1:y2, x1:x2]
    if save and crop.size:
        file = Path(file)
        make_dir(file.parent)
        imwrite(file, crop)
    return crop


def _class_name(names, cls):
    """names (dict or list) -> name of class cls, or the number when unknown."""
    if isinstance(names, dict):
        return str(names.get(cls, cls))
    return str(names[cls]) if names and 0 <= cls < len(names) else str(cls)


def output_to_target(output, max_det=300):
    """NMS output list of (n, 6) -> (N, 7) [batch_id, cls, xc, yc, w, h, conf] for plot_images."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det].detach().cpu().float()
        box, conf, cls = o[:, :4], o[:, 4:5], o[:, 5:6]
        rows.append(torch.cat((torch.full_like(conf, i), cls, xyxy2xywh(box), conf), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7))


def plot_images(images, targets, paths=None, fname="images.jpg", names=None, max_size=1920, max_subplots=16):
    """Save a mosaic of a batch with its boxes. targets (N, 6) [img, cls, xc, yc, w, h] or (N, 7)
    with conf (predictions, drawn when conf > 0.25); boxes normalised or in pixels."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().float().numpy()
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, targets.shape[-1] if len(targets) else 6)
    if images.max() <= 1:
        images = images * 255
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        x, y = int(w * (i // ns)), int(h * (i % ns))
        mosaic[y:y + h, x:x + w] = images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (ns * w, ns * h))
    else:
        scale = 1.0
    annotator = Annotator(np.ascontiguousarray(mosaic), line_width=max(round(sum((ns * h, ns * w)) / 2 * 0.002), 1))
    for i in range(bs):
        x, y = int(w * (i // ns)), int(h * (i % ns))
        annotator.rectangle((x, y, x + w, y + h), outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        ti = targets[targets[:, 0] == i]
        if not len(ti):
            continue
        boxes = xywh2xyxy(ti[:, 2:6].copy())
        has_conf = ti.shape[1] == 7
        if boxes.max() <= 1.01:  # normalised
            boxes[:, [0, 2]] *= w
            boxes[:, [1, 3]] *= h
        elif scale < 1:
            boxes *= scale
        boxes[:, [0, 2]] += x
        boxes[:, [1, 3]] += y
        for j, box in enumerate(boxes):
            cls = int(ti[j, 1])
            conf = ti[j, 6] if has_conf else None
            if conf is None or conf > 0.25:
                name = _class_name(names, cls)
                label = name if conf is None else f"{name} {conf:.1f}"
                annotator.box_label(box, label, color=colors(cls))
    make_dir(Path(fname).parent)
    imwrite(fname, cv2.cvtColor(annotator.result(), cv2.COLOR_RGB2BGR))
    return Path(fname)


def plot_labels(labels, names=(), save_dir=Path("")):
    """labels (n, 5) [cls, xc, yc, w, h] normalised -> labels.jpg and labels_correlogram.jpg."""
    plt = _plt()
    save_dir = make_dir(save_dir)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = int(c.max() + 1) if len(c) else 0
    names = list(names.values()) if isinstance(names, dict) else list(names)

    cols = ("x", "y", "width", "height")
    fig, ax = plt.subplots(4, 4, figsize=(8, 8), tight_layout=True)
    for i in range(4):
        for j in range(4):
            a = ax[i, j]
            if i == j:
                a.hist(b[:, i], bins=50, color="#1f77b4")
            else:
                a.scatter(b[:, j], b[:, i], s=1, alpha=0.3, color="#1f77b4")
            if i == 3:
                a.set_xlabel(cols[j])
            if j == 0:
                a.set_ylabel(cols[i])
    save_figure(fig, save_dir / "labels_correlogram.jpg", 200)
    plt.close(fig)

    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    counts = np.bincount(c, minlength=max(nc, 1))
    ax[0, 0].bar(range(len(counts)), counts, color=[np.array(colors(i)) / 255 for i in range(len(counts))])
    ax[0, 0].set_ylabel("instances")
    if 0 < len(names) < 30:
        ax[0, 0].set_xticks(range(len(names)))
        ax[0, 0].set_xticklabels(names, rotation=90, fontsize=8)
    else:
        ax[0, 0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, dtype=np.uint8)
    boxes = xywh2xyxy(np.concatenate((np.full((len(b), 2), 0.5), b[:, 2:]), 1)[:1000]) * 1000
    for cls, box in zip(c[:1000], boxes):
        cv2.rectangle(canvas, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colors(cls), 1)
    ax[0, 1].imshow(canvas)
    ax[0, 1].axis("off")
    ax[1, 0].hist2d(b[:, 0], b[:, 1], bins=50, cmap="Blues")
    ax[1, 0].set_xlabel("x")
    ax[1, 0].set_ylabel("y")
    ax[1, 1].hist2d(b[:, 2], b[:, 3], bins=50, cmap="Blues")
    ax[1, 1].set_xlabel("width")
    ax[1, 1].set_ylabel("height")
    save_figure(fig, save_dir / "labels.jpg", 200)
    plt.close(fig)


def plot_pr_curve(px, py, ap, save_file=Path("pr_curve.png"), names=None):
    """Precision-recall curve per class (legend when < 21 classes) and the class mean."""
    plt = _plt()
    names = names or {}
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    py = np.stack(py, 1) if len(py) else np.zeros((len(px), 0))
    for i, y in enumerate(py.T):
        label = f"{names.get(i, i)} {ap[i, 0]:.3f}" if 0 < len(names) < 21 else None
        ax.plot(px, y, linewidth=1, label=label)
    if py.shape[1]:
        ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    save_figure(fig, save_file, 250)
    plt.close(fig)


def plot_mc_curve(px, py, save_file=Path("mc_curve.png"), names=None, xlabel="Confidence", ylabel="Metric"):
    """Metric-confidence curve (F1, P or R) per class and the smoothed class mean."""
    plt = _plt()
    names = names or {}
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    for i, y in enumerate(py):
        ax.plot(px, y, linewidth=1, label=f"{names.get(i, i)}" if 0 < len(names) < 21 else None)
    if len(py):
        y = smooth(py.mean(0), 0.05)
        ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    save_figure(fig, save_file, 250)
    plt.close(fig)


def plot_ap_curves(curves, save_dir=Path("."), names=None, prefix=""):
    """PR, F1, P and R curves of metrics.ap_curves() as <prefix>PR_curve.png ... in save_dir."""
    if not len(curves.classes):
        return
    names = names or {}
    present = {i: names.get(int(c), str(int(c))) for i, c in enumerate(curves.classes)}
    save_dir, px = Path(save_dir), curves.px
    plot_pr_curve(px, curves.pr, curves.ap, save_dir / f"{prefix}PR_curve.png", present)
    for short, ylabel, y in (("F1", "F1", curves.f1), ("P", "Precision", curves.p), ("R", "Recall", curves.r)):
        plot_mc_curve(px, y, save_dir / f"{prefix}{short}_curve.png", present, ylabel=ylabel)


def plot_confusion_matrix(matrix, normalize=True, save_file=Path("confusion_matrix.png"), names=()):
    """Heat map of a (nc + 1)^2 confusion matrix [predicted, true]; columns normalised."""
    plt = _plt()
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)
    ticks = list(names) + ["background"] if 0 < len(names) == nc and nc < 30 else None
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    im = ax.imshow(array, cmap="Blues", vmin=0.0)
    fig.colorbar(im, ax=ax)
    if nc < 30:
        for (i, j), v in np.ndenumerate(array):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=8)
    if ticks:
        ax.set_xticks(range(nc + 1))
        ax.set_xticklabels(ticks, rotation=90)
        ax.set_yticks(range(nc + 1))
        ax.set_yticklabels(ticks)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    save_figure(fig, save_file, 250)
    plt.close(fig)
    return Path(save_file)


def read_results_csv(file):
    """results.csv -> (column names stripped of whitespace, float array (rows, cols))."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such results file")
    with open(file, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{file}: empty results file")
    header = [h.strip() for h in rows[0]]
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64).reshape(-1, len(header))
    except ValueError as e:
        raise ValueError(f"{file}: non-numeric or ragged row ({e})") from e
    return header, data


def plot_results(file="results.csv", dir=""):
    """Plot every column of a results.csv against epoch -> results.png beside it."""
    plt = _plt()
    file = Path(dir) / "results.csv" if dir else Path(file)
    header, data = read_results_csv(file)
    x_col = header.index("epoch") if "epoch" in header else None
    x = data[:, x_col] if x_col is not None else np.arange(len(data))
    cols = [i for i in range(len(header)) if i != x_col]
    ncols = 5 if len(cols) > 4 else max(len(cols), 1)
    nrows = max(math.ceil(len(cols) / ncols), 1)
    fig, ax = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), tight_layout=True, squeeze=False)
    for k, ci in enumerate(cols):
        a = ax.flat[k]
        a.plot(x, data[:, ci], marker=".", linewidth=2, markersize=6)
        a.set_title(header[ci], fontsize=10)
    for a in list(ax.flat)[len(cols):]:
        a.axis("off")
    out = file.with_name("results.png")
    save_figure(fig, out, 200)
    plt.close(fig)
    return out


def compare_runs(run_dirs, columns, out="compare.png", labels=None, csv_name="results.csv"):
    """Plot chosen results.csv columns of several runs on one figure, one line per run.

    run_dirs: run folders (containing csv_name) or CSV files; columns: names as in the CSV
    header (surrounding whitespace ignored); labels: legend names (default: run folder names).
    Returns (fig, axes); the PNG is written to `out`.
    """
    plt = _plt()
    if not run_dirs or not columns:
        raise ValueError("compare_runs needs at least one run and one column")
    files = [Path(r) if Path(r).is_file() else Path(r) / csv_name for r in run_dirs]
    labels = list(labels) if labels else [f.parent.name if f.name == csv_name else f.stem for f in files]
    if len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} runs")
    columns = [c.strip() for c in columns]
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4), tight_layout=True, squeeze=False)
    axes = axes[0]
    for f, label in zip(files, labels):
        header, data = read_results_csv(f)
        x = data[:, header.index("epoch")] if "epoch" in header else np.arange(len(data))
        for a, col in zip(axes, columns):
            if col not in header:
                raise KeyError(f"{f}: no column '{col}' (has: {', '.join(header)})")
            a.plot(x, data[:, header.index(col)], marker=".", label=label)
    for a, col in zip(axes, columns):
        a.set(title=col, xlabel="epoch")
        a.legend()
    make_dir(Path(out).parent)
    save_figure(fig, out, 150)
    return fig, axes


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot results.csv of one run, or compare several runs")
    p.add_argument("--compare", nargs="+", help="run folders (or CSV files) to compare")
    p.add_argument("--columns", nargs="+", default=["metrics/mAP_0.5", "metrics/mAP_0.5:0.95"])
    p.add_argument("--labels", nargs="+", help="legend names, one per run")
    p.add_argument("--csv", default="results.csv", help="CSV file name inside each run folder")
    p.add_argument("--out", default="compare.png", help="output PNG")
    p.add_argument("--results", help="plot every column of this results.csv to results.png")
    opt = p.parse_args(argv)
    if opt.results:
        LOGGER.info(f"saved {plot_results(opt.results)}")
    if opt.compare:
        compare_runs(opt.compare, opt.columns, opt.out, opt.labels, opt.csv)
        LOGGER.info(f"saved {opt.out}")
    if not (opt.results or opt.compare):
        p.error("give --compare RUN [RUN ...] and/or --results FILE")


if __name__ == "__main__":
    main()

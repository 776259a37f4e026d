"""Plots: annotation pixels, batch mosaics, label plots, results.csv plots and run comparison."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.plots import (Annotator, colors, compare_runs, output_to_target, plot_images, plot_labels, plot_results,
                         read_results_csv, save_one_box)

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["epoch", "train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(f"{h:>20s}" for h in HEADER)]  # upstream pads column names with spaces
    lines += [",".join(f"{v:>20.5g}" for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_colors_palette():
    assert colors(0) == (0xFF, 0x38, 0x38)
    assert colors(0, bgr=True) == (0x38, 0x38, 0xFF)
    assert colors(20) == colors(0)


def test_annotator_draws_box_in_colour():
    im = np.zeros((100, 100, 3), np.uint8)
    a = Annotator(im, line_width=2)
    a.box_label((20, 30, 80, 90), "cls 0.9", color=(0, 255, 0))
    out = a.result()
    assert (out[60, 20] == (0, 255, 0)).all()  # on the left edge
    assert not out[60, 50].any()  # interior untouched
    assert out[25:30, 20:40].any()  # label tag above the box


def test_output_to_target_and_plot_images(tmp_path):
    preds = [torch.tensor([[10.0, 10, 30, 40, 0.9, 1]]), torch.zeros(0, 6)]
    t = output_to_target(preds)
    assert t.shape == (1, 7) and np.allclose(t[0], [0, 1, 20, 25, 20, 30, 0.9])
    imgs = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    f = plot_images(imgs, t, paths=["a.jpg", "b.jpg"], fname=tmp_path / "val_batch0_pred.jpg", names={1: "b"})
    im = cv2.imread(str(f))
    assert im.shape == (128, 128, 3)
    r, g, b = colors(1)
    assert (np.abs(im[20:45, 8:33].astype(int) - [b, g, r]).sum(-1) < 60).any()  # box colour present
    targets = torch.tensor([[1, 0, 0.5, 0.5, 0.2, 0.2]])  # normalised labels on the second image
    plot_images(imgs, targets, fname=tmp_path / "labels.jpg")
    assert (tmp_path / "labels.jpg").is_file()


def test_save_one_box(tmp_path):
    im = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    crop = save_one_box([10, 20, 30, 60], im, tmp_path / "c" / "x.jpg", gain=1.0, pad=0)
    assert crop.shape == (40, 20, 3) and (tmp_path / "c" / "x.jpg").is_file()


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.c_[rng.integers(0, 3, 50), rng.uniform(0.2, 0.8, (50, 2)), rng.uniform(0.05, 0.3, (50, 2))]
    plot_labels(labels, {0: "a", 1: "b", 2: "c"}, tmp_path)
    assert (tmp_path / "labels.jpg").stat().st_size > 1000
    assert (tmp_path / "labels_correlogram.jpg").stat().st_size > 1000


def test_plot_results_and_read(tmp_path):
    f = tmp_path / "results.csv"
    _write_csv(f, [[e, 0.1 / (e + 1), 0.1 * e, 0.05 * e] for e in range(4)])
    header, data = read_results_csv(f)
    assert header == HEADER and data.shape == (4, 4)
    assert plot_results(f).is_file()


def test_compare_runs_lines_hold_the_data(tmp_path):
    a, b = tmp_path / "train" / "exp", tmp_path / "kd" / "exp"
    _write_csv(a / "results.csv", [[e, 1.0, 0.1 * e, 0.05 * e] for e in range(5)])
    _write_csv(b / "results.csv", [[e, 1.0, 0.2 * e, 0.07 * e] for e in range(3)])
    out = tmp_path / "cmp.png"
    fig, axes = compare_runs([a, b], [" metrics/mAP_0.5 ", "metrics/mAP_0.5:0.95"], out, labels=["base", "kd"])
    assert out.is_file() and len(axes) == 2
    lines = axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["base", "kd"]
    assert np.allclose(lines[1].get_ydata(), [0, 0.2, 0.4])
    assert np.allclose(axes[1].get_lines()[0].get_xdata(), range(5))
    with pytest.raises(KeyError, match="no column 'nope'"):
        compare_runs([a], ["nope"], tmp_path / "x.png")


def test_compare_cli(tmp_path):
    a, b = tmp_path / "r1", tmp_path / "r2"
    for d in (a, b):
        _write_csv(d / "log.csv", [[e, 1.0, 0.1 * e, 0.05 * e] for e in range(3)])
    out = tmp_path / "c.png"
    cmd = [sys.executable, str(ROOT / "utils" / "plots.py"), "--compare", str(a), str(b), "--csv", "log.csv",
           "--columns", "metrics/mAP_0.5", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=60)
    assert out.stat().st_size > 1000


def test_plot_ap_curves_from_metrics(tmp_path):
    from utils.metrics import ap_curves
    from utils.plots import plot_ap_curves

    tp = np.array([[1], [0], [1], [1]], bool)
    curves = ap_curves(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 2]), np.array([0, 1, 1]))
    assert curves.classes.tolist() == [0, 1] and len(curves.pr) == 2 and curves.f1.shape == (2, 1000)
    plot_ap_curves(curves, tmp_path, {0: "dent", 1: "scratch"}, prefix="x_")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_F1_curve.png", "x_PR_curve.png", "x_P_curve.png",
                                                          "x_R_curve.png"]

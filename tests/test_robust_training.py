"""Training never dies on bad data, never saves NaN weights, never duplicates its history (issue 14):
a fuzzed dataset trains to the end, the non-finite guard, resume after a crash, bad options refused
before any work, every --cache choice, zero-label sets, partial saves, AutoBatch on CPU."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from test_bad_data import make_bad_folder
from test_engine import FakePlugin, load_ckpt, make_tiny_data, run_train, train_args
from utils.cli import UserError, run_cli
from utils.nonfinite import NonFiniteError, NonFiniteGuard, nonfinite_entries

ROOT = Path(__file__).resolve().parents[1]
HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"


@pytest.fixture()
def log(caplog_yolo):
    return caplog_yolo


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


def write_hyp(path, **changes):
    hyp = yaml.safe_load(HYP.read_text())
    for k, v in changes.items():
        if v is None:
            hyp.pop(k)
        else:
            hyp[k] = v
    path.write_text(yaml.safe_dump(hyp))
    return path


def all_finite(path):
    return not nonfinite_entries(load_ckpt(path))


# ----------------------------------------------------------------- bad data
def test_fuzzed_dataset_trains_to_the_end_naming_each_problem_once(tmp_path, tiny_data, log):
    """16+ kinds of bad files (class 17 in a 6-class set among them): the run finishes, each named once."""
    images, cases = make_bad_folder(tmp_path / "bad")
    labels = images.parent / "labels"
    good = (images / "good.jpg").read_bytes()
    for stem, text in (("class17", "17 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.2 0.2\n"), ("negative", "-3 0.5 0.5 0.2 0.2\n")):
        (images / f"{stem}.jpg").write_bytes(good)
        (labels / f"{stem}.txt").write_text(text)
    (images / "binary_label.jpg").write_bytes(good)
    (labels / "binary_label.txt").write_bytes(bytes(range(256)) * 3)
    data = tmp_path / "bad.yaml"
    names = {i: f"c{i}" for i in range(6)}
    data.write_text(yaml.safe_dump({"train": str(images), "val": str(Path(yaml.safe_load(tiny_data.read_text())["path"])
                                                                    / "images" / "val"), "names": names}))
    save = run_train(train_args(data, tmp_path, epochs=1, batch=4))
    assert (save / "weights" / "last.pt").is_file() and (save / "results.csv").is_file()
    text = log.text
    problems = [s for s, st in cases.items() if s not in ("good", "polygon", "gray_png", "missing_label", "empty_label")]
    problems = [f"{s}." for s in problems + ["class17", "negative", "binary_label"]] + ["notes.txt", "data.csv"]
    assert len(problems) >= 16
    for name in problems:
        assert text.count(name) == 1, (name, text.count(name))
    assert "class id(s) [17] >= nc=6" in text and "class id(s) [9] >= nc=6" in text


def test_class_ids_out_of_range_dropped_in_val_set_too(tmp_path, log):
    """The engine gives nc to the val loader as well: the row is dropped and its file named once."""
    data = make_tiny_data(tmp_path / "d", n_train=4, n_val=2)
    lb = tmp_path / "d" / "labels" / "val" / "0.txt"
    lb.write_text(lb.read_text() + "5 0.5 0.5 0.1 0.1\n")
    run_train(train_args(data, tmp_path, "--noval", epochs=1))
    assert log.text.count(f"{lb}: class id(s) [5] >= nc=2, 1 row(s) dropped") == 1


def test_training_set_without_labels_is_refused_with_counts(tmp_path):
    data = make_tiny_data(tmp_path / "d", n_train=4, n_val=2)
    for f in (tmp_path / "d" / "labels" / "train").glob("*.txt"):
        f.write_text("")
    with pytest.raises(UserError, match=r"no labels in .*4 usable images: 0 found, 0 missing, 4 empty"):
        run_train(train_args(data, tmp_path, epochs=1))


# ----------------------------------------------------------------- non-finite guard
class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_guard_skips_counts_restores_bn_and_stops(log):
    m = TinyBN()
    guard = NonFiniteGuard(m, limit=3, lr0=0.5)
    guard.start_window()
    before = m.bn.running_mean.clone()
    m(torch.full((2, 1, 2, 2), float("nan")))  # a bad forward pollutes the BN statistics
    guard.note_loss(torch.tensor(float("nan")))
    assert not guard.check_step(torch.tensor(1.0), epoch=4, first_batch=7)
    assert torch.equal(m.bn.running_mean, before) and guard.total == 1
    assert "non-finite loss at epoch 4, batch 7 (1 so far)" in log.text
    guard.start_window()
    guard.note_loss(torch.tensor(2.0))
    assert not guard.check_step(torch.tensor(float("inf")), epoch=4, first_batch=8)
    assert "non-finite gradient at epoch 4, batch 8 (2 so far)" in log.text
    guard.note_loss(torch.tensor(2.0))
    assert guard.check_step(torch.tensor(3.0), 4, 9) and guard.consecutive == 0  # a good step resets the run
    for b in range(2):
        guard.note_loss(torch.tensor(float("inf")))
        assert not guard.check_step(torch.tensor(1.0), 5, b)
    guard.note_loss(torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match="3 consecutive.*lower lr0 \\(now 0.5\\)"):
        guard.check_step(torch.tensor(1.0), 5, 2)
    amp = NonFiniteGuard(m, check_grads=False)  # CUDA AMP: inf gradients are GradScaler's business
    amp.note_loss(torch.tensor(1.0))
    assert amp.check_step(torch.tensor(float("inf")), 0, 0)


def test_huge_lr0_never_saves_a_nonfinite_checkpoint(tiny_data, tmp_path, log):
    hyp = write_hyp(tmp_path / "hyp.yaml", lr0=1e30)
    save = run_train(train_args(tiny_data, tmp_path, "--hyp", str(hyp), "--save-period", "1", "--noval", epochs=2))
    assert "non-finite loss at epoch" in log.text and "so far" in log.text
    saved = sorted((save / "weights").glob("*.pt"))
    assert save / "weights" / "last.pt" in saved  # epoch 0 stepped once: huge but finite
    for f in saved:
        assert all_finite(f), f
    assert "best.pt not saved, non-finite values" in log.text  # float16 EMA overflows: refused, not written
    rows = (save / "results.csv").read_text().splitlines()
    assert rows[-1].split(",")[1].strip() == "nan"  # no finite batch in epoch 1: its loss is unknown, not 0


def test_consecutive_nonfinite_steps_stop_with_lr0_hint(tiny_data, tmp_path, capsys):
    import train

    hyp = write_hyp(tmp_path / "hyp.yaml", lr0=1e30, nonfinite_limit=2)
    args = train_args(tiny_data, tmp_path, "--hyp", str(hyp), "--noval", epochs=3, batch=2)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, lambda argv: train.parse_opt(args=argv), "train.py", args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "train.py: error: training stopped: 2 consecutive" in err and "lower lr0 (now 1e+30)" in err
    assert "Traceback" not in err
    for f in (tmp_path / "exp" / "weights").glob("*.pt"):
        assert all_finite(f), f


# ----------------------------------------------------------------- resume after a crash
def test_resume_after_crash_before_last_pt_never_duplicates_epochs(tiny_data, tmp_path, log):
    """Crash between epoch 1's results.csv row and its last.pt: last.pt is epoch 0's (from --save-period)."""
    save = run_train(train_args(tiny_data, tmp_path, "--noval", "--save-period", "1", epochs=2), plugin=FakePlugin())
    w = save / "weights"
    shutil.copy(w / "epoch0.pt", w / "last.pt")
    (w / ".last.pt.k2j4h1.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    run_train(["--resume", str(w / "last.pt"), "--workers", "0", "--device", "cpu"], plugin=FakePlugin())
    rows = (save / "results.csv").read_text().strip().splitlines()
    assert [int(float(r.split(",")[0])) for r in rows[1:]] == [0, 1]
    assert rows[0].rstrip().endswith("train/fake") and all(len(r.split(",")) == 15 for r in rows)
    assert "dropped 1 row(s) of epoch 1 and later" in log.text
    assert not list(w.glob(".*.tmp")) and "Removed 1 unfinished checkpoint file(s)" in log.text


def test_drop_rows_from_keeps_header_and_earlier_epochs(tmp_path):
    from utils.results_log import append_row, drop_rows_from

    f = tmp_path / "results.csv"
    for e in (0, 1, 2, 1, 2):
        append_row(f, ["a", "train/kd"], e, [e * 1.0, e * 2.0])
    assert drop_rows_from(f, 1) == 4
    lines = f.read_text().splitlines()
    assert len(lines) == 2 and lines[0].split(",")[-1].strip() == "train/kd" and int(float(lines[1].split(",")[0])) == 0
    assert drop_rows_from(tmp_path / "absent.csv", 1) == 0


# ----------------------------------------------------------------- options refused before any work
@pytest.mark.parametrize("extra, says", [
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1, or -1 for AutoBatch"),
    (["--batch-size", "-2"], "--batch-size -2"),
    (["--imgsz", "0"], "--imgsz 0"),
    (["--workers", "-1"], "--workers -1"),
])
def test_bad_options_exit_1_with_one_line(tiny_data, tmp_path, capsys, extra, says):
    import train

    args = train_args(tiny_data, tmp_path, epochs=1) + extra  # argparse: the last value wins
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, lambda argv: train.parse_opt(args=argv), "train.py", args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and f"train.py: error: {says}" in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists()  # refused before any work


def test_lr_schedule_refuses_zero_epochs():
    from utils.optim import lr_lambda

    with pytest.raises(ValueError, match="--epochs 0: must be at least 1"):
        lr_lambda(0, 0.01)


def test_hyp_missing_keys_all_named_at_once(tiny_data, tmp_path, capsys):
    import train

    hyp = write_hyp(tmp_path / "hyp.yaml", lr0=None, momentum=None, anchor_t=None)
    args = train_args(tiny_data, tmp_path, "--hyp", str(hyp), epochs=1)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, lambda argv: train.parse_opt(args=argv), "train.py", args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and "missing key(s) lr0, momentum, anchor_t" in err and str(hyp) in err
    assert not (tmp_path / "exp").exists()
    bad = write_hyp(tmp_path / "bad.yaml", lr0="fast")
    from utils.options import check_hyp

    with pytest.raises(ValueError, match="not finite numbers: lr0='fast'"):
        check_hyp(yaml.safe_load(bad.read_text()), bad)


def test_unknown_cache_choice_refused_at_parse_time(capsys):
    import train

    with pytest.raises(SystemExit) as e:
        train.parse_opt(args=["--cache", "gpu"])
    assert e.value.code == 2 and "--cache: invalid choice: 'gpu'" in capsys.readouterr().err
    assert train.parse_opt(args=["--cache"]).cache == "ram" and train.parse_opt(args=["--cache", "val"]).cache == "val"


@pytest.mark.parametrize("cache", [None, "ram", "disk", "val"])
def test_training_with_every_cache_choice(tmp_path, cache):
    data = make_tiny_data(tmp_path / "d", n_train=4, n_val=4)
    save = run_train(train_args(data, tmp_path, *(["--cache", cache] if cache else []), epochs=1))
    assert (save / "weights" / "last.pt").is_file()
    npys = list((tmp_path / "d").rglob("*.npy"))
    assert len(npys) == (8 if cache == "disk" else 0)
    assert all(p.parent.name == ".yolov5kd-npy" for p in npys)


# ----------------------------------------------------------------- caches
def test_label_edit_with_same_size_and_mtime_invalidates_the_cache(tmp_path, log):
    import os

    from utils.dataloaders import LoadImagesAndLabels

    make_tiny_data(tmp_path / "d", n_train=3, n_val=0)
    src = tmp_path / "d" / "images" / "train"
    ds = LoadImagesAndLabels(src, 64)
    lb = tmp_path / "d" / "labels" / "train" / "1.txt"
    st = lb.stat()
    text = lb.read_text()
    edited = ("1" if text[0] == "0" else "0") + text[1:]  # same byte count, other class
    lb.write_text(edited)
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same timestamp
    log.clear()
    ds2 = LoadImagesAndLabels(src, 64)
    i = ds2.im_files.index(str(src / "1.jpg"))
    assert ds2.labels[i][0, 0] == float(edited[0]) != ds.labels[i][0, 0]
    assert "(cache, 1 re-checked)" in log.text
    log.clear()
    LoadImagesAndLabels(src, 64)
    assert "(cache):" in log.text  # the rewritten cache serves the next run


def test_stray_npy_beside_an_image_is_never_read(tmp_path):
    import cv2

    from utils.dataloaders import LoadImagesAndLabels
    from utils.image_io import imread

    make_tiny_data(tmp_path / "d", n_train=2, n_val=0)
    src = tmp_path / "d" / "images" / "train"
    np.save(src / "0.npy", np.zeros((64, 64, 3), np.uint8))  # not ours: must not replace 0.jpg
    for cache in (None, "ram", "disk"):
        ds = LoadImagesAndLabels(src, 64, cache_images=cache)
        i = ds.im_files.index(str(src / "0.jpg"))
        assert np.array_equal(ds.load_image(i)[0], imread(str(src / "0.jpg"))), cache
    old = ds.npy_files[i]
    assert old.parent == src / ".yolov5kd-npy" and old.is_file()
    cv2.imwrite(str(src / "0.jpg"), np.full((64, 64, 3), 7, np.uint8))  # the image changes: its cache too
    ds = LoadImagesAndLabels(src, 64, cache_images="disk")
    assert np.array_equal(ds.load_image(i)[0], imread(str(src / "0.jpg")))
    assert ds.npy_files[i] != old and not old.exists()


# ----------------------------------------------------------------- AutoBatch
def test_autobatch_on_cpu_falls_back_to_default(tiny_data, tmp_path, log):
    from utils.engine import autobatch

    assert autobatch(nn.Conv2d(3, 3, 1), 64, torch.device("cpu")) == 16
    assert "AutoBatch: CUDA not used, using default --batch-size 16" in log.text
    log.clear()
    save = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1, batch=-1))
    assert "AutoBatch: CUDA not used, using default --batch-size 16" in log.text
    assert (save / "weights" / "last.pt").is_file()

"""Crafted command-line options and failing outputs (issue 28): one line `prog: error: ...` naming the option
and its valid range (or the path that could not be written), exit status 1, no traceback, no hang.

Most option checks run in-process (the entry points' parse_opt and the checks of utils/options.py, cheap);
a representative case per entry point and the output failures run as real subprocesses (tests/fuzz_util.py).
"""

import argparse
import errno
import os
from pathlib import Path

import numpy as np
import pytest

import detect
import export
import train
import train_kd
import val
from fuzz_util import assert_clear_error, run_entry, tiny_world
from utils.cli import OptionError, error_message, run_cli
from utils.distill.config import KDConfig
from utils.options import (MAX_IMGSZ, check_classes, check_detect_options, check_export_options, check_train_options,
                           check_val_options)
from utils.run_dirs import OutputError, imwrite, make_dir, refuse_folder_in_the_way, writing

NAN, INF = "nan", "inf"
DEV_FULL = Path("/dev/full")  # every write to it fails with ENOSPC: a full disk without filling one
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("fuzz_options"))


@pytest.fixture(scope="module")
def not_a_dir(world):
    """An output path below a regular file: mkdir fails with ENOTDIR (also as root, where chmod does not)."""
    f = world["dir"] / "file.txt"
    f.write_text("a file, not a folder\n")
    return f / "sub"


# ----------------------------------------------------------------------------- options, in-process
TRAIN_BAD = [
    (["--epochs", "0"], "--epochs", "at least 1"),
    (["--batch-size", "0"], "--batch-size", "-1 for AutoBatch"),
    (["--batch-size", "-2"], "--batch-size", "-1 for AutoBatch"),
    (["--img", "0"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--img", "-32"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--img", "100000"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--workers", "-1"], "--workers", "0 or more"),
    (["--label-smoothing", "5"], "--label-smoothing", "[0, 1]"),
    (["--label-smoothing", "-0.1"], "--label-smoothing", "[0, 1]"),
    (["--label-smoothing", NAN], "--label-smoothing", "[0, 1]"),
    (["--patience", "-1"], "--patience", "0 (no early stopping"),
    (["--time", "0"], "--time", "positive"),
    (["--time", NAN], "--time", "positive"),
    (["--time", INF], "--time", "positive"),
    (["--freeze", "-1"], "--freeze", "0 or more"),
    (["--freeze", "0", "-3"], "--freeze", "0 or more"),
    (["--seed", "-5"], "--seed", "0.."),
    (["--seed", str(2 ** 40)], "--seed", "0.."),
    (["--evolve", "-3"], "--evolve", "generations"),
    (["--local_rank", "-2"], "--local_rank", "-1 or"),
]


KD_BAD = [
    (["--alpha", NAN], "--alpha", ">= 0"),
    (["--alpha", INF], "--alpha", ">= 0"),
    (["--alpha", "-1"], "--alpha", ">= 0"),
    (["--temperature", "0"], "--temperature", "> 0"),
    (["--temperature", "-2"], "--temperature", "> 0"),
    (["--temperature", NAN], "--temperature", "> 0"),
    (["--feat", "at", "--beta", "-1"], "--beta", ">= 0"),
    (["--feat", "at", "fgfi", "--beta", "at=1", "fgfi=nan"], "--beta", "fgfi=nan"),
    (["--feat", "wat", "--beta", INF], "--beta", ">= 0"),
    (["--bg-weight", "2"], "--bg-weight", "[0, 1]"),
    (["--ratio", "-0.5"], "--bg-weight", "[0, 1]"),
    (["--unlabeled-ratio", "0"], "--unlabeled-ratio", "(0, 64]"),
    (["--unlabeled-ratio", NAN], "--unlabeled-ratio", "(0, 64]"),
    (["--kd-layers", "17-17"], "--kd-layers", "teacher:student"),
]


def test_train_kd_checks_train_options_before_the_teacher(world):
    """--epochs 0 is named even though --teacher_weight is missing (train.py's options come first)."""
    with pytest.raises(OptionError, match="--epochs 0"):
        train_kd.main(train_kd.parse_opt(["--epochs", "0", "--data", str(world["data"])]))


VAL_BAD = [
    (["--img", "0"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--img", "100000"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--conf-thres", "2"], "--conf-thres", "[0, 1]"),
    (["--conf-thres", "-0.1"], "--conf-thres", "[0, 1]"),
    (["--conf-thres", NAN], "--conf-thres", "[0, 1]"),
    (["--iou-thres", "1.5"], "--iou-thres", "[0, 1]"),
    (["--iou-thres", INF], "--iou-thres", "[0, 1]"),
    (["--max-det", "-1"], "--max-det", "at least 1"),
    (["--max-det", "0"], "--max-det", "at least 1"),
    (["--batch-size", "0"], "--batch-size", "at least 1"),
    (["--workers", "-1"], "--workers", "0 or more"),
    (["--task", "bogus"], "--task", "speed"),
]


DETECT_BAD = [
    (["--img", "0"], "--imgsz", "one or two sizes"),
    (["--img", "640", "-1"], "--imgsz", "one or two sizes"),
    (["--img", "1", "2", "3"], "--imgsz", "one or two sizes"),
    (["--img", "100000"], "--imgsz", f"1..{MAX_IMGSZ}"),
    (["--conf-thres", INF], "--conf-thres", "[0, 1]"),
    (["--iou-thres", "-1"], "--iou-thres", "[0, 1]"),
    (["--max-det", "-1"], "--max-det", "at least 1"),
    (["--vid-stride", "0"], "--vid-stride", "at least 1"),
    (["--classes", "-1"], "--classes", ">= 0"),
    (["--line-thickness", "-1"], "--line-thickness", "0: automatic"),
    (["--line-thickness", "5000"], "--line-thickness", "0..1000"),
]


EXPORT_BAD = [
    (["--opset", "1"], "--opset", "11..21"),
    (["--opset", "99"], "--opset", "11..21"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--batch-size", "100000"], "--batch-size", "<= 1024"),
    (["--img", "0"], "--imgsz", "one or two positive sizes"),
    (["--img", "64", "64", "64"], "--imgsz", "one or two positive sizes"),
    (["--img", "100000"], "--imgsz", f"at most {MAX_IMGSZ}"),
    (["--device", "abc"], "--device", "cpu"),
    (["--device", "-1"], "--device", "cpu"),
    (["--include", "tflite"], "--include", "unsupported"),
    (["--int8", "--data", "x.yaml", "--calib-images", "0"], "--calib-images", ">= 1"),
]


CHECKS = {  # entry point -> parse its arguments and check them as its main() does first
    "train.py": lambda a: check_train_options(train.parse_opt(args=a)),
    "train_kd.py": lambda a: KDConfig.from_opt(train_kd.parse_opt(a)),
    "val.py": lambda a: check_val_options(val.parse_opt(a)),
    "detect.py": lambda a: check_detect_options(detect.parse_opt(a)),
    "export.py": lambda a: check_export_options(export.parse_opt(a)),
}
BAD = [(script, *case) for script, cases in (("train.py", TRAIN_BAD), ("train_kd.py", KD_BAD), ("val.py", VAL_BAD),
                                             ("detect.py", DETECT_BAD), ("export.py", EXPORT_BAD)) for case in cases]


@pytest.mark.parametrize("script, args, flag, says", BAD, ids=[f"{s} {' '.join(a)}" for s, a, *_ in BAD])
def test_option_refused_naming_it_and_its_range(script, args, flag, says):
    with pytest.raises(ValueError) as e:  # OptionError (a ValueError), or --kd-layers' own ValueError
        CHECKS[script](args)
    text = str(e.value)
    assert text.startswith(f"{flag} ") and says in text, text


# Defaults, and upstream's meanings: --patience 0 (no early stopping), --save-period -1 (no periodic checkpoints),
# --batch-size -1 (AutoBatch), --img 33 (rounded up to the stride later), --line-thickness 0 (automatic).
GOOD = [
    ("train.py", []),
    ("train.py", ["--patience", "0", "--save-period", "-1", "--batch-size", "-1", "--img", "33", "--label-smoothing",
                  "1", "--evolve", "0", "--seed", "4294966271", "--freeze", "10", "--time", "0.01", "--workers", "0"]),
    ("train_kd.py", ["--alpha", "0", "--temperature", "0.5", "--feat", "wat", "fgfi", "--beta", "0", "fgfi=0.001",
                     "--bg-weight", "1", "--kd-layers", "17:17,20:20"]),
    ("val.py", ["--conf-thres", "0", "--iou-thres", "1", "--img", "8192", "--task", "study"]),
    ("detect.py", ["--line-thickness", "0", "--img", "1", "33", "--classes", "0", "5", "--vid-stride", "1000",
                   "--max-det", "1"]),
    ("export.py", ["--opset", "11", "--img", "320", "192", "--device", "cuda:1", "--include", "TorchScript", "onnx",
                   "--batch-size", "1024"]),
]


@pytest.mark.parametrize("script, args", GOOD, ids=[f"{s} {' '.join(a)}" for s, a in GOOD])
def test_legitimate_values_pass(script, args):
    CHECKS[script](args)


def test_legitimate_kd_values_pass():
    cfg = KDConfig.from_opt(train_kd.parse_opt(["--alpha", "0", "--temperature", "0.5", "--feat", "wat", "fgfi",
                                                "--beta", "0", "fgfi=0.001", "--bg-weight", "1",
                                                "--kd-layers", "17:17,20:20"]))
    assert cfg.alpha == 0 and cfg.betas == {"wat": 0.0, "fgfi": 0.001} and cfg.options["bg_weight"] == 1.0


def test_classes_checked_against_the_model_nc():
    check_classes(None, 6)
    check_classes([0, 5], 6)
    with pytest.raises(OptionError, match=r"--classes 2 99: the model has nc=6 classes, indices 0\.\.5; 99 is"):
        check_classes([2, 99], 6)


def test_checks_take_a_dict_and_skip_absent_options():
    check_train_options(argparse.Namespace(epochs=3))  # a partial namespace built in code
    check_export_options({"include": ["onnx"], "imgsz": [64], "batch_size": 1, "opset": 17})


# ----------------------------------------------------------------------------- outputs, in-process
@needs_dev_full
def test_writing_names_the_path_of_a_full_disk():
    with pytest.raises(OutputError) as e:
        with writing(DEV_FULL), open(DEV_FULL, "w") as f:
            f.write("x" * 100_000)
    assert str(e.value) == f"cannot write {DEV_FULL}: [Errno 28] No space left on device"
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(DEV_FULL) and isinstance(e.value, OSError)


@needs_dev_full
def test_results_csv_and_plots_on_a_full_disk_name_the_file():
    from utils.plots import _plt, save_figure
    from utils.results_log import append_row

    with pytest.raises(OutputError, match="cannot write /dev/full: .Errno 28"):
        append_row(DEV_FULL, ["a"], 0, [1.0])
    fig = _plt().figure()
    with pytest.raises(OutputError, match="cannot write /dev/full: .Errno 28"):
        save_figure(fig, DEV_FULL, 50)


def test_make_dir_and_imwrite_name_the_path(not_a_dir, tmp_path):
    with pytest.raises(OutputError, match=f"cannot write {not_a_dir}/exp: .Errno 20. Not a directory"):
        make_dir(not_a_dir / "exp")
    im = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(OutputError, match="its folder does not exist"):
        imwrite(tmp_path / "absent" / "x.jpg", im)
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(OutputError, match="x.jpg: it is a folder"):
        imwrite(tmp_path / "x.jpg", im)
    with pytest.raises(OutputError, match="cannot encode"):
        imwrite(tmp_path / "x.unknown", im)
    assert imwrite(tmp_path / "ok.png", im).is_file()
    (tmp_path / "best.onnx").mkdir()
    with pytest.raises(OutputError, match="best.onnx: a folder of that name is in the way"):
        refuse_folder_in_the_way(tmp_path / "best.onnx")


def test_run_cli_takes_oserrors_that_name_a_path_only(capsys):
    def fail(e):
        def main(_):
            raise e
        return main

    for e in (OSError(errno.EROFS, "Read-only file system", "/ro/exp"), OutputError("/x/last.pt", "[Errno 28] full")):
        with pytest.raises(SystemExit) as ex:
            run_cli(fail(e), lambda argv: None, "prog.py", [])
        err = capsys.readouterr().err
        assert ex.value.code == 1 and err.count("prog.py: error: ") == 1 and e.filename in err
    with pytest.raises(OSError):  # names no path: a bug, its traceback is kept
        run_cli(fail(OSError(errno.ENOSPC, "No space left on device")), lambda argv: None, "prog.py", [])
    renamed = OSError(errno.EXDEV, "Invalid cross-device link")
    renamed.filename, renamed.filename2 = "a.tmp", "b.pt"
    assert "a.tmp" in error_message(renamed) and "b.pt" in error_message(renamed)


def test_detect_exits_1_when_cv2_writes_nothing(world, tmp_path, monkeypatch, capsys):
    """cv2.imwrite answers False (a full disk, a read-only folder) instead of raising: rc 1 naming the file,
    and no 'Results saved' for images that were not written."""
    monkeypatch.setattr("cv2.imwrite", lambda *a, **k: False)
    args = ["--weights", str(world["weights"]), "--source", str(world["image"]), "--img", "64",
            "--project", str(tmp_path), "--name", "exp"]
    with pytest.raises(SystemExit) as e:
        run_cli(detect.main, detect.parse_opt, "detect.py", args)
    captured = capsys.readouterr()
    assert e.value.code == 1 and f"detect.py: error: cannot write {tmp_path / 'exp' / world['image'].name}" \
        in captured.err and "Results saved" not in captured.out + captured.err


# ----------------------------------------------------------------------------- entry points, subprocesses
def _train_args(w, *extra):
    return ["--data", w["data"], "--weights", w["weights"], "--img", "64", "--epochs", "1", "--workers", "0",
            "--noplots", *extra]


SUBPROCESS_CASES = [
    ("train.py", ["--patience", "-1"], "--patience"),
    ("train.py", ["--img", "100000"], "--imgsz"),
    ("train_kd.py", ["--alpha", NAN], "--alpha"),
    ("train_kd.py", ["--temperature", "0"], "--temperature"),
    ("val.py", ["--conf-thres", "2"], "--conf-thres"),
    ("detect.py", ["--vid-stride", "0"], "--vid-stride"),
    ("detect.py", ["--classes", "99"], "nc=6"),
    ("export.py", ["--opset", "1"], "--opset"),
    ("export.py", ["--batch-size", "0"], "--batch-size"),
    ("export.py", ["--device", "abc"], "--device"),
]


def _entry_args(script, w, tmp):
    common = {"train.py": _train_args(w, "--project", tmp),
              "train_kd.py": _train_args(w, "--project", tmp, "--teacher_weight", w["weights"]),
              "val.py": ["--weights", w["weights"], "--data", w["data"], "--img", "64", "--project", tmp],
              "detect.py": ["--weights", w["weights"], "--source", w["image"], "--img", "64", "--project", tmp],
              "export.py": ["--weights", w["weights"], "--img", "64"]}
    return common[script]


@pytest.mark.parametrize("script, args, names", SUBPROCESS_CASES,
                         ids=[f"{s} {' '.join(a)}" for s, a, _ in SUBPROCESS_CASES])
def test_entry_point_refuses_in_one_line(world, tmp_path, script, args, names):
    r = run_entry(script, *_entry_args(script, world, tmp_path), *args)
    assert_clear_error(r, script, names)
    assert not any(tmp_path.iterdir()), "refused before any output"


@pytest.mark.parametrize("script", ["train.py", "val.py", "detect.py"])
def test_unwritable_project_is_one_line_naming_it(world, not_a_dir, script):
    """--project below a regular file (chmod cannot stop root, a file in the path stops everyone)."""
    r = run_entry(script, *_entry_args(script, world, not_a_dir))
    assert_clear_error(r, script, str(not_a_dir))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_read_only_project(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_entry("detect.py", *_entry_args("detect.py", world, ro))
    finally:
        ro.chmod(0o755)
    assert_clear_error(r, "detect.py", str(ro))


@pytest.mark.parametrize("blocked, flags", [("{name}", []), ("labels/{stem}.txt", ["--save-txt", "--nosave"])],
                         ids=["image", "label"])
def test_detect_write_failure_exits_1_naming_the_file(world, tmp_path, blocked, flags):
    """A folder where detect.py writes an image or a label file: rc 1, one line naming it, no success line."""
    target = tmp_path / "exp" / blocked.format(name=world["image"].name, stem=world["image"].stem)
    target.mkdir(parents=True)
    r = run_entry("detect.py", *_entry_args("detect.py", world, tmp_path), "--exist-ok", "--conf-thres", "0.0001",
                  *flags)
    assert_clear_error(r, "detect.py", f"cannot write {target}")
    assert "Results saved" not in r.stdout + r.stderr

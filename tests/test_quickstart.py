"""The main job (quickstart.py) end to end on the embedded synthetic dataset, with a tiny budget; the report."""

import json

import pytest

import quickstart
from models.yolo import DetectionModel
from tests.test_engine import make_tiny_data
from utils import report
from utils.general import ROOT


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny_qs"), n_train=8, n_val=4)


def _param_count(cfg, nc):
    return sum(p.numel() for p in DetectionModel(ROOT / "models" / cfg, nc=nc).parameters())


def _common(tmp_path, data):
    return ["--data", str(data), "--img", "64", "--batch-size", "16", "--baseline", "--workers", "0", "--device", "cpu",
            "--project", str(tmp_path), "--report-images", "2"]


def test_quickstart_table_and_report(tiny_data, tmp_path):
    opt = quickstart.parse_opt(["--teacher-epochs", "1", "--student-epochs", "2", *_common(tmp_path, tiny_data)])
    rows = quickstart.main(opt)
    assert [r["run"] for r in rows] == ["teacher", "student_kd", "student_baseline"]
    by_run = {r["run"]: r for r in rows}
    nc = 2  # the tiny dataset
    assert by_run["teacher"]["params"] == _param_count("yolov5s.yaml", nc)
    assert by_run["student_kd"]["params"] == by_run["student_baseline"]["params"] == _param_count("yolov5n.yaml", nc)
    assert by_run["student_kd"]["GFLOPs"] < by_run["teacher"]["GFLOPs"]
    assert [r["epochs"] for r in rows] == [1, 2, 2]
    for r in rows:
        assert 0.0 <= r["mAP50-95"] <= r["mAP50"] <= 1.0 and r["ms/img"] > 0 and r["train s"] > 0
    out = tmp_path / "exp"
    table = (out / "results.md").read_text()
    assert table.startswith("| run | model | params | GFLOPs | mAP50 | mAP50-95 | ms/img | epochs | train s |")
    assert "| student_kd | yolov5n |" in table and "| teacher | yolov5s |" in table
    assert "Basis: both students 2 epochs, teacher 1 epochs" in table
    assert json.loads((out / "results.json").read_text()) == rows
    md = (out / "report.md").read_text()
    assert "KD student vs baseline" in md and "| blob |" in md and "![report](report.png)" in md
    assert (out / "report.png").stat().st_size > 10_000

    # the same report from the run folders, by the report tool
    again = report.main(report.parse_opt(["--teacher", str(out / "teacher"), "--student", str(out / "student_kd"),
                                          "--baseline", str(out / "student_baseline"), "--img", "64", "--data", str(tiny_data), "--device",
                                          "cpu", "--workers", "0", "--images", "0", "--out", str(tmp_path / "r")]))
    md2 = again.read_text()
    for r in rows:
        assert f"| {r['run']} | {r['params']:,} | {r['GFLOPs']} | {r['mAP50']} | {r['mAP50-95']} |" in md2


def test_quickstart_budget_plans_epochs_and_baseline_matches_kd(tiny_data, tmp_path, caplog_yolo):
    opt = quickstart.parse_opt([*_common(tmp_path, tiny_data), "--minutes", "0.8", "--report-images", "0"])
    rows = quickstart.main(opt)
    by_run = {r["run"]: r for r in rows}
    assert by_run["student_baseline"]["epochs"] == by_run["student_kd"]["epochs"] >= 1
    assert by_run["teacher"]["epochs"] >= 1
    log = caplog_yolo.text
    assert "quickstart: probe (img 64, batch 16" in log and "ETA" in log
    assert "quickstart: stage 5/5 validation of every model and the KD report" in log
    assert "quickstart: done in" in log


def test_quickstart_with_a_given_teacher_probes_it_and_skips_its_training(tiny_data, tmp_path, caplog_yolo):
    first = quickstart.main(quickstart.parse_opt([*_common(tmp_path / "t", tiny_data), "--teacher-epochs", "1",
                                                  "--student-epochs", "1", "--report-images", "0"]))
    teacher = tmp_path / "t" / "exp" / "teacher" / "weights" / "best.pt"
    rows = quickstart.main(quickstart.parse_opt([*_common(tmp_path, tiny_data), "--teacher-weight", str(teacher),
                                                 "--minutes", "0.7", "--report-images", "0"]))
    by_run = {r["run"]: r for r in rows}
    assert by_run["teacher"]["epochs"] is None and by_run["teacher"]["mAP50"] == first[0]["mAP50"]
    assert by_run["student_baseline"]["epochs"] == by_run["student_kd"]["epochs"] >= 1
    assert "quickstart: stage 1/4 dataset and machine probe" in caplog_yolo.text


"""The main job (quickstart.py) end to end on the embedded synthetic dataset, with a tiny budget."""

import json

import quickstart
from models.yolo import DetectionModel
from utils.general import ROOT


def _param_count(cfg, nc):
    return sum(p.numel() for p in DetectionModel(ROOT / "models" / cfg, nc=nc).parameters())


def test_quickstart_table(tmp_path):
    opt = quickstart.parse_opt(["--teacher-epochs", "1", "--student-epochs", "1", "--img", "64", "--batch-size", "16",
                                "--baseline", "--workers", "0", "--device", "cpu", "--project", str(tmp_path)])
    rows = quickstart.main(opt)
    assert [r["run"] for r in rows] == ["teacher", "student_kd", "student_baseline"]
    by_run = {r["run"]: r for r in rows}
    nc = 6  # data/synthetic.yaml
    assert by_run["teacher"]["params"] == _param_count("yolov5s.yaml", nc)
    assert by_run["student_kd"]["params"] == by_run["student_baseline"]["params"] == _param_count("yolov5n.yaml", nc)
    assert by_run["student_kd"]["GFLOPs"] < by_run["teacher"]["GFLOPs"]
    for r in rows:
        assert 0.0 <= r["mAP50-95"] <= r["mAP50"] <= 1.0 and r["ms/img"] > 0 and r["train s"] > 0
    out = tmp_path / "exp"
    table = (out / "results.md").read_text()
    assert table.startswith("| run | model | params | GFLOPs | mAP50 | mAP50-95 | ms/img | train s |")
    assert "| student_kd | yolov5n |" in table and "| teacher | yolov5s |" in table
    assert json.loads((out / "results.json").read_text()) == rows
    assert (out / "student_kd" / "weights" / "best.pt").is_file()

"""benchmarks/kd_convergence.py --smoke: every stage of ours trains, is validated, recorded and skipped once
done; an interrupted stage waits for --resume; a missing peer is a skip, not a crash."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_engine import make_tiny_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kd_convergence.py"
OURS = ["ours_teacher", "ours_base_s0", "ours_kd_s0"]


def run(tmp_path, *extra):
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--seeds", "0", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"),
           "--peer-python", str(tmp_path / "no-peer" / "python"), "--ours-args", "", *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_smoke_stages_record_resume_and_report(tmp_path):
    make_tiny_data(tmp_path / "data", n_train=8, n_val=4)
    res = tmp_path / "results"
    out = run(tmp_path, "--stages", *OURS, "peer_base_s0")
    assert "peer_base_s0: no peer python" in out
    for name in OURS:
        rec = json.loads((res / f"{name}.json").read_text())
        assert rec["epochs"] == 1 and len(rec["curve"]) == 1 and rec["curve"][0][0] == 1
        assert 0 <= rec["final"]["mAP50"] <= 1 and rec["train_wall_s"] > 0
        assert rec["attempts"][-1]["rc"] == 0
    assert (res / "ours_teacher.pt").is_file()  # a later sitting's students find their teacher here
    kd = json.loads((res / "ours_kd_s0.json").read_text())
    assert "--teacher_weight" in kd["attempts"][0]["cmd"]
    measure = json.loads((res / "measure.json").read_text())
    assert sorted(measure) == ["ours/yolov5n", "ours/yolov5s"]  # one timing per architecture, not per run
    assert measure["ours/yolov5n"]["params"] == 1772035 and measure["ours/yolov5n"]["ms_per_img"] > 0
    report = json.loads((res / "kd_convergence.json").read_text())
    rows = {(r["framework"], r["run"]): r for r in report["rows"]}
    kd_row = rows[("ours (yolov5-kd)", "output KD")]
    base_row = rows[("ours (yolov5-kd)", "baseline")]
    assert float(kd_row["KD gain mAP50"]) == round(kd_row["mAP50"] - base_row["mAP50"], 3)
    assert kd_row["CPU ms/img"] == base_row["CPU ms/img"] == measure["ours/yolov5n"]["ms_per_img"]
    assert report["stages_done"] == sorted(OURS)
    base = json.loads((res / "ours_base_s0.json").read_text())
    window = report["gain_by_window"][0]
    assert window["run"] == "ours output KD" and window["epochs 1-10"] == f"{kd['curve'][0][1] - base['curve'][0][1]:+.3f}"
    md = (res / "kd_convergence.md").read_text()
    assert md.count("| ours (yolov5-kd) |") == 7  # teacher, baseline, output KD + blank combo, gate, pkd, crosskd rows
    assert kd["precision"] in ("fp32", "bf16") and kd["cpu"]["model_name"] and kd["precision"] in kd_row["trained on"]
    assert (res / "kd_convergence.png").stat().st_size > 10_000

    # --measure trains nothing and times each architecture again, replacing an older sitting's per-stage entry
    (res / "measure.json").write_text(json.dumps({**measure, "ours_kd_s0": {"ms_per_img": 999.0}}))
    out = run(tmp_path, "--measure")
    assert "measure ours/yolov5n" in out and not [ln for ln in out.splitlines() if ln.startswith("$ ")]
    assert sorted(json.loads((res / "measure.json").read_text())) == ["ours/yolov5n", "ours/yolov5s"]

    # done stages are skipped; a stage whose training ended but whose result is gone is only re-validated
    (res / "ours_base_s0.json").unlink()
    out = run(tmp_path, "--stages", *OURS, "--no-measure")
    commands = [ln for ln in out.splitlines() if ln.startswith("$ ")]
    assert "ours_teacher: done" in out and not any("--name ours_base_s0" in c for c in commands)
    assert any("val.py" in c and "ours_base_s0" in c for c in commands)
    rec = json.loads((res / "ours_base_s0.json").read_text())
    assert len(rec["attempts"]) == 1

    # an attempt without an exit status was killed: it waits for --resume, which continues its last.pt
    (res / "ours_base_s0.json").unlink()
    att = tmp_path / "out" / "runs" / "ours_base_s0" / "kd_convergence_attempts.json"
    attempts = json.loads(att.read_text())
    del attempts[-1]["rc"], attempts[-1]["wall_s"]
    att.write_text(json.dumps(attempts))
    out = run(tmp_path, "--stages", "ours_base_s0", "--no-measure")
    assert "interrupted run" in out and "--resume" in out and not (res / "ours_base_s0.json").exists()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    a = kc.parse_args(["--smoke", "--out", str(tmp_path / "out"), "--results", str(res)])
    stage = next(s for s in kc.plan(a) if s["name"] == "ours_kd_s0")
    cmd, _ = kc.train_command(a, stage, tmp_path / "data.yaml", resume=True)
    assert cmd[1:] == ["train_kd.py", "--resume", str(tmp_path / "out" / "runs" / "ours_kd_s0" / "weights" / "last.pt")]
    (res / "peer_teacher.pt").write_bytes(b"")  # a teacher of an earlier sitting, found in --results
    peer = next(s for s in kc.plan(a) if s["name"] == "peer_kd_s0")
    cmd, env = kc.train_command(a, peer, tmp_path / "data.yaml", resume=False)
    pkd = next(s for s in kc.plan(a) if s["name"] == "ours_pkd_s0")
    assert kc.train_command(a, pkd, tmp_path / "data.yaml", resume=False)[0][-2:] == ["--feat", "pkd"]
    assert cmd[-2:] == ["--teacher", str(res / "peer_teacher.pt")] and env["YOLO_OFFLINE"] == "1"


def test_kd_gain_pairs_each_seed_with_its_own_baseline():
    """With a baseline of two seeds and a KD row of one, the gain is that seed's difference, not the difference
    of means over different seeds."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    a = kc.parse_args(["--seeds", "0", "1", "--variants"])
    stages = kc.plan(a)

    def rec(seed, m50):
        return {"seed": seed, "final": {"mAP50": m50, "mAP50-95": m50 / 2}, "train_img_per_s": 1.0, "epochs": 100,
                "converged": True, "curve": []}
    recs = {"ours_base_s0": rec(0, 0.70), "ours_base_s1": rec(1, 0.60), "ours_kd_s0": rec(0, 0.75)}
    rows = {r["run"]: r for r in kc.table_rows(stages, recs, {}) if r["_fw"] == "ours"}
    assert rows["baseline"]["mAP50"] == 0.65 and rows["output KD"]["KD gain mAP50"] == "+0.050"
    assert "KD gain mAP50" not in rows["best KD"]
    assert "teacher gap closed" not in rows["output KD"]  # no teacher record yet
    recs.update(ours_teacher=rec(0, 0.80), ours_kd_s1=rec(1, 0.65))
    rows = {r["run"]: r for r in kc.table_rows(stages, recs, {}) if r["_fw"] == "ours"}
    # seed 0 takes 0.05 of a 0.10 headroom, seed 1 0.05 of 0.20: mean 37.5% (not 0.05 / 0.15 of the means)
    assert rows["output KD"]["teacher gap closed"] == "38%" and rows["output KD"]["KD gain mAP50"] == "+0.050"


def test_gain_by_class_reads_val_rows_and_pairs_seeds():
    """val.py's per-class rows (names with spaces too) become the record's per_class; the report's per-class
    table gives each KD run's gain over its own seed's baseline, beside the teacher."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    def val_text(all50, rows):
        head = "                 Class     Images  Instances          P          R      mAP50   mAP50-95\n"
        body = "".join(f"{n:>22}        360        100      0.5      0.5      {m:.3f}      {m / 2:.3f}\n"
                       for n, m in rows)
        epoch_row = "                   all        360        843      0.1      0.1      0.100      0.050\n"
        return epoch_row + head + f"{'all':>22}        360        843      0.6      0.6      {all50:.3f}      0.300\n" + body

    base = kc.parse_class_rows(val_text(0.6, [("crazing", 0.5), ("traffic light", 0.7)]))
    assert base == {"crazing": {"mAP50": 0.5, "mAP50-95": 0.25}, "traffic light": {"mAP50": 0.7, "mAP50-95": 0.35}}
    assert kc.parse_class_rows("no table here") == {}
    a = kc.parse_args(["--seeds", "0", "1", "--variants"])
    stages = kc.plan(a)

    def rec(per_class):
        return {"final": {"per_class": per_class}}
    recs = {"ours_teacher": rec({"crazing": {"mAP50": 0.45}, "traffic light": {"mAP50": 0.9}}),
            "ours_base_s1": rec(base), "ours_base_s0": rec({}),
            "ours_kd_s1": rec({"crazing": {"mAP50": 0.52}, "traffic light": {"mAP50": 0.75}}),
            "ours_kd_s0": rec({"crazing": {"mAP50": 0.9}})}  # its baseline has no classes: left out
    rows, cols = kc.gain_by_class(stages, recs)
    assert cols == ["class", "teacher yolov5s", "baseline s1", "output KD s1 (gain)"]
    by = {r["class"]: r for r in rows}
    assert by["crazing"]["teacher yolov5s"] == 0.45 and by["crazing"]["output KD s1 (gain)"] == "0.520 (+0.020)"
    assert by["traffic light"]["output KD s1 (gain)"] == "0.750 (+0.050)"


def test_extra_teacher_rows_pair_with_their_own_teacher():
    """--extra-teachers yolov5m adds its teacher stage and output-KD rows from it; each KD row's headroom share
    is over its own teacher, and the goal takes the best output-KD row (naming it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    a = kc.parse_args(["--seeds", "0", "--variants", "--extra-teachers", "yolov5m"])
    stages = {s["name"]: s for s in kc.plan(a)}
    assert stages["ours_teacher_yolov5m"]["model"] == "yolov5m" and stages["ours_teacher"]["model"] == "yolov5s"
    kd_m = stages["ours_kd_yolov5m_s0"]
    assert kd_m["teacher"] == "ours_teacher_yolov5m" and kd_m["flags"] == ["--feat", "none"]

    def rec(seed, m50):
        return {"seed": seed, "final": {"mAP50": m50, "mAP50-95": m50 / 2}, "train_img_per_s": 1.0, "epochs": 100,
                "converged": True, "curve": []}
    recs = {"ours_teacher": rec(0, 0.72), "ours_teacher_yolov5m": rec(0, 0.80), "ours_base_s0": rec(0, 0.70),
            "ours_kd_s0": rec(0, 0.71), "ours_kd_yolov5m_s0": rec(0, 0.75)}
    rows = kc.table_rows(list(stages.values()), recs, {})
    by = {r["run"]: r for r in rows if r["_fw"] == "ours"}
    assert [r["model"] for r in rows if r["run"] == "teacher" and r["_fw"] == "ours"] == ["yolov5s", "yolov5m"]
    assert by["output KD"]["teacher gap closed"] == "50%"  # 0.01 of the yolov5s teacher's 0.02
    assert by["output KD (yolov5m teacher)"]["teacher gap closed"] == "50%"  # 0.05 of the yolov5m teacher's 0.10
    g = kc.goals(rows)
    assert g["ours_output_kd_row"] == "output KD (yolov5m teacher)" and g["ours_output_kd_gain_mAP50"] == 0.05
    assert g["ours_gain_at_least_0.02"] is True


def test_default_variants_include_the_gate_and_goals_name_the_best_kd_row_with_its_seeds():
    """The gated output-KD row is planned by default; the goals keep judging output KD alone, and name the best
    KD row of any method with how many seeds back it (one seed is not a mean of two)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    stages = {s["name"]: s for s in kc.plan(kc.parse_args(["--seeds", "0", "1"]))}
    assert stages["ours_gate_s1"]["flags"] == ["--kd-gate", "teacher_better", "--feat", "none"]
    assert stages["ours_gate_s0"]["role"] == "output KD + gate"

    def rec(seed, m50):
        return {"seed": seed, "final": {"mAP50": m50, "mAP50-95": m50 / 2}, "train_img_per_s": 1.0, "epochs": 100,
                "converged": True, "curve": []}
    recs = {"ours_teacher": rec(0, 0.75), "ours_base_s0": rec(0, 0.70), "ours_base_s1": rec(1, 0.68),
            "ours_kd_s0": rec(0, 0.71), "ours_kd_s1": rec(1, 0.70), "ours_gate_s0": rec(0, 0.74)}
    g = kc.goals(kc.table_rows(list(stages.values()), recs, {}))
    assert g["ours_output_kd_row"] == "output KD" and g["ours_output_kd_gain_mAP50"] == pytest.approx(0.015)
    assert g["ours_best_kd_row"] == "output KD + gate" and g["ours_best_kd_gain_mAP50"] == pytest.approx(0.04)
    assert g["ours_best_kd_seeds"] == 1 and g["ours_gain_at_least_0.02"] is False
    assert g["ours_default_kd_row"] is None and g["ours_goal_row"] == "output KD"  # no default-flags record yet

    # train_kd.py's defaults (output KD + pkd): once that row has a gain, the goals judge it, not output KD alone
    assert stages["ours_kd_s0"]["flags"] == ["--feat", "none"]
    assert stages["ours_gate_s0"]["flags"][-2:] == ["--feat", "none"]
    assert kc.trains_with_defaults(stages["ours_pkd_s0"]["flags"]) and kc.trains_with_defaults([])
    assert not kc.trains_with_defaults(stages["ours_kd_s0"]["flags"]) and not kc.trains_with_defaults(["--feat", "at"])
    recs.update({"ours_pkd_s0": rec(0, 0.73), "ours_pkd_s1": rec(1, 0.70)})
    g = kc.goals(kc.table_rows(list(stages.values()), recs, {}))
    assert g["ours_default_kd_row"] == g["ours_goal_row"] == "output KD + pkd" and g["ours_default_kd_seeds"] == 2
    assert g["ours_default_kd_gain_mAP50"] == pytest.approx(0.025) and g["ours_gain_at_least_0.02"] is True
    assert g["ours_output_kd_gain_mAP50"] == pytest.approx(0.015)  # still reported beside it


def test_gate_shares_are_read_into_the_record_with_epochs_from_one(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kd_convergence as kc

    assert kc.read_gate_shares(tmp_path) is None  # an ungated run has no kd_gate.csv
    (tmp_path / "kd_gate.csv").write_text("epoch,kept_share\n0,0.80749\n1,0.84922\n")
    assert kc.read_gate_shares(tmp_path) == [[1, 0.8075], [2, 0.8492]]

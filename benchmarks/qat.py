r"""PTQ, QAT alone and QAT+KD for one trained student, each deployed as OpenVINO INT8 (issue 27).

    python benchmarks/qat.py --student best.pt --teacher teacher.pt --data data.yaml [--epochs 5] [--smoke]

Stages (each a run folder under --out, skipped when its result is in qat.json, so the script resumes):
- ptq:    the student as it is, quantized post-training by export.py --int8 (NNCF, 300 train images);
- ft_kd:  fine-tuned --epochs in float with the teacher distilling (control: what the extra epochs give alone);
- qat:    fine-tuned --epochs with --qat (INT8 fake quantization), no teacher;
- qat_kd: fine-tuned --epochs with --qat while the float teacher distils (train_kd.py --qat).
Fine-tuning uses data/hyps/hyp.qat.yaml (lr0 0.0002, no warmup; --lr0 to change). Every result is validated on
the val split at --img with the same square letterbox (the float checkpoint in PyTorch and its OpenVINO INT8
export). Writes qat.{json,md} in --out.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("ptq", "ft_kd", "qat", "qat_kd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the trained (distilled) student's best.pt")
    p.add_argument("--teacher", required=True, help="the teacher for ft_kd and qat_kd")
    p.add_argument("--data", default="data/NEU-DET.yaml")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr0", type=float, default=None, help="fine-tuning lr0 instead of hyp.qat.yaml's 0.0002")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--smoke", action="store_true", help="1 epoch, 8 calibration images: tests the harness")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "qat"))
    return p.parse_args(argv)


def fine_tune_hyp(a, out):
    """data/hyps/hyp.qat.yaml, or a copy of it in out with --lr0 in place."""
    from utils.general import yaml_load, yaml_save

    src = ROOT / "data" / "hyps" / "hyp.qat.yaml"
    if a.lr0 is None:
        return src
    hyp = {**yaml_load(src), "lr0": a.lr0}
    yaml_save(out / "hyp.yaml", hyp)
    return out / "hyp.yaml"


def fine_tune(a, stage, out):
    """Train one fine-tuning stage in a child process (resumed from its last.pt if interrupted) -> best.pt."""
    run = out / "runs" / stage
    best, last, finished = run / "weights" / "best.pt", run / "weights" / "last.pt", run / "finished"
    if best.exists() and finished.exists():
        return best
    script = "train_kd.py" if stage.endswith("_kd") else "train.py"
    if last.exists():
        cmd = [sys.executable, script, "--resume", str(last)]
    else:
        cmd = [sys.executable, script, "--weights", a.student, "--data", a.data, "--img", str(a.img),
               "--epochs", str(1 if a.smoke else a.epochs), "--batch-size", str(a.batch_size),
               "--hyp", str(fine_tune_hyp(a, out)), "--workers", str(a.workers),
               "--project", str(out / "runs"), "--name", stage, "--exist-ok", "--noautoanchor", "--noplots",
               "--cache", "ram"]
        cmd += ["--qat"] if stage.startswith("qat") else []
        cmd += ["--teacher_weight", a.teacher] if stage.endswith("_kd") else []
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train.log", "a") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    finished.touch()
    return best


def evaluate(a, weights, folder):
    """Float and OpenVINO INT8 (mAP50, mAP50-95) of weights on the val split, same square inputs."""
    import export
    from benchmarks.deploy import validate

    folder.mkdir(parents=True, exist_ok=True)
    local = folder / "best.pt"
    shutil.copyfile(weights, local)
    export.run(weights=local, imgsz=[a.img], include=["openvino"], int8=True, data=a.data,
               calib_images=8 if a.smoke else a.calib_images)
    float_map = validate(a, local, a.img, folder, "float", rect=False)
    int8_map = validate(a, folder / "best_int8_openvino_model", a.img, folder, "int8", rect=False)
    return {"float mAP50": float_map[0], "float mAP50-95": float_map[1],
            "INT8 mAP50": int8_map[0], "INT8 mAP50-95": int8_map[1]}


def main(argv=None):
    a = parse_args(argv)
    from utils.precision import cpu_description
    from utils.report import markdown_table

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "qat.json"
    done = json.loads(record.read_text())["rows"] if record.exists() else {}
    for stage in a.stages:
        if stage in done:
            print(f"[qat] {stage}: done before, {done[stage]}", flush=True)
            continue
        t0 = time.time()
        weights = a.student if stage == "ptq" else fine_tune(a, stage, out)
        done[stage] = {"stage": stage, "epochs": 0 if stage == "ptq" else (1 if a.smoke else a.epochs),
                       **evaluate(a, weights, out / "eval" / stage), "minutes": round((time.time() - t0) / 60, 1)}
        print(f"[qat] {stage}: {done[stage]}", flush=True)
        record.write_text(json.dumps({"settings": vars(a), "cpu": cpu_description(), "rows": done}, indent=1))
    rows = [done[s] for s in STAGES if s in done]
    ref = done.get("ptq", {}).get("float mAP50")
    for r in rows:
        r["INT8 - float"] = round(r["INT8 mAP50"] - r["float mAP50"], 4)
        if ref is not None:
            r["INT8 - student float"] = round(r["INT8 mAP50"] - ref, 4)
    cols = ["stage", "epochs", "float mAP50", "INT8 mAP50", "INT8 - float", "INT8 - student float",
            "float mAP50-95", "INT8 mAP50-95"]
    md = (f"PTQ vs QAT vs QAT+KD: student {a.student}, teacher {a.teacher}, fine-tuning lr0 "
          f"{a.lr0 or 0.0002}, val {a.data} at img {a.img} (square "
          f"letterbox), OpenVINO INT8 via NNCF ({a.calib_images} train images), {cpu_description()}\n\n"
          f"{markdown_table(rows, [c for c in cols if any(c in r for r in rows)])}\n")
    (out / "qat.md").write_text(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()

r"""The KD claim at convergence, side by side with the `ultralytics` package's own distillation (issue 26).

    python benchmarks/kd_convergence.py --setup-peer          # once: ultralytics in its own venv (offline after)
    python benchmarks/kd_convergence.py                       # every stage not done yet; resumable
    python benchmarks/kd_convergence.py --resume              # also continue a stage that was interrupted
    python benchmarks/kd_convergence.py --stages ours_teacher ours_base_s0   # a subset
    python benchmarks/kd_convergence.py --report              # only rebuild the table and picture
    python benchmarks/kd_convergence.py --smoke               # every stage, 1 epoch, a few images (tests the harness)

Stages, all on the same data (NEU-DET at img 224, batch 16), the same epochs, cache and workers:
- ours: teacher yolov5s (train.py), students yolov5n alone, + output KD alone (`--feat none`), + --combo flags
  (the best combination found so far), + each --variants row (default: output KD gated to the cells where
  the teacher beats the student, output KD + pkd (train_kd.py's defaults), + crosskd), + output KD
  from each --extra-teachers model (its own teacher stage), seeds from --seeds; every run --noautoanchor, so all
  share anchors; each record names the CPU and precision it trained in;
- peer: ultralytics (in its own venv, models from YAML, no pretrained weights, offline): teacher yolo11s,
  students yolo11n alone and with `distill_model=` that teacher (its default `dis`);
- measure: parameters, GFLOPs and batch-1 CPU latency of each trained architecture, one entry per model shared
  by its rows (`--measure` times them all again in one pass: run it on a quiet machine).

Each stage is a run folder under --out/runs/<stage>. A finished stage writes <stage>.json to --results (small:
final mAP of best.pt by its framework's own val, mAP per epoch, wall time): that file, not best.pt (written
from the first epoch on), marks it done, and it is what is committed, so another machine skips it. The
teachers' best.pt are copied beside it (students of a later sitting need them). A stage with a last.pt and
no result was interrupted: --resume continues it (train.py --resume / ultralytics resume=True).
Outputs: kd_convergence.{json,md,png} in --results.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_kd  # noqa: E402
from utils.distill.config import KDConfig  # noqa: E402
from vs_upstream import ALL_ROW, cpu_info, link_split, offline_env, ours_env, parse_val_log  # noqa: E402

OUT = ROOT / "runs" / "benchmarks" / "kd_convergence"
RESULTS = ROOT / "benchmarks" / "results" / "kd_convergence"
PEER_VENV = Path.home() / ".cache" / "yolov5kd" / "venv-ultralytics"
PEER_PIN = "ultralytics==8.4.190"
PEER_SCRIPT = ROOT / "benchmarks" / "peer_ultralytics.py"
# framework -> results.csv column of mAP50 / mAP50-95 per epoch
CURVE_COLUMNS = {"ours": ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95"),
                 "peer": ("metrics/mAP50(B)", "metrics/mAP50-95(B)")}
CONVERGED_WITHIN = 0.01  # best epoch's mAP50 within this of the mean of the last 10 epochs
LAST_EPOCHS = 10
# remedies for a gain that shrinks at convergence, each on top of output KD: the two the issue names, and
# output KD only where the teacher beats the student (the per-class finding: KD cost the class the teacher trails)
VARIANTS = ("gate=--kd-gate teacher_better --feat none", "pkd=--feat pkd", "crosskd=--feat crosskd")
OUTPUT_KD_ALONE = ["--feat", "none"]  # every row names its feature losses: train_kd.py's default is not fixed


def trains_with_defaults(flags):
    """True when train_kd.py `flags` give exactly its default KD options (as train_kd.py itself parses them)."""
    return KDConfig.from_opt(train_kd.parse_opt(flags)) == KDConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "NEU-DET"),
                   help="a YOLO-format dataset folder with images/{train,val} and labels/{train,val}")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--hyp", default="data/hyps/hyp.scratch-low.yaml", help="ours (the peer keeps its defaults)")
    p.add_argument("--combo", default="--feat at", help="train_kd.py flags of the 'best combination' row")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), metavar="NAME=FLAGS",
                   help="further KD rows of ours, each 'name=train_kd.py flags' (stage ours_<name>_s<seed>)")
    p.add_argument("--extra-teachers", nargs="*", default=[], metavar="MODEL",
                   help="more teachers of ours (e.g. yolov5m): stages ours_teacher_<MODEL> and, per seed, "
                        "ours_kd_<MODEL>_s<seed> (output KD from it)")
    p.add_argument("--ours-args", default="--cache ram", help="extra flags for every ours run")
    p.add_argument("--peer-python", default=str(PEER_VENV / "bin" / "python"))
    p.add_argument("--peer-teacher", default="yolo11s.yaml")
    p.add_argument("--peer-student", default="yolo11n.yaml")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages (default: all)")
    p.add_argument("--resume", action="store_true", help="continue interrupted stages")
    p.add_argument("--report", action="store_true", help="only rebuild the table and picture")
    p.add_argument("--no-measure", action="store_true", help="skip the speed/size measurements")
    p.add_argument("--measure", action="store_true",
                   help="train nothing: time every trained architecture again in one pass (on a quiet machine)")
    p.add_argument("--smoke", action="store_true", help="1 epoch, 8 train / 4 val images, img 64, batch 4")
    p.add_argument("--setup-peer", action="store_true", help=f"create the peer venv ({PEER_PIN}) and exit")
    p.add_argument("--out", default=None, help=f"run folders (default {OUT.relative_to(ROOT)})")
    p.add_argument("--results", default=None, help=f"small result files (default {RESULTS.relative_to(ROOT)})")
    a = p.parse_args(argv)
    if a.smoke:
        a.epochs, a.img, a.batch, a.n_train, a.n_val = 1, 64, 4, 8, 4
        a.out = a.out or str(OUT.parent / "kd_convergence_smoke")
        a.results = a.results or str(Path(a.out) / "results")
    else:
        a.n_train = a.n_val = None  # the whole splits
    a.variants = parse_variants(p, a.variants)
    a.out = Path(a.out or OUT)
    a.results = Path(a.results or RESULTS / f"neu_e{a.epochs}_img{a.img}")
    return a


def parse_variants(parser, items):
    """['name=flags', ...] -> [(name, [flag, ...])]; a bad item is one argparse error."""
    out = []
    for item in items:
        name, sep, flags = item.partition("=")
        if not sep or not name.isidentifier() or not flags.strip():
            parser.error(f"--variants: {item!r} is not NAME=FLAGS (e.g. 'pkd=--feat pkd')")
        out.append((name, shlex.split(flags)))
    return out


# ----------------------------------------------------------------------------- plan
def plan(a):
    """Every stage, in run order: the teachers, then each seed's students (ours, then the peer's)."""
    stages = [{"name": "ours_teacher", "framework": "ours", "role": "teacher", "model": "yolov5s", "seed": 0},
              *({"name": f"ours_teacher_{t}", "framework": "ours", "role": "teacher", "model": t, "seed": 0}
                for t in a.extra_teachers),
              {"name": "peer_teacher", "framework": "peer", "role": "teacher",
               "model": Path(a.peer_teacher).stem, "seed": 0}]
    for s in a.seeds:
        stages += [
            {"name": f"ours_base_s{s}", "framework": "ours", "role": "baseline", "model": "yolov5n", "seed": s},
            {"name": f"ours_kd_s{s}", "framework": "ours", "role": "output KD", "model": "yolov5n", "seed": s,
             "teacher": "ours_teacher", "flags": OUTPUT_KD_ALONE},
            *({"name": f"ours_kd_{t}_s{s}", "framework": "ours", "role": f"output KD ({t} teacher)", "model": "yolov5n",
               "seed": s, "teacher": f"ours_teacher_{t}", "flags": OUTPUT_KD_ALONE} for t in a.extra_teachers),
            {"name": f"ours_combo_s{s}", "framework": "ours", "role": "best KD", "model": "yolov5n", "seed": s,
             "teacher": "ours_teacher", "flags": shlex.split(a.combo)},
            *({"name": f"ours_{name}_s{s}", "framework": "ours", "role": f"output KD + {name}", "model": "yolov5n",
               "seed": s, "teacher": "ours_teacher", "flags": flags} for name, flags in a.variants),
            {"name": f"peer_base_s{s}", "framework": "peer", "role": "baseline",
             "model": Path(a.peer_student).stem, "seed": s},
            {"name": f"peer_kd_s{s}", "framework": "peer", "role": "KD (distill_model)",
             "model": Path(a.peer_student).stem, "seed": s, "teacher": "peer_teacher"}]
    if a.stages:
        unknown = sorted(set(a.stages) - {s["name"] for s in stages})
        if unknown:
            raise SystemExit(f"kd_convergence: unknown stage(s) {', '.join(unknown)}; known: "
                             + ", ".join(s["name"] for s in stages))
    return stages


def dataset_yamls(a):
    """One linked copy of the data per framework (each writes its own label caches, never into shared/)."""
    import yaml

    src = Path(a.data)
    names = yaml.safe_load((ROOT / "data" / "NEU-DET.yaml").read_text())["names"]
    counts = {split: a.n_train if split == "train" else a.n_val for split in ("train", "val")}
    yamls = {}
    for fw in CURVE_COLUMNS:
        d = a.out / "data" / fw
        stamp = {"src": str(src), **counts}
        if not (d / "subset.json").is_file() or json.loads((d / "subset.json").read_text()) != stamp:
            for split, n in counts.items():
                n = n if n is not None else len(list((src / "images" / split).glob("*.jpg")))
                link_split(split, d, split, n, src=src)
            (d / "subset.json").write_text(json.dumps(stamp))
        f = d / "data.yaml"
        f.write_text(yaml.safe_dump({"path": str(d.resolve()), "train": "images/train", "val": "images/val",
                                     "names": names}, sort_keys=False))
        yamls[fw] = f
    return yamls


# ----------------------------------------------------------------------------- commands
def teacher_weights(a, stage):
    """The teacher's best.pt: its run folder's, else the copy in --results (a stage of another sitting)."""
    name = stage["teacher"]
    for f in (a.out / "runs" / name / "weights" / "best.pt", a.results / f"{name}.pt"):
        if f.is_file():
            return f
    raise SystemExit(f"kd_convergence: {stage['name']} needs the teacher of stage {name}: run that stage first")


def train_command(a, stage, data, resume):
    """(argv, env) that trains (or resumes) the stage."""
    run_dir = a.out / "runs" / stage["name"]
    if stage["framework"] == "ours":
        script = "train_kd.py" if stage.get("teacher") else "train.py"
        if resume:
            return [sys.executable, script, "--resume", str(run_dir / "weights" / "last.pt")], ours_env()
        cmd = [sys.executable, script, "--data", str(data), "--cfg", f"models/{stage['model']}.yaml",
               "--weights", "", "--hyp", a.hyp, "--epochs", str(a.epochs), "--img", str(a.img),
               "--batch-size", str(a.batch), "--seed", str(stage["seed"]), "--workers", str(a.workers),
               "--project", str(a.out / "runs"), "--name", stage["name"], "--exist-ok", "--noautoanchor",
               "--noplots", *shlex.split(a.ours_args)]
        if stage.get("teacher"):
            cmd += ["--teacher_weight", str(teacher_weights(a, stage)), *stage["flags"]]
        return cmd, ours_env()
    cmd = [a.peer_python, str(PEER_SCRIPT), "train", "--cfg", f"{stage['model']}.yaml", "--data", str(data),
           "--epochs", str(a.epochs), "--img", str(a.img), "--batch", str(a.batch), "--seed", str(stage["seed"]),
           "--workers", str(a.workers), "--project", str(a.out / "runs"), "--name", stage["name"]]
    if resume:
        cmd.append("--resume")
    elif stage.get("teacher"):
        cmd += ["--teacher", str(teacher_weights(a, stage))]
    return cmd, peer_env(a)


def peer_env(a):
    env = offline_env(a.out / "peer_config")
    env["PYTHONPATH"] = str(ROOT)  # utils.profiler for `measure`; ultralytics' own packages are namespaced
    return env


def run_logged(cmd, env, log):
    """Run cmd with its output to log -> exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(str(c) for c in cmd)}  > {log}", flush=True)
    with open(log, "a") as f:
        return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                              check=False).returncode


def result_line(log):
    """The `RESULT {json}` line a peer command printed last, as a dict."""
    lines = [s for s in Path(log).read_text(errors="ignore").splitlines() if s.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


# ----------------------------------------------------------------------------- one stage
def read_curve(stage, run_dir):
    """[[epoch, mAP50, mAP50-95], ...] from the run's results.csv (epochs counted from 1)."""
    from utils.plots import read_results_csv

    header, rows = read_results_csv(run_dir / "results.csv")
    c50, c95 = (header.index(c) for c in CURVE_COLUMNS[stage["framework"]])
    first = 1 if stage["framework"] == "ours" else 0  # ours counts epochs from 0, ultralytics from 1
    return [[int(r[header.index("epoch")]) + first, round(float(r[c50]), 4), round(float(r[c95]), 4)] for r in rows]


def read_gate_shares(run_dir):
    """[[epoch, kept share], ...] from a --kd-gate run's kd_gate.csv (the share of output KD its gate kept), or None."""
    f = run_dir / "kd_gate.csv"
    if not f.is_file():
        return None
    rows = [ln.split(",") for ln in f.read_text().splitlines()[1:] if ln.strip()]
    return [[int(e) + 1, round(float(v), 4)] for e, v in rows]  # epochs from 1, like the curve


def convergence(curve):
    """Best epoch's mAP50 against the mean of the last 10 epochs' (the issue's criterion)."""
    m50 = [c[1] for c in curve]
    last = statistics.fmean(m50[-LAST_EPOCHS:])
    best = max(m50)
    return {"best_epoch_mAP50": best, f"last{LAST_EPOCHS}_mean_mAP50": round(last, 4),
            "converged": len(m50) >= LAST_EPOCHS and best - last <= CONVERGED_WITHIN}


def final_val(a, stage, data, run_dir):
    """mAP of best.pt by its framework's own val (ours: val.py, float32; peer: model.val)."""
    best = run_dir / "weights" / "best.pt"
    log = run_dir / "final_val.log"
    log.unlink(missing_ok=True)
    if stage["framework"] == "ours":
        cmd = [sys.executable, "val.py", "--data", str(data), "--weights", str(best), "--img", str(a.img),
               "--batch-size", "32", "--workers", str(a.workers), "--project", str(run_dir), "--name", "final_val",
               "--exist-ok"]
        rc = run_logged(cmd, ours_env(), log)
        text = log.read_text(errors="ignore") if rc == 0 else ""
        r = parse_val_log(text)
        return {**{k: r[k] for k in ("mAP50", "mAP50-95")}, "per_class": parse_class_rows(text)} if r else None
    cmd = [a.peer_python, str(PEER_SCRIPT), "val", "--weights", str(best), "--data", str(data), "--img", str(a.img),
           "--workers", str(a.workers)]
    return result_line(log) if run_logged(cmd, peer_env(a), log) == 0 else None


CLASS_ROW = re.compile(r"^\s*(.+?)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_class_rows(text):
    """The per-class rows val.py prints under its last 'all' row -> {class: {'mAP50', 'mAP50-95'}}."""
    lines = re.split(r"[\r\n]", text)
    last_all = max((i for i, ln in enumerate(lines) if ALL_ROW.match(ln)), default=None)
    out = {}
    for ln in lines[last_all + 1:] if last_all is not None else ():
        m = CLASS_ROW.match(ln)
        if m and m.group(1) != "all":
            out[m.group(1)] = {"mAP50": float(m.group(6)), "mAP50-95": float(m.group(7))}
    return out


def training_precision(stage, run_dir):
    """The precision the stage trained in: our train.log's 'precision:' line(s) (one per attempt, several when a
    resume ran on another machine); ultralytics on a CPU always trains in float32 (its AMP is CUDA-only)."""
    if stage["framework"] == "peer":
        return "fp32"
    log = run_dir / "train.log"
    text = log.read_text(errors="ignore") if log.is_file() else ""
    seen = [line.split()[1] for line in text.splitlines() if line.startswith("precision: ") and len(line.split()) > 1]
    return "+".join(dict.fromkeys(seen)) or None


def machine_label(record):
    """'<CPU model> (<speed flags>), <precision>' of a stage record; records of older sittings lack them."""
    cpu = record.get("cpu")
    where = (f"{cpu['model_name']} ({', '.join(k for k, v in cpu['flags'].items() if v) or 'no avx2/avx512'})"
             if cpu else "not recorded")
    return f"{where}, {record.get('precision') or 'precision not recorded'}"


def attempts_file(run_dir):
    return run_dir / "kd_convergence_attempts.json"


def close_attempts(run_dir):
    """Wall seconds of earlier attempts: an attempt killed mid-run is counted up to its last finished epoch
    (results.csv's modification time)."""
    f = attempts_file(run_dir)
    attempts = json.loads(f.read_text()) if f.is_file() else []
    csv = run_dir / "results.csv"
    for att in attempts:
        if att.get("wall_s") is None:
            att["wall_s"] = round(max(csv.stat().st_mtime - att["start"], 0.0), 1) if csv.is_file() else 0.0
    return attempts


def train_stage(a, stage, data, run_dir):
    """Train the stage, or continue it with --resume -> its attempts (each with wall_s), or None when it did not
    finish. An attempt that ended with exit 0 is not repeated (a later step may have failed)."""
    attempts = close_attempts(run_dir)
    if attempts and attempts[-1].get("rc") == 0 and (run_dir / "weights" / "best.pt").is_file():
        return attempts
    interrupted = (run_dir / "weights" / "last.pt").is_file()
    if interrupted and not a.resume:
        print(f"[kd_convergence] {stage['name']}: interrupted run in {run_dir}: pass --resume to continue it "
              f"(or delete the folder to restart it); skipped", flush=True)
        return None
    if stage["framework"] == "peer" and not Path(a.peer_python).is_file():
        print(f"[kd_convergence] {stage['name']}: no peer python {a.peer_python} (run --setup-peer); skipped",
              flush=True)
        return None
    cmd, env = train_command(a, stage, data, resume=interrupted)
    attempts = attempts if interrupted else []
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = {"start": time.time(), "resumed": interrupted, "cmd": shlex.join(str(c) for c in cmd)}
    attempts.append(attempt)
    attempts_file(run_dir).write_text(json.dumps(attempts, indent=1))
    attempt["rc"] = run_logged(cmd, env, run_dir / "train.log")
    attempt["wall_s"] = round(time.time() - attempt["start"], 1)
    attempts_file(run_dir).write_text(json.dumps(attempts, indent=1))
    if attempt["rc"] != 0 or not (run_dir / "weights" / "best.pt").is_file():
        print(f"[kd_convergence] {stage['name']} FAILED (exit {attempt['rc']}): see {run_dir / 'train.log'}",
              flush=True)
        return None
    return attempts


def run_stage(a, stage, data):
    """Train (or resume) one stage, validate its best.pt, write <stage>.json -> its record, or None."""
    run_dir = a.out / "runs" / stage["name"]
    attempts = train_stage(a, stage, data, run_dir)
    if attempts is None:
        return None
    final = final_val(a, stage, data, run_dir)
    if final is None:
        print(f"[kd_convergence] {stage['name']}: validation of best.pt FAILED: see {run_dir / 'final_val.log'}",
              flush=True)
        return None
    curve = read_curve(stage, run_dir)
    train_s = sum(att["wall_s"] for att in attempts)
    n_train = len(list((Path(data).parent / "images" / "train").glob("*.jpg")))
    record = {**stage, "final": final, "epochs": len(curve), "curve": curve,
              **convergence(curve), "cpu": cpu_info(), "precision": training_precision(stage, run_dir),
              "gate_kept": read_gate_shares(run_dir), "train_wall_s": round(train_s, 1),
              "train_img_per_s": round(n_train * len(curve) / train_s, 2) if train_s else None,
              "attempts": attempts, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    a.results.mkdir(parents=True, exist_ok=True)
    if stage["role"] == "teacher":
        shutil.copy(run_dir / "weights" / "best.pt", a.results / f"{stage['name']}.pt")
    (a.results / f"{stage['name']}.json").write_text(json.dumps(record, indent=1))
    print(f"[kd_convergence] {stage['name']}: mAP50 {final['mAP50']} "
          f"(best epoch {record['best_epoch_mAP50']}, converged {record['converged']}), {train_s / 60:.1f} min",
          flush=True)
    return record


# ----------------------------------------------------------------------------- measure
def arch_key(stage):
    """Size and latency depend on the architecture, not on a run's weights: one measurement per
    framework/model, shared by every row of it, all timed in one pass on one CPU."""
    return f"{stage['framework']}/{stage['model']}"


def stage_weights(a, stage):
    """The stage's best.pt on this machine (a teacher's also from --results), else None."""
    best = a.out / "runs" / stage["name"] / "weights" / "best.pt"
    if not best.is_file() and stage["role"] == "teacher":
        best = a.results / f"{stage['name']}.pt"
    return best if best.is_file() else None


def measure_all(a, stages, recs, again=False):
    """measure.json: one entry per architecture with a finished stage whose weights are here, only the missing
    ones, or (again) every one anew in this one pass, replacing what older sittings timed (their per-stage
    entries of that architecture too); an architecture without weights here keeps its old entry."""
    measures, timed = load_measures(a), set()
    for s in stages:
        key = arch_key(s)
        if s["name"] not in recs or key in timed or (key in measures and not again):
            continue
        best = stage_weights(a, s)
        if best is None:
            continue
        print(f"[kd_convergence] measure {key} ({best})", flush=True)
        measures[key] = measure_stage(a, s, best)
        timed.add(key)
        for other in stages:
            if arch_key(other) == key:
                measures.pop(other["name"], None)
    measures_file(a).write_text(json.dumps(measures, indent=1))
    return measures


def measure_stage(a, stage, best):
    """Parameters, GFLOPs at 640 and at img, batch-1 fp32 CPU latency of the stage's weights `best` -> dict."""
    if stage["framework"] == "peer":
        log = a.out / "logs" / f"measure_{stage['name']}.log"
        log.unlink(missing_ok=True)
        cmd = [a.peer_python, str(PEER_SCRIPT), "measure", "--weights", str(best), "--img", str(a.img)]
        return result_line(log) if run_logged(cmd, peer_env(a), log) == 0 else None
    import torch
    from utils.checkpoint import load_model
    from utils.profiler import batch1_latency_ms
    from utils.torch_utils import model_flops

    model = load_model(best).eval()
    params = sum(p.numel() for p in model.parameters())
    model = model.fuse(verbose=False)
    return {"params": params, "GFLOPs_640": round(model_flops(model, 640), 2),
            "GFLOPs_img": round(model_flops(model, a.img), 3), "ms_per_img": batch1_latency_ms(model, a.img),
            "threads": torch.get_num_threads(), "cpu": cpu_info()}


# ----------------------------------------------------------------------------- report
def load_records(a, stages):
    recs = {}
    for s in stages:
        f = a.results / f"{s['name']}.json"
        if f.is_file():
            recs[s["name"]] = json.loads(f.read_text())
    return recs


def measures_file(a):
    return a.results / "measure.json"


def load_measures(a):
    f = measures_file(a)
    return json.loads(f.read_text()) if f.is_file() else {}


def _mean(values):
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def table_rows(stages, recs, measures):
    """One row per (framework, role, model): per-seed and mean mAP, KD gain over the same framework's baseline,
    the share of its own teacher's headroom it took."""
    rows = []
    groups = {}
    for s in stages:
        groups.setdefault((s["framework"], s["role"], s["model"]), []).append(s)
    for (fw, role, _), members in groups.items():
        done = [recs[s["name"]] for s in members if s["name"] in recs]
        m = measures.get(arch_key(members[0])) or measures.get(members[0]["name"]) or {}  # older: by stage
        row = {"framework": "ours (yolov5-kd)" if fw == "ours" else "ultralytics", "run": role,
               "model": members[0]["model"], "params": m.get("params"), "GFLOPs@640": m.get("GFLOPs_640"),
               "CPU ms/img": m.get("ms_per_img"), "_fw": fw, "_role": role,
               "_stages": {s["name"] for s in members}, "_teacher": members[0].get("teacher"),
               "_default": members[0].get("teacher") == "ours_teacher" and trains_with_defaults(members[0]["flags"])}
        for key in ("mAP50", "mAP50-95"):
            vals = {r["seed"]: (r["final"] or {}).get(key) for r in done}
            row[f"_{key} by seed"] = vals
            row[f"{key} per seed"] = " / ".join(f"{vals[sd]:.3f}" for sd in sorted(vals) if vals[sd] is not None)
            row[key] = _mean(vals.values())
        row["train img/s"] = _mean([r["train_img_per_s"] for r in done])
        row["epochs"] = "/".join(str(r["epochs"]) for r in done)
        row["converged"] = "/".join("yes" if r["converged"] else "no" for r in done)
        row["trained on"] = "; ".join(dict.fromkeys(machine_label(r) for r in done))
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["_fw"] == row["_fw"] and r["_role"] == "baseline"), None)
        if row["_role"] in ("baseline", "teacher") or not base:
            continue
        for key in ("mAP50", "mAP50-95"):  # over the seeds both rows have: a seed's gain is over its own baseline
            mine, theirs = row[f"_{key} by seed"], base[f"_{key} by seed"]
            paired = [mine[sd] - theirs[sd] for sd in sorted(mine) if None not in (mine[sd], theirs.get(sd))]
            if paired:
                row[f"KD gain {key}"] = f"{statistics.fmean(paired):+.3f}"
        closed = gap_closed(row, base, next((r for r in rows if row["_teacher"] in r["_stages"]), None))
        if closed is not None:
            row["teacher gap closed"] = f"{closed:.0%}"
    return rows


def gap_closed(row, base, teacher, key="mAP50"):
    """Mean over seeds of (KD - baseline) / (teacher - baseline): how much of the headroom a teacher offers the
    student takes (a student can rarely pass its teacher, so a +0.02 gain needs a teacher well above +0.02)."""
    t = teacher and teacher[key]
    mine, theirs = row[f"_{key} by seed"], base[f"_{key} by seed"]
    shares = [(mine[sd] - theirs[sd]) / (t - theirs[sd]) for sd in sorted(mine)
              if t is not None and None not in (mine[sd], theirs.get(sd)) and t > theirs[sd]]
    return statistics.fmean(shares) if shares else None


COLUMNS = ("framework", "run", "model", "params", "GFLOPs@640", "mAP50 per seed", "mAP50", "mAP50-95 per seed",
           "mAP50-95", "KD gain mAP50", "KD gain mAP50-95", "teacher gap closed", "train img/s", "CPU ms/img",
           "epochs", "converged", "trained on")


def goals(rows):
    """The issue's two criteria, where both sides have numbers: judged on the row trained with train_kd.py's
    default flags, or while that one has no gain yet, on the best row of output KD alone (from any teacher)."""
    gain = {(r["_fw"], r["_role"]): float(r["KD gain mAP50"]) for r in rows if r.get("KD gain mAP50")}
    by_teacher = {role: g for (fw, role), g in gain.items() if fw == "ours" and role.startswith("output KD")
                  and "+" not in role}  # output KD alone, from each teacher
    best = max(by_teacher, key=by_teacher.get, default=None)
    default = next((r["_role"] for r in rows if r["_default"] and ("ours", r["_role"]) in gain), None)
    judged = default or best
    ours, peer = gain.get(("ours", judged)), gain.get(("peer", "KD (distill_model)"))
    seeds = {r["_role"]: len([v for v in r["_mAP50 by seed"].values() if v is not None]) for r in rows
             if r["_fw"] == "ours"}
    any_ours = {role: g for (fw, role), g in gain.items() if fw == "ours"}
    top = max(any_ours, key=any_ours.get, default=None)
    return {"ours_output_kd_gain_mAP50": by_teacher.get(best), "ours_output_kd_row": best,
            "ours_output_kd_by_teacher": by_teacher, "ours_default_kd_row": default,
            "ours_default_kd_gain_mAP50": gain.get(("ours", default)), "ours_default_kd_seeds": seeds.get(default),
            "ours_best_kd_row": top, "ours_best_kd_gain_mAP50": any_ours.get(top), "ours_best_kd_seeds": seeds.get(top),
            "peer_kd_gain_mAP50": peer, "ours_goal_row": judged,
            "ours_gain_at_least_0.02": None if ours is None else ours >= 0.02,
            "ours_gain_at_least_peer": None if ours is None or peer is None else ours >= peer}


def gain_by_window(stages, recs, window=10):
    """Per KD stage: its per-epoch mAP50 minus its own seed's baseline's, averaged over windows of `window`
    epochs -> rows {'run', 'seed', 'epochs 1-10': gain, ...}: where in training the gain is made or lost."""
    rows = []
    for s in stages:
        r = recs.get(s["name"])
        base = next((recs[b["name"]] for b in stages if b["framework"] == s["framework"] and b["role"] == "baseline"
                     and b["seed"] == s["seed"] and b["name"] in recs), None)
        if not r or not base or s["role"] in ("baseline", "teacher"):
            continue
        b50 = {c[0]: c[1] for c in base["curve"]}
        diffs = [(c[0], c[1] - b50[c[0]]) for c in r["curve"] if c[0] in b50]
        row = {"run": f"{s['framework']} {s['role']}", "seed": s["seed"]}
        for start in range(1, (max((e for e, _ in diffs), default=0)) + 1, window):
            vals = [d for e, d in diffs if start <= e < start + window]
            row[f"epochs {start}-{start + window - 1}"] = f"{statistics.fmean(vals):+.3f}"
        rows.append(row)
    return rows


def gain_by_class(stages, recs, key="mAP50"):
    """Per class: the teacher's mAP, each seed's baseline, and each KD run's gain over that baseline (from the
    per-class rows of the final val; records without them are left out) -> rows for a table, and its columns."""
    def per_class(name):
        return ((recs.get(name) or {}).get("final") or {}).get("per_class") or {}

    models = {s["name"]: s["model"] for s in stages}
    cols, cells = ["class"], {}
    for s in stages:
        base = next((b for b in stages if b["framework"] == s["framework"] and b["role"] == "baseline"
                     and b["seed"] == s["seed"]), None)
        mine, theirs = per_class(s["name"]), per_class(base["name"]) if base else {}
        if s["role"] in ("baseline", "teacher") or not mine or not theirs:
            continue
        tcol, bcol = f"teacher {models[s['teacher']]}", f"baseline s{s['seed']}"
        kcol = f"{s['role']} s{s['seed']} (gain)"
        cols += [c for c in (tcol, bcol, kcol) if c not in cols]
        teacher = per_class(s["teacher"])
        for c, m in mine.items():
            if c in theirs:
                row = cells.setdefault(c, {"class": c})
                row[tcol] = (teacher.get(c) or {}).get(key)
                row[bcol] = theirs[c][key]
                row[kcol] = f"{m[key]:.3f} ({m[key] - theirs[c][key]:+.3f})"
    return list(cells.values()), cols


def plot_curves(stages, recs, path):
    from utils.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), tight_layout=True, sharey=True)
    for ax, fw, title in zip(axes, CURVE_COLUMNS, ("ours (yolov5-kd)", "ultralytics")):
        for s in stages:
            r = recs.get(s["name"])
            if r and s["framework"] == fw:
                ep, m50 = zip(*[(c[0], c[1]) for c in r["curve"]])
                ax.plot(ep, m50, "--" if s["role"] == "teacher" else "-", lw=1.2,
                        label=f"{s['model']} {s['role']} (seed {s['seed']})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("val mAP50 (per-epoch validation)")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(a, stages):
    from utils.report import markdown_table

    recs = load_records(a, stages)
    measures = load_measures(a)
    rows = table_rows(stages, recs, measures)
    cpu = cpu_info()
    flags = ", ".join(k for k, v in cpu["flags"].items() if v)
    basis = (f"NEU-DET ({a.data}), img {a.img}, batch {a.batch}, {a.epochs} epochs, seeds "
             f"{', '.join(map(str, a.seeds))}; mAP of best.pt by each framework's own val; each row names the "
             f"CPU and precision it trained in; 'CPU ms/img' (batch 1, fp32) on the CPU measure.json names; this "
             f"report written on {cpu['model_name']} ({flags}), {cpu['cpu_count']} cores")
    g = goals(rows)
    windows = gain_by_window(stages, recs)
    window_cols = list(dict.fromkeys(k for w in windows for k in w))
    classes = gain_by_class(stages, recs)
    md = "\n".join([f"KD at convergence: {basis}", "", markdown_table(rows, COLUMNS), "",
                    "KD gain in per-epoch val mAP50 over the same seed's baseline, mean of each 10-epoch window:", "",
                    markdown_table(windows, window_cols) if windows else "(no KD run with its baseline yet)", "",
                    "Per class (mAP50 of best.pt; KD runs whose final val recorded its classes):", "",
                    markdown_table(*classes) if classes[0] else "(no per-class rows recorded yet)", "",
                    f"Goals: {json.dumps(g)}",
                    f"Stages done: {len(recs)}/{len(stages)}"]) + "\n"
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "kd_convergence.md").write_text(md)
    (a.results / "kd_convergence.json").write_text(json.dumps(
        {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "cpu": cpu,
         "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "goals": g,
         "gain_by_window": windows, "gain_by_class": classes[0],
         "stages_done": sorted(recs)}, indent=1))
    if recs:
        plot_curves(stages, recs, a.results / "kd_convergence.png")
    print(md, flush=True)


# ----------------------------------------------------------------------------- peer venv
def setup_peer(a):
    """A venv that sees this torch (system site packages) and holds ultralytics alone; ours gets nothing."""
    venv = Path(a.peer_python).parents[1]
    if not Path(a.peer_python).is_file():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    import torch
    import torchvision

    pins = venv / "constraints.txt"
    pins.write_text(f"torch=={torch.__version__.split('+')[0]}\ntorchvision=={torchvision.__version__.split('+')[0]}\n")
    subprocess.run([a.peer_python, "-m", "pip", "install", "-q", "-c", str(pins), PEER_PIN], check=True)
    print(f"[kd_convergence] peer ready: {a.peer_python}", flush=True)


def main(argv=None):
    a = parse_args(argv)
    if a.setup_peer:
        return setup_peer(a)
    stages = plan(a)
    chosen = [s for s in stages if not a.stages or s["name"] in a.stages]
    if not (a.report or a.measure):
        yamls = dataset_yamls(a)
        for stage in chosen:
            if (a.results / f"{stage['name']}.json").is_file():
                print(f"[kd_convergence] {stage['name']}: done ({a.results / stage['name']}.json)", flush=True)
                continue
            run_stage(a, stage, yamls[stage["framework"]])
        if not a.no_measure:  # after this invocation's training: the latencies are timed on a quiet machine
            measure_all(a, stages, load_records(a, stages))
    elif a.measure:
        measure_all(a, stages, load_records(a, stages), again=True)
    write_report(a, stages)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()

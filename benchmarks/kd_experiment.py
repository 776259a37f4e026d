"""The distillation experiment: baseline student vs KD variants on NEU-DET, one command.

    python benchmarks/kd_experiment.py --epochs 30 --img 224            # CPU table
    python benchmarks/kd_experiment.py --epochs 100 --img 640 --device 0  # GPU table
    python benchmarks/kd_experiment.py --overhead --img 224 --batch 16     # KD step overhead

Every run uses the same student cfg, data, hyp, img, epochs, batch and seed; each is a separate
`train.py` / `train_kd.py` process (in runs/benchmarks/kd/runs/<name>). Results (mAP of best.pt
= the best-fitness epoch, wall time) go to runs/benchmarks/kd/kd_results.{md,json,png}.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE = ROOT.parent / "shared" / "fixtures" / "upstream_yolov5s_neu224.pt"
OUT = ROOT / "runs" / "benchmarks" / "kd"

# name -> (script, extra flags). 'combo' = output KD + the best single feature loss of this table.
RUNS = {
    "baseline": ("train.py", []),
    "output_kd": ("train_kd.py", ["--feat", "none"]),
    "at": ("train_kd.py", ["--no-kd", "--feat", "at"]),
    "wat_ft": ("train_kd.py", ["--no-kd", "--feat", "wat", "ft"]),
    "fgfi": ("train_kd.py", ["--no-kd", "--feat", "fgfi"]),
    "cwd": ("train_kd.py", ["--no-kd", "--feat", "cwd"]),
    "combo": ("train_kd.py", None),
}
FEATURE_RUNS = {"at": ["at"], "wat_ft": ["wat", "ft"], "fgfi": ["fgfi"], "cwd": ["cwd"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(FIXTURE), help="teacher checkpoint (ours or upstream)")
    p.add_argument("--student-cfg", default="models/yolov5n.yaml")
    p.add_argument("--data", default="data/NEU-DET.yaml")
    p.add_argument("--hyp", default="data/hyps/hyp.scratch-low.yaml")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="", help="'' auto, cpu, 0 ...")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta", nargs="+", default=None, help="feature loss weights, as train_kd.py --beta "
                   "(default: train_kd's per-loss defaults)")
    p.add_argument("--combo-feat", nargs="+", default=None, help="feature losses of 'combo' (default: best of this table)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="subset of runs")
    p.add_argument("--train-args", default="", help="extra flags for every run, e.g. \"--precision bf16 --cache ram\"")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--overhead", action="store_true", help="time KD training steps instead of the table")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant (--overhead)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="--overhead: the training precision, chosen as train.py does (auto: by capability)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------- table
def _fitness(map50, map5095):
    """The engine's fitness (utils.metrics.fitness) of one mAP pair."""
    from utils.metrics import fitness
    return float(fitness([0.0, 0.0, map50, map5095]))


def best_row(results_csv):
    """(mAP50, mAP50-95, epoch) of the best-fitness row (0.1 mAP50 + 0.9 mAP50-95) = best.pt."""
    with open(results_csv) as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise RuntimeError(f"{results_csv} has no rows")
    fit = lambda r: _fitness(float(r["metrics/mAP_0.5"]), float(r["metrics/mAP_0.5:0.95"]))  # noqa: E731
    r = max(rows, key=fit)
    return float(r["metrics/mAP_0.5"]), float(r["metrics/mAP_0.5:0.95"]), int(float(r["epoch"]))


def run_one(name, script, extra, a, runs_dir):
    cmd = [sys.executable, str(ROOT / script), "--cfg", a.student_cfg, "--data", a.data, "--hyp", a.hyp,
           "--epochs", str(a.epochs), "--imgsz", str(a.img), "--batch-size", str(a.batch), "--seed", str(a.seed),
           "--workers", str(a.workers), "--project", str(runs_dir), "--name", name, "--exist-ok", "--noautoanchor"]
    if a.device != "":
        cmd += ["--device", a.device]
    cmd += a.train_args.split()
    if script == "train_kd.py":
        cmd += ["--teacher_weight", a.teacher] + extra + (["--beta"] + a.beta if a.beta else [])
    print(f"[kd_experiment] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(f"[kd_experiment] {name} FAILED (exit {proc.returncode})", flush=True)
        return {"run": name, "ok": False, "cmd": " ".join(cmd), "wall_s": wall}
    m50, m, ep = best_row(runs_dir / name / "results.csv")
    print(f"[kd_experiment] {name}: mAP50 {m50:.3f} mAP50-95 {m:.3f} (best epoch {ep}) {wall / 60:.1f} min", flush=True)
    return {"run": name, "ok": True, "mAP50": m50, "mAP50-95": m, "best_epoch": ep, "wall_s": wall,
            "cmd": " ".join(cmd)}


def combo_flags(results):
    """Output KD + the feature loss(es) of the best feature-only run so far (default fgfi)."""
    feats = [r for r in results if r["ok"] and r["run"] in FEATURE_RUNS]
    best = max(feats, key=lambda r: _fitness(r["mAP50"], r["mAP50-95"]))["run"] if feats else "fgfi"
    return ["--feat"] + FEATURE_RUNS[best]


def write_reports(results, a, out):
    out.mkdir(parents=True, exist_ok=True)
    results.sort(key=lambda r: list(RUNS).index(r["run"]) if r["run"] in RUNS else len(RUNS))
    (out / "kd_results.json").write_text(json.dumps({"settings": _settings(a), "results": results}, indent=2))
    lines = [f"KD on {a.data}: teacher {Path(a.teacher).name}, student {a.student_cfg}, img {a.img}, "
             f"{a.epochs} epochs, batch {a.batch}, seed {a.seed} {a.train_args}".rstrip(), "",
             "| run | mAP50 | mAP50-95 | wall time (min) |", "|---|---|---|---|"]
    for r in results:
        if r["ok"]:
            lines.append(f"| {r['run']} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['wall_s'] / 60:.1f} |")
        else:
            lines.append(f"| {r['run']} | failed | failed | {r['wall_s'] / 60:.1f} |")
    (out / "kd_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    ok = [r for r in results if r["ok"]]
    if ok:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            x = range(len(ok))
            fig, ax = plt.subplots(figsize=(8, 4), tight_layout=True)
            ax.bar([i - 0.2 for i in x], [r["mAP50"] for r in ok], 0.4, label="mAP50")
            ax.bar([i + 0.2 for i in x], [r["mAP50-95"] for r in ok], 0.4, label="mAP50-95")
            ax.set_xticks(list(x), [r["run"] for r in ok], rotation=20)
            ax.set_title(f"KD students (img {a.img}, {a.epochs} epochs)")
            ax.legend()
            fig.savefig(out / "kd_results.png", dpi=150)
            plt.close(fig)
        except ImportError:
            print("[kd_experiment] matplotlib absent: no bar chart")


def _settings(a):
    return {k: getattr(a, k) for k in ("teacher", "student_cfg", "data", "hyp", "epochs", "img", "batch", "seed",
                                       "device", "train_args")}


def earlier_results(a, out):
    """Rows of an earlier invocation with the same settings (so a table can be filled in stages);
    rows this invocation re-runs are replaced."""
    f = out / "kd_results.json"
    if not f.exists():
        return []
    try:
        old = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        print(f"[kd_experiment] ignoring unreadable {f}: {e}", flush=True)
        return []
    if old.get("settings") != _settings(a):
        print(f"[kd_experiment] {f} has other settings: starting a new table", flush=True)
        return []
    return [r for r in old.get("results", []) if r.get("run") not in a.runs]


def table(a):
    out = Path(a.out)
    runs_dir = out / "runs"
    results = earlier_results(a, out)
    for name in [n for n in RUNS if n in a.runs]:
        script, extra = RUNS[name]
        if extra is None:
            extra = ["--feat"] + a.combo_feat if a.combo_feat else combo_flags(results)
        results.append(run_one(name, script, extra, a, runs_dir))
        write_reports(results, a, out)  # partial tables survive an interrupted experiment
    return results


# ------------------------------------------------------------------------------- overhead
def overhead(a):
    """Seconds per training step: plain student, student + KD (several configs), teacher forward."""
    import torch
    from models.yolo import DetectionModel
    from types import SimpleNamespace
    from utils.checkpoint import load_model
    from utils.distill.config import KDConfig
    from utils.distill.distiller import Distiller
    from utils.general import yaml_load
    from utils.loss import ComputeLoss, scale_loss_gains
    from utils.precision import choose_precision, cpu_description
    from utils.torch_utils import select_device

    device = select_device(a.device)
    precision = choose_precision(a.precision, device.type)  # as the engine chooses (fp16 AMP on CUDA for auto)
    amp, dtype = precision.grad_scaler, precision.autocast_dtype or torch.float32
    teacher = load_model(a.teacher, device=device)
    torch.manual_seed(a.seed)
    student = DetectionModel(str(ROOT / a.student_cfg), nc=int(teacher.nc)).to(device).train()
    student.names = dict(teacher.names)
    hyp = scale_loss_gains(yaml_load(ROOT / a.hyp), student.model[-1].nl, int(teacher.nc), a.img)
    student.hyp = hyp
    compute_loss = ComputeLoss(student)
    imgs = torch.rand(a.batch, 3, a.img, a.img, device=device)
    g = torch.Generator().manual_seed(0)
    n = 3 * a.batch
    targets = torch.cat([torch.randint(0, a.batch, (n, 1), generator=g).float(),
                         torch.randint(0, int(teacher.nc), (n, 1), generator=g).float(),
                         0.3 + 0.4 * torch.rand(n, 2, generator=g), 0.1 + 0.3 * torch.rand(n, 2, generator=g)], 1).to(device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)  # noqa: E731

    def make_step(plugin=None, teacher_inside=False):
        params = list(student.parameters()) + [p for m in (plugin.trainable_modules() if plugin else []) for p in m.parameters()]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=precision.autocast):
                if plugin:  # as the engine's step: the teacher's forward first
                    plugin.before_forward(imgs, targets)
                preds = student(imgs)
                loss, _ = compute_loss(preds, targets)
                if plugin:
                    extra, _ = plugin.step_loss(imgs, targets, preds)
                    loss = loss + extra
                elif teacher_inside:
                    teacher_fwd()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss.sum()).backward()
            scaler.step(opt)
            scaler.update()
        return step

    def teacher_fwd():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=precision.autocast):
            teacher(imgs.half() if next(teacher.parameters()).dtype == torch.float16 else imgs)

    kd_variants = {"kd_output": [], "kd_output+fgfi": ["fgfi"], "kd_output+at": ["at"], "kd_output+cwd": ["cwd"]}
    # not the main process: no KD health check (it runs the first 3 steps of a real run only)
    engine = SimpleNamespace(model=student, hyp=hyp, amp=amp, is_main_process=False,
                             opt=SimpleNamespace(cfg=a.student_cfg, weights=""))

    distillers = []

    def distiller_step(feats):
        d = Distiller(KDConfig(teacher_weight=a.teacher, feat=tuple(feats)))
        d.setup(engine)
        d.on_train_start(engine)
        distillers.append(d)
        return make_step(d)

    if amp:
        teacher.half()
    # every variant exists at once and they take turns step by step (medians): load and memory drift alike
    # for all; each distiller's student hooks only keep a reference to the latest tapped features
    steps = {"student": make_step(), "teacher_forward": teacher_fwd,
             "student+teacher_forward": make_step(teacher_inside=True),
             **{k: distiller_step(f) for k, f in kd_variants.items()}}
    names = list(steps)
    times = {k: [] for k in names}
    try:
        for r in range(a.steps + 2):  # two untimed rounds first
            for k in names[r % len(names):] + names[:r % len(names)]:
                sync()
                t0 = time.perf_counter()
                steps[k]()
                sync()
                if r >= 2:
                    times[k].append(time.perf_counter() - t0)
    finally:
        for d in distillers:
            d.teardown()
    res = {"device": str(device), "precision": precision.name, "img": a.img, "batch": a.batch, "steps": a.steps,
           "cpu": cpu_description()}
    for k in names:
        res[f"{k}_step_s" if k != "teacher_forward" else "teacher_forward_s"] = statistics.median(times[k])
    bound = res["student_step_s"] + res["teacher_forward_s"]
    res["target_s"] = budget = 1.1 * bound
    inside = res["student+teacher_forward_step_s"]  # the teacher after the student (the old order)
    print(f"[overhead] {precision.name}, {res['cpu']}: student {res['student_step_s'] * 1e3:.1f} ms/step, teacher "
          f"forward {res['teacher_forward_s'] * 1e3:.1f}, student step with a teacher forward {inside * 1e3:.1f}",
          flush=True)
    for k in kd_variants:
        t = res[f"{k}_step_s"]
        res[f"{k}_ratio"] = t / bound
        print(f"[overhead] {k}: {t * 1e3:.1f} ms/step = {t / bound:.3f} x (student + teacher forward; target <= "
              f"{budget * 1e3:.1f} ms) {'OK' if t <= budget else 'OVER'}; {t / inside:.3f} x the step with a "
              "teacher forward and no KD loss", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kd_overhead_{device.type}.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    args = parse_args()
    overhead(args) if args.overhead else table(args)

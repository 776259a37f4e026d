"""Semi-supervised distillation on NEU-DET: does KD on unlabeled images beat offline pseudo-labels?

    python benchmarks/semi_kd.py --epochs 30 --img 224 --batch-size 16 --fraction 0.25
    python benchmarks/semi_kd.py --epochs 1 --img 64 --max-train 24 --max-val 12   # a smoke run in minutes

A class-stratified `--fraction` of the train split is labeled, the rest is used without labels. A teacher
(--teacher-cfg) trains on the labeled part only; then yolov5n students, same epochs, img, hyp and seed:
  (a) the labeled part alone                  (b) + KD from the teacher on the same images
  (c) + KD on the unlabeled images as well    (train_kd.py --unlabeled, --ratio unlabeled per labeled)
  (d) + offline pseudo-labels of the teacher  (detect.py --save-txt --save-conf, conf >= --pseudo-conf)
  (e) every train image labeled
mAP50 and mAP50-95 of each best.pt on the val split, and wall times, go to OUT/semi_kd.{json,md}, with
the commands, the CPU model and the settings. Every stage is a separate process whose results are kept:
a rerun with the same settings skips finished stages, resumes an interrupted training (--resume), and
--stages / --redo pick stages. Runs live in OUT/semi_kd/<settings key>/.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _dir in (ROOT, ROOT / "benchmarks", ROOT / "data" / "scripts"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from kd_experiment import best_row  # noqa: E402
from split_dataset import split_labeled  # noqa: E402

STAGES = ("split", "teacher", "a", "b", "c", "pseudo", "d", "e")
ROWS = {"teacher": "teacher ({cfg}) on the labeled {pct} only", "a": "(a) {pct} labels alone",
        "b": "(b) {pct} + KD on the same images", "c": "(c) {pct} + KD with the other {rest} unlabeled (ratio {ratio:g})",
        "d": "(d) {pct} + offline pseudo-labels (conf >= {conf:g})", "e": "(e) 100% labels alone"}
SETTINGS = ("data", "fraction", "epochs", "teacher_epochs", "img", "batch_size", "seed", "hyp", "student_cfg",
            "teacher_cfg", "ratio", "pseudo_conf", "max_train", "max_val", "device", "train_args")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/NEU-DET.yaml")
    p.add_argument("--fraction", type=float, default=0.25, help="labeled share of each class's train images")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="labeled images per batch (every run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hyp", default="data/hyps/hyp.scratch-low.yaml")
    p.add_argument("--student-cfg", default="models/yolov5n.yaml")
    p.add_argument("--teacher-cfg", default="models/yolov5s.yaml")
    p.add_argument("--ratio", type=float, default=3.0, help="(c) --unlabeled-ratio (3 = each unlabeled image "
                   "once per epoch at a 25%% split)")
    p.add_argument("--pseudo-conf", type=float, default=0.5, help="(d) confidence threshold of the pseudo-labels")
    p.add_argument("--max-train", type=int, default=0, help="use only this many train images (0: all), a smoke test")
    p.add_argument("--max-val", type=int, default=0, help="use only this many val images (0: all), a smoke test")
    p.add_argument("--device", default="", help="'' auto, cpu, 0 ...")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-args", default="", help="extra flags for every training, e.g. \"--bf16 --cache ram\"")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run (in order)")
    p.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="run these again even when finished")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"))
    a = p.parse_args(argv)
    a.teacher_epochs = a.teacher_epochs or a.epochs
    return a


# ------------------------------------------------------------------------------ bookkeeping
def settings(a):
    return {k: getattr(a, k) for k in SETTINGS}


def work_dir(a):
    key = hashlib.md5(json.dumps(settings(a), sort_keys=True).encode()).hexdigest()[:8]
    return Path(a.out) / "semi_kd" / f"e{a.epochs}_img{a.img}_f{a.fraction:g}_{key}"


def machine():
    """CPU model and speed flags, cores, torch, GPU if any."""
    import torch

    from utils.precision import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_description(), "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu}


def load_table(path, a):
    """Stage records of an earlier invocation with the same settings, else {}."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old.get("stages", {}) if old.get("settings") == settings(a) else {}


def run(cmd, log):
    """Run one command (printed and recorded) -> (ok, seconds)."""
    text = " ".join("python" if c == sys.executable else str(c) for c in cmd)
    print(f"[semi_kd] {text}", flush=True)
    log.append(text)
    t0 = time.time()
    rc = subprocess.run(list(map(str, cmd)), cwd=ROOT, check=False).returncode
    return rc == 0, time.time() - t0


# ------------------------------------------------------------------------------ stages
def stage_split(a, work):
    """Labeled / unlabeled lists (and the 100% list) with the val split -> record."""
    from utils.dataset_yaml import check_dataset
    from utils.general import yaml_save
    from utils.label_files import list_image_files

    d = check_dataset(a.data)
    train, val = list_image_files(d["train"]), d["val"]
    if a.max_train:
        train = train[::max(len(train) // a.max_train, 1)][:a.max_train]  # every k-th: names sort by class
    split = work / "split"
    split.mkdir(parents=True, exist_ok=True)
    if a.max_val:
        files = list_image_files(val)
        (split / "val.txt").write_text("".join(f"{f}\n" for f in files[::max(len(files) // a.max_val, 1)][:a.max_val]))
        val = str(split / "val.txt")
    t0 = time.time()
    semi, n_lab, n_unl = split_labeled(train, split, a.fraction, val, d["names"], seed=a.seed, name="semi")
    (split / "train_all.txt").write_text("".join(f"{Path(f).resolve()}\n" for f in train))
    yaml_save(split / "full.yaml", {"path": str(split.resolve()), "train": "train_all.txt", "val": val,
                                    "names": dict(d["names"])})
    cmd = (f"python data/scripts/split_dataset.py --images {d['train']} --labeled {a.fraction} --data {a.data} "
           f"--out {split} --name semi --seed {a.seed}" + (" (on a subset: --max-train/--max-val)" if a.max_train
                                                           or a.max_val else ""))
    return {"ok": True, "labeled": n_lab, "unlabeled": n_unl, "wall_s": time.time() - t0, "cmd": [cmd],
            "semi": str(semi), "full": str(split / "full.yaml")}


def stage_train(name, a, work, table):
    """One training (train.py or train_kd.py) and the validation of its best.pt -> record."""
    split, runs = table["split"], work / "runs"
    teacher = str(runs / "teacher" / "weights" / "best.pt")
    common = ["--hyp", a.hyp, "--imgsz", a.img, "--batch-size", a.batch_size, "--seed", a.seed,
              "--workers", a.workers, "--project", runs, "--name", name, "--exist-ok", "--noautoanchor"]
    common += (["--device", a.device] if a.device else []) + a.train_args.split()
    student = ["--cfg", a.student_cfg, "--epochs", a.epochs]
    kd = ["--teacher_weight", teacher]
    script, args, data = {
        "teacher": ("train.py", ["--cfg", a.teacher_cfg, "--epochs", a.teacher_epochs], split["semi"]),
        "a": ("train.py", student, split["semi"]),
        "b": ("train_kd.py", student + kd, split["semi"]),
        "c": ("train_kd.py", student + kd + ["--unlabeled", "--unlabeled-ratio", a.ratio], split["semi"]),
        "d": ("train.py", student, table.get("pseudo", {}).get("yaml", "")),
        "e": ("train.py", student, split["full"]),
    }[name]
    if (name in ("b", "c") and not Path(teacher).is_file()) or (name == "d" and not data):
        raise SystemExit(f"[semi_kd] stage {name} needs the {'pseudo' if name == 'd' else 'teacher'} stage first")
    run_dir, cmds = runs / name, []
    last = run_dir / "weights" / "last.pt"
    wall, resume = 0.0, False
    if not _finished(run_dir, a.teacher_epochs if name == "teacher" else a.epochs):
        resume = last.is_file()  # an interrupted earlier invocation: its wall time is not counted
        cmd = [sys.executable, script, "--resume", last, "--workers", a.workers,
               *(["--device", a.device] if a.device else [])] if resume else \
            [sys.executable, script, "--data", data, *args, *common]
        ok, wall = run(cmd, cmds)
        if not ok:
            return {"ok": False, "wall_s": wall, "cmd": cmds, "resumed": resume}
    return {"ok": True, "wall_s": wall, "cmd": cmds, "resumed": resume, **evaluate(run_dir, data, a, cmds)}


def _finished(run_dir, epochs):
    f = run_dir / "results.csv"
    return (run_dir / "weights" / "best.pt").is_file() and f.is_file() and \
        len(f.read_text().strip().splitlines()) - 1 >= epochs


def evaluate(run_dir, data, a, cmds):
    """mAP of best.pt on the val split (val.py's computation, in this process)."""
    from utils.evaluation import validate_weights

    best = run_dir / "weights" / "best.pt"
    cmds.append(f"python val.py --data {data} --weights {best} --img {a.img}")
    results, _, _ = validate_weights(data, best, imgsz=a.img, device=a.device, workers=a.workers, plots=False,
                                     project=run_dir, name="val_best", exist_ok=True)
    _, _, epoch = best_row(run_dir / "results.csv")
    return {"mAP50": float(results[2]), "mAP50-95": float(results[3]), "best_epoch": epoch}


def stage_pseudo(a, work, table):
    """The teacher's detections on the unlabeled images -> the pseudo-labelled dataset YAML."""
    split = table["split"]
    teacher = work / "runs" / "teacher" / "weights" / "best.pt"
    if not teacher.is_file():
        raise SystemExit("[semi_kd] stage pseudo needs the teacher stage first")
    unlabeled, det, out, cmds = Path(split["semi"]).parent / "unlabeled.txt", work / "detect", work / "pseudo", []
    shutil.rmtree(det, ignore_errors=True)  # detect.py appends to label files: start empty
    ok, w1 = run([sys.executable, "detect.py", "--weights", teacher, "--source", unlabeled, "--img", a.img,
                  "--conf-thres", a.pseudo_conf, "--save-txt", "--save-conf", "--nosave", "--project", det,
                  "--name", "exp", "--exist-ok", *(["--device", a.device] if a.device else [])], cmds)
    if ok:
        ok, w2 = run([sys.executable, "data/scripts/pseudo_labels.py", "--detections", det / "exp" / "labels",
                      "--images", unlabeled, "--conf", a.pseudo_conf, "--data", split["semi"], "--out", out,
                      "--exist-ok"], cmds)
        w1 += w2
    labels = sorted((out / "labels").glob("*.txt")) if ok else []
    return {"ok": ok, "wall_s": w1, "cmd": cmds, "yaml": str(out / "pseudo.yaml"), "images": len(labels),
            "boxes": sum(len(f.read_text().split("\n")) - 1 for f in labels)}


# ------------------------------------------------------------------------------ report
def write_reports(a, table, info, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "semi_kd.json").write_text(json.dumps({"settings": settings(a), "machine": info, "stages": table},
                                                 indent=2, default=str))
    split = table.get("split", {})
    pct, rest = f"{a.fraction:.0%}", f"{1 - a.fraction:.0%}"
    head = (f"Semi-supervised KD on {a.data}: {split.get('labeled', '?')} labeled / {split.get('unlabeled', '?')} "
            f"unlabeled train images ({pct} per class), student {a.student_cfg}, img {a.img}, {a.epochs} epochs, "
            f"batch {a.batch_size} labeled, seed {a.seed}, {a.train_args or 'default precision'}; "
            f"{info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}, "
            f"{datetime.date.today()}")
    lines = [head, "", "| run | mAP50 | mAP50-95 | wall time (min) |", "|---|---|---|---|"]
    for name, label in ROWS.items():
        r = table.get(name)
        if not r:
            continue
        text = label.format(cfg=a.teacher_cfg, pct=pct, rest=rest, ratio=a.ratio, conf=a.pseudo_conf)
        wall = r["wall_s"] + (table.get("pseudo", {}).get("wall_s", 0) if name == "d" else 0)
        if r.get("ok"):
            lines.append(f"| {text} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {wall / 60:.1f} |")
        else:
            lines.append(f"| {text} | failed | failed | {wall / 60:.1f} |")
    if table.get("pseudo", {}).get("ok"):
        p = table["pseudo"]
        lines += ["", (f"Pseudo-labels: {p['boxes']} boxes on {p['images']} of {split.get('unlabeled', '?')} "
                       "unlabeled images; (d)'s wall time includes detect.py and pseudo_labels.py.")]
    lines += ["", "Commands:", ""] + [f"    {c}" for s in STAGES for c in table.get(s, {}).get("cmd", [])]
    (out / "semi_kd.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(ROWS) + 6]), flush=True)


def main(a):
    out, work = Path(a.out), work_dir(a)
    table = load_table(out / "semi_kd.json", a)
    info = machine()
    for stage in (s for s in STAGES if s in a.stages):
        if table.get(stage, {}).get("ok") and stage not in a.redo:
            print(f"[semi_kd] {stage}: done earlier, skipped (--redo {stage} to run it again)", flush=True)
            continue
        if stage != "split" and "split" not in table:
            raise SystemExit("[semi_kd] run the split stage first")
        if stage in a.redo and stage != "split":
            shutil.rmtree(work / "runs" / stage, ignore_errors=True)
        print(f"[semi_kd] stage {stage} in {work}", flush=True)
        table[stage] = (stage_split(a, work) if stage == "split" else
                        stage_pseudo(a, work, table) if stage == "pseudo" else stage_train(stage, a, work, table))
        write_reports(a, table, info, out)  # partial tables survive an interrupted experiment
    return table


if __name__ == "__main__":
    main(parse_args())

r"""Wall time of the same command with upstream YOLOv5 and with ours, run alternately (issue 16).

    python benchmarks/vs_upstream.py --mode train    # train.py, NEU-DET 480 images, yolov5n from scratch
    python benchmarks/vs_upstream.py --mode val      # val.py on NEU-DET val with the fixture checkpoint
    python benchmarks/vs_upstream.py --mode kd       # ours: train_kd.py vs train.py + the step-level check

Upstream is the PyPI package yolov5==7.0.14 in its own venv (--upstream-python) that reuses this torch:

    python -m venv --system-site-packages /tmp/upstream-venv
    printf 'torch==2.14.1\ntorchvision==0.29.1\nsetuptools>=77.0.3,<81\nnumpy<2.4\npillow<10\n' > /tmp/uc.txt
    /tmp/upstream-venv/bin/pip install -c /tmp/uc.txt yolov5==7.0.14 'setuptools>=77.0.3,<81' 'numpy<2.4' 'pillow<10'

(yolov5 7.0 needs pkg_resources, np.trapz and PIL's getsize, gone from newer setuptools/numpy/Pillow.)
It runs offline: see offline_env(). Each run is a subprocess timed by wall clock, alternating sides; its log
goes to runs/benchmarks/vs_upstream*/logs/. Results: runs/benchmarks/vs_upstream[_val|_kd].json and a table.
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

NEU = ROOT.parent / "shared" / "datasets" / "NEU-DET"
FIXTURE = ROOT.parent / "shared" / "fixtures" / "upstream_yolov5s_neu224.pt"
OUT = ROOT / "runs" / "benchmarks"
SIDES = ("upstream", "ours")
# One tqdm state: 'N/N [elapsed<remaining, rate]'; the training bar's text starts with 'epoch/last'.
BAR_END = re.compile(r"^\s*(\d+)/\d+\s.*\|\s*(\d+)/(\d+) \[((?:\d+:)?\d+:\d+)<")
ALL_ROW = re.compile(r"^\s*all\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("train", "val", "kd"), default="train")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="training batch (val mode: 32, see --val-batch)")
    p.add_argument("--val-batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--val-each-epoch", action="store_true",
                   help="validate every epoch on both sides instead of --noval (pip yolov5 7.0.14 crashes "
                        "after its first epoch with --noval: map50s unbound in its train.py)")
    p.add_argument("--images", type=int, default=480, help="first N NEU-DET train images (sorted)")
    p.add_argument("--val-images", type=int, default=360, help="first N NEU-DET val images (sorted; 360 = all)")
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--weights", default=str(FIXTURE), help="val mode: checkpoint (upstream pickled format); "
                                                           "kd mode: the teacher")
    p.add_argument("--upstream-python", default="/tmp/upstream-venv/bin/python")
    p.add_argument("--ours-args", default="", help='extra flags for ours, e.g. "--precision fp32"')
    p.add_argument("--upstream-args", default="", help="extra flags for upstream")
    p.add_argument("--steps", type=int, default=20, help="kd mode: timed steps of kd_experiment.py --overhead")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def class_names():
    """NEU-DET class names in id order, from data/NEU-DET.yaml."""
    import yaml

    names = yaml.safe_load((ROOT / "data" / "NEU-DET.yaml").read_text())["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


def link_split(src_split, dst_root, split, n, src=NEU):
    """Symlink the first n images of src/images/<split> (sorted by name; src: NEU-DET) and their labels into
    dst_root."""
    images = sorted((src / "images" / src_split).glob("*.jpg"))[:n]
    if len(images) < n:
        raise SystemExit(f"{src / 'images' / src_split} has {len(images)} images, {n} asked")
    for kind in ("images", "labels"):
        d = dst_root / kind / split
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for im in images:
        (dst_root / "images" / split / im.name).symlink_to(im)
        lb = src / "labels" / src_split / f"{im.stem}.txt"
        if lb.exists():
            (dst_root / "labels" / split / lb.name).symlink_to(lb)
    for cache in (dst_root / "labels").glob("*.cache*"):  # a cache of another subset would only be rescanned
        cache.unlink()
    return len(images)


def build_subset(root, n_train, n_val):
    """One copy of the subset per side (each writes its own labels/*.cache, in its own format) ->
    {side: dataset YAML}. Rebuilt only when the sizes change."""
    import yaml

    yamls = {}
    for side in SIDES:
        d = root / side
        f = d / "data.yaml"
        stamp = {"train": n_train, "val": n_val}
        if not (d / "subset.json").exists() or json.loads((d / "subset.json").read_text()) != stamp:
            link_split("train", d, "train", n_train)
            link_split("val", d, "val", n_val)
            (d / "subset.json").write_text(json.dumps(stamp))
        f.write_text(yaml.safe_dump({"path": str(d), "train": "images/train", "val": "images/val",
                                     "names": dict(enumerate(class_names()))}, sort_keys=False))
        yamls[side] = f
    return yamls


# ----------------------------------------------------------------------------- machine
def cpu_info():
    """CPU model name, the CPU flags that matter for precision, core count."""
    from utils.precision import SPEED_CPU_FLAGS, cpu_flags, cpu_name

    flags = cpu_flags()
    return {"model_name": cpu_name(), "flags": {f: f in flags for f in SPEED_CPU_FLAGS},
            "cpu_count": os.cpu_count()}


def versions(upstream_python):
    """torch of ours and of the upstream venv (they must be the same build), and yolov5's version."""
    import torch

    code = "import torch, importlib.metadata as m; print(torch.__version__, m.version('yolov5'))"
    try:
        r = subprocess.run([upstream_python, "-W", "ignore", "-c", code], check=False, capture_output=True,
                           text=True, timeout=120)
        up_torch, up_yolov5 = r.stdout.split()[-2:]
    except (OSError, ValueError, subprocess.SubprocessError):
        up_torch = up_yolov5 = "unavailable"
    return {"torch": torch.__version__, "upstream_torch": up_torch, "upstream_yolov5": up_yolov5}


def offline_env(cfg_dir):
    """Environment for upstream: no downloads, installs or update checks.

    check_dataset() fetches Arial.ttf into YOLOV5_CONFIG_DIR unless it is there: a local TTF (matplotlib's
    DejaVuSans) stands in. ultralytics (imported for check_requirements) gets its own settings dir and
    YOLO_OFFLINE/YOLO_AUTOINSTALL off; HF_HUB_OFFLINE stops the hub lookup of --weights ''.
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD lets yolov5 7.0 torch.load its own pickled checkpoints on torch >= 2.6
    (the fixture and its best.pt)."""
    import matplotlib

    cfg_dir.mkdir(parents=True, exist_ok=True)
    font = cfg_dir / "Arial.ttf"
    if not font.exists():
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    env = dict(os.environ, YOLOV5_CONFIG_DIR=str(cfg_dir), YOLO_CONFIG_DIR=str(cfg_dir), YOLO_OFFLINE="1",
               YOLO_AUTOINSTALL="false", YOLOv5_AUTOINSTALL="false", HF_HUB_OFFLINE="1",
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    return env


def ours_env():
    """Ours with its defaults: an inherited YOLOV5KD_PRECISION pin (the tests set one) is dropped."""
    from utils.precision import PIN_ENV

    env = dict(os.environ)
    env.pop(PIN_ENV, None)
    return env


# ----------------------------------------------------------------------------- runs
def timed_run(cmd, cwd, env, log):
    """Run cmd, output to the log file -> {rc, wall_s, log}; the wall clock spans the whole process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ (cd {cwd} && {shlex.join(str(c) for c in cmd)})  > {log}", flush=True)
    with open(log, "w") as f:
        t0 = time.perf_counter()
        rc = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
    return {"rc": rc, "wall_s": round(wall, 3), "log": str(log)}


def _seconds(clock):
    parts = [int(x) for x in clock.split(":")]
    return sum(v * 60 ** i for i, v in enumerate(reversed(parts)))


def parse_train_log(text, images):
    """Per-epoch training-bar time (tqdm's elapsed, 1 s resolution) -> epoch seconds and images/s."""
    epochs = {}
    for state in re.split(r"[\r\n]", text):
        m = BAR_END.match(state)
        if m and m.group(2) == m.group(3):  # a finished bar (its last state)
            epochs[int(m.group(1))] = _seconds(m.group(4))
    secs = [epochs[k] for k in sorted(epochs)]
    total = sum(secs)
    return {"epoch_train_s": secs, "train_images_per_s": round(images * len(secs) / total, 2) if total else None}


def parse_val_log(text):
    """The 'all' row both val.py print -> images, instances, P, R, mAP50, mAP50-95 (the last such row)."""
    rows = [ALL_ROW.match(s) for s in re.split(r"[\r\n]", text)]
    rows = [m for m in rows if m]
    if not rows:
        return {}
    g = rows[-1].groups()
    return {"val_images": int(g[0]), "instances": int(g[1]), "P": float(g[2]), "R": float(g[3]),
            "mAP50": float(g[4]), "mAP50-95": float(g[5])}


def ours_precision(text, save_dir):
    """The precision ours chose: opt.yaml of the run, else its log line."""
    opt_yaml = Path(save_dir) / "opt.yaml"
    if opt_yaml.exists():
        m = re.search(r"^precision: (\S+)", opt_yaml.read_text(), re.MULTILINE)
        if m:
            return m.group(1)
    m = re.search(r"precision: (\w+) \(", text)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- commands
def train_flags(a, data, project, name):
    """The shared training command line (upstream's flags)."""
    return ["--data", data, "--cfg", a.cfg, "--weights", "", "--img", a.img, "--batch-size", a.batch_size,
            "--workers", a.workers, "--epochs", a.epochs, *([] if a.val_each_epoch else ["--noval"]), "--noplots",
            "--project", project, "--name", name, "--exist-ok"]


def val_flags(a, data, project, name, weights):
    return ["--data", data, "--weights", weights, "--img", a.img, "--batch-size", a.val_batch,
            "--workers", a.workers, "--conf-thres", 0.001, "--iou-thres", 0.6, "--project", project,
            "--name", name, "--exist-ok"]


def commands(a, yamls, runs, weights, r):
    """{label: (cmd, cwd, env, save_dir)} of repeat r for the mode."""
    up_py, ours_py = a.upstream_python, sys.executable
    up_cwd = runs / "upstream_cwd"  # not our repo: upstream's pickles name 'models.yolo', which must be its own
    up_cwd.mkdir(parents=True, exist_ok=True)
    up_env, o_env = offline_env(runs / "upstream_config"), ours_env()
    up_extra, o_extra = shlex.split(a.upstream_args), shlex.split(a.ours_args)
    name = f"r{r}"
    if a.mode == "train":
        return {"upstream": ([up_py, "-m", "yolov5.train", *train_flags(a, yamls["upstream"], runs / "upstream", name),
                              *up_extra], up_cwd, up_env, runs / "upstream" / name),
                "ours": ([ours_py, "train.py", *train_flags(a, yamls["ours"], runs / "ours", name), *o_extra],
                         ROOT, o_env, runs / "ours" / name)}
    if a.mode == "val":
        return {"upstream": ([up_py, "-m", "yolov5.val", *val_flags(a, yamls["upstream"], runs / "upstream", name,
                                                                     weights), *up_extra], up_cwd, up_env,
                             runs / "upstream" / name),
                "ours": ([ours_py, "val.py", *val_flags(a, yamls["ours"], runs / "ours", name, weights), *o_extra],
                         ROOT, o_env, runs / "ours" / name)}
    kd = ["--teacher_weight", weights]
    return {"student": ([ours_py, "train.py", *train_flags(a, yamls["ours"], runs / "student", name), *o_extra],
                        ROOT, o_env, runs / "student" / name),
            "kd": ([ours_py, "train_kd.py", *train_flags(a, yamls["ours"], runs / "kd", name), *kd, *o_extra],
                   ROOT, o_env, runs / "kd" / name)}


def one_run(label, spec, a, runs, r):
    """Run one side once and parse what its log shows."""
    cmd, cwd, env, save_dir = spec
    res = {"side": label, "repeat": r, **timed_run(cmd, cwd, env, runs / "logs" / f"{label}_r{r}.log")}
    text = Path(res["log"]).read_text(errors="ignore")
    if a.mode == "val":
        res.update(parse_val_log(text))
    else:
        res.update(parse_train_log(text, a.images))
        res["nms_time_limit_warnings"] = text.count("NMS time limit")
    if a.mode != "val" and label != "upstream":
        res["precision"] = ours_precision(text, save_dir)
    res["cmd"] = shlex.join(str(c) for c in cmd)
    print(f"  {label} r{r}: rc {res['rc']}  {res['wall_s']:.1f} s", flush=True)
    return res


def kd_step_overhead(a, runs, teacher):
    """The step-level KD criterion, measured by kd_experiment.py --overhead (fixed batch, no loader)."""
    out = runs / "overhead"
    cmd = [sys.executable, "benchmarks/kd_experiment.py", "--overhead", "--teacher", teacher, "--img", a.img,
           "--batch", a.batch_size, "--steps", a.steps, "--device", "cpu", "--out", out]
    res = timed_run(cmd, ROOT, ours_env(), runs / "logs" / "kd_overhead.log")
    f = out / "kd_overhead_cpu.json"
    if res["rc"] == 0 and f.exists():
        res["result"] = json.loads(f.read_text())
    return res


# ----------------------------------------------------------------------------- report
def summary(results, labels):
    """Per label: runs ok, median/min wall time; and the first/second label wall ratio of the medians."""
    s = {}
    for lb in labels:
        walls = [x["wall_s"] for x in results if x["side"] == lb and x["rc"] == 0]
        s[lb] = {"ok": len(walls), "runs": sum(x["side"] == lb for x in results),
                 "median_wall_s": statistics.median(walls) if walls else None, "min_wall_s": min(walls, default=None)}
    a, b = (s[lb]["median_wall_s"] for lb in labels)
    s["ratio"] = round(a / b, 3) if a and b else None
    s["ratio_of"] = f"{labels[0]}/{labels[1]} median wall time"
    s["precisions"] = sorted({x["precision"] for x in results if x.get("precision")})
    return s


def print_table(results, s, labels):
    keys = ("wall_s", "rc", "train_images_per_s", "mAP50", "mAP50-95", "precision")
    print(f"\n{'run':<12}" + "".join(f"{k:>19}" for k in keys))
    for x in results:
        print(f"{x['side'] + ' r' + str(x['repeat']):<12}" + "".join(f"{x.get(k, '-')!s:>19}" for k in keys))
    for lb in labels:
        t = s[lb]
        print(f"{lb:<12} median {t['median_wall_s']} s, min {t['min_wall_s']} s, {t['ok']}/{t['runs']} ok")
    print(f"{s['ratio_of']}: {s['ratio']}")
    if len(s["precisions"]) > 1:
        print(f"WARNING: --precision auto chose differently between runs ({', '.join(s['precisions'])}): "
              "its probe is sensitive to load; pass --ours-args '--precision ...' to compare one precision")


def main(argv=None):
    a = parse_args(argv)
    if a.mode != "kd" and not Path(a.upstream_python).exists():
        raise SystemExit(f"vs_upstream: no {a.upstream_python}; install upstream as this file's docstring says")
    out = Path(a.out)
    runs = out / ("vs_upstream" if a.mode == "train" else f"vs_upstream_{a.mode}")
    yamls = build_subset(out / f"neu{a.images}_val{a.val_images}", a.images, a.val_images)
    weights = a.weights
    if a.mode != "train":  # the fixture is read-only: every tool reads a copy
        weights = runs / Path(a.weights).name
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(a.weights, weights)
    labels = ("kd", "student") if a.mode == "kd" else SIDES  # the ratio: upstream/ours, kd/student
    record = {"mode": a.mode, "config": vars(a), "cpu": cpu_info(), **versions(a.upstream_python),
              "subset": {k: str(v) for k, v in yamls.items()}, "runs": []}
    for r in range(a.repeats):
        for label, spec in commands(a, yamls, runs, weights, r).items():
            record["runs"].append(one_run(label, spec, a, runs, r))
    record["summary"] = summary(record["runs"], labels)
    if a.mode == "kd":
        record["step_overhead"] = kd_step_overhead(a, runs, weights)
    f = out / ("vs_upstream.json" if a.mode == "train" else f"vs_upstream_{a.mode}.json")
    f.write_text(json.dumps(record, indent=2, default=str))
    print_table(record["runs"], record["summary"], labels)
    print(f"CPU: {record['cpu']['model_name']} {record['cpu']['flags']}; torch {record['torch']}\nsaved {f}")
    return record


if __name__ == "__main__":
    main()

"""Did the input checks of issue 28 make the hot paths slower? This checkout against a baseline commit, side by side.

    python benchmarks/hot_paths.py                      # baseline dd489f4 (before issue 28), 3 rounds
    python benchmarks/hot_paths.py --baseline REV --rounds 5 --data ../shared/datasets/NEU-DET

Each round runs one child process per checkout (baseline, then this one, alternating), each single-threaded,
timing on the same data:
- label scan of the train split without a cache (every image read and header-checked, every label parsed)
  and with the cache the first scan wrote (read, verified, matched);
- image reads (imread of each train image, ms per image);
- the training dataloader (mosaic on, --cache off, workers 0) in images/s;
- checkpoint loads: an upstream pickle (the allowlisted unpickler) and one of ours (weights_only), median ms.
The baseline is a git worktree under runs/. Prints a table and writes runs/benchmarks/hot_paths.json (the
median of the rounds per figure, with the CPU named).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "benchmarks" / "hot_paths.json"
FIGURES = (("scan_fresh_s", "label scan, no cache (s)"), ("scan_cached_s", "label scan, cached (s)"),
           ("imread_ms", "imread (ms/image)"), ("loader_img_per_s", "dataloader (img/s)"),
           ("load_upstream_ms", "load upstream .pt (ms)"), ("load_ours_ms", "load our .pt (ms)"))


def child(data, n_images, ours_pt, upstream_pt):
    """Time every figure in this process (sys.path[0] is the checkout under test) -> dict."""
    import torch

    torch.set_num_threads(1)
    from utils.checkpoint import load_model
    from utils.dataloaders import create_dataloader
    from utils.general import yaml_load
    from utils.image_io import imread
    from utils.label_files import list_image_files, load_labels

    out = {}
    with tempfile.TemporaryDirectory() as tmp:  # a private copy of the split (links), so caches land in tmp
        for sub in ("images", "labels"):
            (Path(tmp) / sub / "train").mkdir(parents=True)
        files = sorted(list_image_files(Path(data) / "images" / "train"))[:n_images]
        for f in files:
            os.symlink(f, Path(tmp) / "images" / "train" / Path(f).name)
            lb = Path(data) / "labels" / "train" / (Path(f).stem + ".txt")
            if lb.is_file():
                shutil.copy(lb, Path(tmp) / "labels" / "train" / lb.name)
        local = sorted(list_image_files(Path(tmp) / "images" / "train"))
        t = time.perf_counter()
        load_labels(local)
        out["scan_fresh_s"] = time.perf_counter() - t
        t = time.perf_counter()
        load_labels(local)
        out["scan_cached_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for f in local:
            imread(f)
        out["imread_ms"] = 1000 * (time.perf_counter() - t) / len(local)
        hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")
        loader, _ = create_dataloader(str(Path(tmp) / "images" / "train"), 224, 16, 32, hyp=hyp, augment=True,
                                      workers=0, shuffle=True)
        images, t = 0, time.perf_counter()
        for imgs, *_ in loader:
            images += imgs.shape[0]
        out["loader_img_per_s"] = images / (time.perf_counter() - t)
    for key, path in (("load_upstream_ms", upstream_pt), ("load_ours_ms", ours_pt)):
        if path and Path(path).is_file():
            times = []
            for _ in range(5):
                t = time.perf_counter()
                load_model(path)
                times.append(1000 * (time.perf_counter() - t))
            out[key] = statistics.median(times)
    return out


def baseline_tree(rev):
    """A worktree of rev under runs/ (made once per rev)."""
    tree = ROOT / "runs" / "benchmarks" / f"hot_paths_base_{rev}"
    if not (tree / "utils").is_dir():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev], check=True,
                       capture_output=True)
    return tree


def run_child(tree, a):
    """One child process in checkout `tree` -> its figures."""
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT / 'benchmarks')!r}); "
            f"import json, hot_paths; print('HOT_PATHS', json.dumps(hot_paths.child({a.data!r}, {a.images}, "
            f"{a.ours_pt!r}, {a.upstream_pt!r})))")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("HOT_PATHS ")), None)
    if r.returncode or line is None:
        raise SystemExit(f"hot_paths: the run in {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="dd489f4", help="git revision to compare against")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "NEU-DET"))
    p.add_argument("--images", type=int, default=480, help="train images used")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ours-pt", default=str(ROOT / "benchmarks" / "results" / "kd_convergence" / "neu_e100_img224"
                                            / "ours_teacher.pt"))
    p.add_argument("--upstream-pt", default=str(ROOT.parent / "shared" / "fixtures" / "upstream_yolov5s_neu224.pt"))
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))  # this process only: each child puts its own checkout first
    from utils.precision import cpu_description

    trees = {"baseline": baseline_tree(a.baseline), "this": ROOT}
    runs = {k: [] for k in trees}
    for r in range(a.rounds):
        for name, tree in trees.items():
            runs[name].append(run_child(tree, a))
            print(f"round {r + 1}/{a.rounds} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in runs[name][-1].items()))
    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    result = {"cpu": f"{cpu_description()}, {os.cpu_count()} cores", "baseline": a.baseline, "images": a.images, "rounds": a.rounds, "median": med,
              "ratio_this_over_baseline": {k: med["this"][k] / med["baseline"][k] for k in med["this"]
                                           if med["baseline"].get(k)}, "runs": runs}
    print(f"\n{result['cpu']}, {a.images} NEU-DET train images, median of {a.rounds} rounds, 1 thread")
    print(f"{'figure':32s} {'baseline ' + a.baseline:>18s} {'this':>10s} {'ratio':>7s}")
    for key, label in FIGURES:
        if key in med["this"] and key in med["baseline"]:
            print(f"{label:32s} {med['baseline'][key]:18.4g} {med['this'][key]:10.4g} "
                  f"{result['ratio_this_over_baseline'][key]:7.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

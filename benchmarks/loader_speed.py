"""Images/s of the training dataloader alone (no model): mosaic on, NEU-DET, with and without --cache ram.

Usage: python benchmarks/loader_speed.py [--data data/NEU-DET.yaml] [--imgsz 224] [--batch-size 16]
       [--workers 2] [--batches 60] [--cache none ram]
Prints one line per cache mode and writes runs/benchmarks/loader_speed.json.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.dataloaders import create_dataloader  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.general import init_seeds, yaml_load  # noqa: E402


def measure(train_path, opt, cache):
    """Steady-state images/s: the first `warmup` batches (worker start-up, first reads) are not timed."""
    hyp = yaml_load(opt.hyp)
    t0 = time.perf_counter()
    loader, dataset = create_dataloader(train_path, opt.imgsz, opt.batch_size, 32, hyp=hyp, augment=True,
                                        cache=cache, workers=opt.workers, shuffle=True, prefix="")
    setup_s = time.perf_counter() - t0
    images, timed_from, n_batches = 0, None, 0
    while n_batches < opt.batches + opt.warmup:
        for imgs, targets, paths, shapes in loader:
            n_batches += 1
            if n_batches == opt.warmup:
                timed_from = time.perf_counter()
            elif n_batches > opt.warmup:
                images += imgs.shape[0]
            if n_batches >= opt.batches + opt.warmup:
                break
    seconds = time.perf_counter() - timed_from
    return {"cache": cache or "none", "images_per_s": round(images / seconds, 1), "images": images,
            "seconds": round(seconds, 2), "setup_s": round(setup_s, 2), "dataset_images": len(dataset)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="training dataloader throughput")
    parser.add_argument("--data", default=str(ROOT / "data" / "NEU-DET.yaml"))
    parser.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--cache", nargs="+", default=["none", "ram"], choices=["none", "ram", "disk"])
    parser.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "loader_speed.json"))
    opt = parser.parse_args(argv)
    init_seeds(0)
    torch.set_num_threads(1)
    data = check_dataset(opt.data)
    results = []
    for cache in opt.cache:
        r = measure(data["train"], opt, None if cache == "none" else cache)
        results.append(r)
        print(f"cache={r['cache']:5s} {r['images_per_s']:8.1f} images/s ({r['images']} images in {r['seconds']}s, "
              f"setup {r['setup_s']}s)", flush=True)
    report = {"data": opt.data, "imgsz": opt.imgsz, "batch_size": opt.batch_size, "workers": opt.workers,
              "mosaic": True, "cpu": platform.processor() or platform.machine(), "results": results}
    Path(opt.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opt.out).write_text(json.dumps(report, indent=2))
    print(f"written {opt.out}")
    return report


if __name__ == "__main__":
    main()

"""Wall time of validation over NEU-DET val on CPU, split into load, pre-process, inference, NMS, metrics.

    python benchmarks/val_speed.py                                 # yolov5n, random init, img 224
    python benchmarks/val_speed.py --weights ../shared/fixtures/upstream_yolov5s_neu224.pt

Prints a table and saves JSON to runs/benchmarks/val_speed_<model>_<img>.json.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.evaluation import validate  # noqa: E402
from utils.general import LOGGER  # noqa: E402


class TimedLoader:
    """Wrap a DataLoader and accumulate the time spent waiting for each batch."""

    def __init__(self, loader):
        self.loader, self.dataset, self.t = loader, loader.dataset, 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.t += time.perf_counter() - t0
            yield batch


def build_model(weights, cfg, nc):
    if weights:
        from utils.checkpoint import load_model

        return load_model(weights, device="cpu", fuse=True)
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(cfg, nc=nc).fuse().eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data/NEU-DET.yaml"))
    p.add_argument("--weights", default="", help="checkpoint; empty = random-init --cfg")
    p.add_argument("--cfg", default=str(ROOT / "models/yolov5n.yaml"))
    p.add_argument("--imgsz", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks"))
    opt = p.parse_args(argv)

    from utils.dataloaders import create_dataloader
    from utils.dataset_yaml import check_dataset

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    data = check_dataset(opt.data)
    model = build_model(opt.weights, opt.cfg, data["nc"])
    stride = int(torch.as_tensor(model.stride).max())
    t0 = time.perf_counter()
    loader = create_dataloader(data["val"], opt.imgsz, opt.batch_size, stride, pad=0.5, rect=True,
                               workers=opt.workers, prefix="val: ", background_workers=True)[0]  # as val.py on CPU
    t_build = time.perf_counter() - t0
    with torch.no_grad():  # warm-up forward so the first batch is not a cold start
        model(torch.zeros(1, 3, opt.imgsz, opt.imgsz))
    timed = TimedLoader(loader)
    t0 = time.perf_counter()
    res = validate(model, timed, data, conf_thres=opt.conf_thres, plots=False, half=False)
    results, prof = res.results, res.profile
    wall = time.perf_counter() - t0
    n = prof["images"]
    split = {"dataloader_build": t_build, "load": timed.t, "pre": prof["pre"], "inference": prof["inference"],
             "nms": prof["nms"], "metrics": prof["metrics"]}
    split["other"] = wall - sum(v for k, v in split.items() if k != "dataloader_build")
    name = Path(opt.weights).stem if opt.weights else Path(opt.cfg).stem + "_random"
    record = {"model": name, "imgsz": opt.imgsz, "batch_size": opt.batch_size, "images": n, "wall_s": wall,
              "seconds": split, "ms_per_image": {k: v / n * 1e3 for k, v in split.items()},
              "mAP50": results[2], "mAP50-95": results[3], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    LOGGER.info(f"\nval wall time {wall:.2f}s for {n} images ({name}, img {opt.imgsz}, batch {opt.batch_size})")
    for k, v in split.items():
        LOGGER.info(f"{k:>17s} {v:8.3f}s {v / n * 1e3:8.2f} ms/img")
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"val_speed_{name}_{opt.imgsz}.json"
    f.write_text(json.dumps(record, indent=2))
    LOGGER.info(f"saved {f}")
    return record


if __name__ == "__main__":
    main()

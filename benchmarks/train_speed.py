"""Training throughput (images/s) and peak RSS: yolov5n, NEU-DET, img 224, batch 16, CPU by default.

Runs the engine's training step (loader -> forward -> ComputeLoss -> backward -> clip -> SGD -> EMA) for
--warmup iterations, then times --iters iterations, for each variant: fp32, channels_last, bf16
(CPU autocast), bf16+channels_last. Prints a table and writes runs/benchmarks/train_speed.json.

    python benchmarks/train_speed.py [--variants fp32 bf16] [--iters 20] [--warmup 5] [--workers 2]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.general import LOGGER, init_seeds, yaml_load  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.optim import ModelEMA, smart_optimizer  # noqa: E402

VARIANTS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
            "bf16+channels_last": (True, True)}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(opt, device, channels_last):
    init_seeds(0)
    data = check_dataset(opt.data)
    hyp = yaml_load(opt.hyp)
    model = DetectionModel(str(ROOT / "models" / opt.cfg), nc=int(data["nc"])).to(device)
    nl = model.model[-1].nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= data["nc"] / 80 * 3 / nl
    hyp["obj"] *= (opt.img / 640) ** 2 * 3 / nl
    model.hyp = hyp
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader, _ = create_dataloader(data["train"], opt.img, opt.batch, 32, hyp=hyp, augment=True,
                                  workers=opt.workers, shuffle=True, prefix="bench: ",
                                  background_workers=device.type == "cpu")  # as the engine's
    opt_ = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    return model, loader, opt_, ComputeLoss(model), ModelEMA(model)


def bench_variant(opt, name, device):
    channels_last, bf16 = VARIANTS[name]
    model, loader, optimizer, compute_loss, ema = build(opt, device, channels_last)
    model.train()
    n_img, t_start, losses = 0, None, []
    it = iter(loader)
    for i in range(opt.warmup + opt.iters):
        try:
            imgs, targets, _, _ = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, targets, _, _ = next(it)
        if i == opt.warmup:
            t_start, n_img = time.perf_counter(), 0
        imgs = imgs.to(device).float() / 255
        if channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(imgs)
            loss, items = compute_loss(pred, targets.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        n_img += imgs.shape[0]
        losses.append(items.sum().item() if i >= opt.warmup else None)
    dt = time.perf_counter() - t_start
    res = {"variant": name, "images_per_s": n_img / dt, "s_per_iter": dt / opt.iters,
           "mean_loss_timed": sum(x for x in losses if x is not None) / opt.iters, "peak_rss_mb": peak_rss_mb()}
    LOGGER.info(f"{name:>20s}: {res['images_per_s']:6.1f} img/s  {res['s_per_iter']:.3f} s/iter  "
                f"loss {res['mean_loss_timed']:.4f}  peak RSS {res['peak_rss_mb']:.0f} MB")
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT / "data/NEU-DET.yaml"))
    p.add_argument("--hyp", default=str(ROOT / "data/hyps/hyp.scratch-low.yaml"))
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks/train_speed.json"))
    opt = p.parse_args()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = torch.device(opt.device if opt.device == "cpu" else f"cuda:{opt.device}" if opt.device.isdigit() else opt.device)
    LOGGER.info(f"train speed: {opt.cfg} img {opt.img} batch {opt.batch} on {device}, "
                f"{torch.get_num_threads()} threads, {opt.workers} workers")
    from utils.precision import choose_precision, cpu_flags

    auto = choose_precision("auto", device.type)  # what --precision auto picks here, to check against the timings
    LOGGER.info(f"--precision auto on this machine: {auto.name} ({auto.reason})")
    results = [bench_variant(opt, v, device) for v in opt.variants]
    out = Path(opt.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bf16_flags = sorted(f for f in cpu_flags() if "bf16" in f)
    out.write_text(json.dumps({"config": vars(opt), "torch": torch.__version__, "cpu_bf16_flags": bf16_flags,
                               "auto_precision": {"name": auto.name, "reason": auto.reason},
                               "results": results}, indent=2))
    LOGGER.info(f"saved {out}")


if __name__ == "__main__":
    main()

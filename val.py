"""Validate a detection model on a dataset: mAP as YOLOv5 computes it, plots, speed, COCO JSON.

Usage:
    python val.py --weights best.pt --data data/NEU-DET.yaml --img 224
    python val.py --weights a.pt b.pt --data data/NEU-DET.yaml   # ensemble
`run(...)` is also called in-process by the training engine every epoch.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh  # noqa: E402
from utils.general import LOGGER, check_img_size, colorstr, increment_path, print_args  # noqa: E402
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

TABLE_FMT = "%22s" + "%11i" * 2 + "%11.3g" * 4
TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")


class Timer:
    """Accumulating wall-clock timer (synchronises CUDA so GPU work is counted)."""

    def __init__(self, device=None):
        self.t, self.cuda = 0.0, device is not None and torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *args):
        if self.cuda:
            torch.cuda.synchronize()
        self.t += time.perf_counter() - self.start


class Ensemble:
    """Several InferenceBackends run on the same input; decoded outputs concatenated (NMS ensemble)."""

    def __init__(self, weights, device, half):
        from utils.backends import InferenceBackend

        self.members = [InferenceBackend(w, device=device, fp16=half) for w in weights]
        first = self.members[0]
        self.stride = max(m.stride for m in self.members)
        self.names, self.pt, self.fp16 = first.names, all(m.pt for m in self.members), first.fp16
        for m in self.members[1:]:
            if len(m.names) != len(first.names):
                raise ValueError(f"ensemble: {m.weights} has {len(m.names)} classes, {first.weights} has "
                                 f"{len(first.names)}")

    def __call__(self, im, augment=False):
        outs = []
        for m in self.members:
            if augment and m.pt:
                with torch.no_grad():
                    y = m.model(im.to(m.device, torch.float16 if m.fp16 else torch.float32), augment=True)
                outs.append((y[0] if isinstance(y, (list, tuple)) else y).float())
            else:
                outs.append(m(im))
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def warmup(self, imgsz):
        for m in self.members:
            m.warmup(imgsz)


def save_one_txt(predn, save_conf, shape, file):
    """Append predictions (pixels of the original image) as normalised `cls xc yc w h [conf]` rows."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]
    xywh = xyxy2xywh(predn[:, :4].float().cpu()) / gn
    rows = torch.cat((predn[:, 5:6].cpu(), xywh) + ((predn[:, 4:5].cpu(),) if save_conf else ()), 1).tolist()
    with open(file, "a") as f:
        f.writelines(" ".join(f"{v:g}" for v in r) + "\n" for r in rows)


def _image_id(path):
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def coco_predictions(predn, path, class_map):
    """COCO result dicts for one image: bbox [x, y, w, h] in original pixels."""
    box = xyxy2xywh(predn[:, :4].float().cpu())
    box[:, :2] -= box[:, 2:] / 2
    return [{"image_id": _image_id(path), "category_id": class_map[int(p[5])],
             "bbox": [round(x, 3) for x in b], "score": round(p[4], 5)}
            for p, b in zip(predn.tolist(), box.tolist())]


def coco_ground_truth(dataset, names, class_map):
    """COCO ground-truth dict built from a LoadImagesAndLabels dataset (labels scaled to original size)."""
    images, anns = [], []
    for f, (w, h), lb in zip(dataset.im_files, dataset.shapes, dataset.labels):
        images.append({"id": _image_id(f), "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for c, xc, yc, bw, bh in np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, :5]:
            box = [(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": _image_id(f), "category_id": class_map[int(c)],
                         "bbox": [round(x, 3) for x in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    cats = [{"id": class_map[k], "name": v} for k, v in names.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def evaluate_coco(gt_json, pred_json):
    """(mAP50-95, mAP50) from pycocotools, or None when it is not installed / nothing was predicted."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        LOGGER.info("pycocotools not installed: skipping the COCO evaluation (pip install pycocotools)")
        return None
    if not json.loads(Path(pred_json).read_text()):
        LOGGER.info("no predictions: skipping the COCO evaluation")
        return None
    gt = COCO(str(gt_json))
    ev = COCOeval(gt, gt.loadRes(str(pred_json)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def _batch_metrics(preds, targets, im, paths, shapes, iouv, single_cls, confusion, plots):
    """Per-image (correct, conf, cls, target_cls) rows and native-space predictions of one batch."""
    stats, native = [], []
    for si, pred in enumerate(preds):
        labels = targets[targets[:, 0] == si, 1:]
        nl, npr = labels.shape[0], pred.shape[0]
        shape, ratio_pad = (shapes[si][0], shapes[si][1]) if shapes[si] is not None else (im.shape[2:], None)
        correct = torch.zeros(npr, iouv.numel(), dtype=torch.bool, device=pred.device)
        if npr == 0:
            if nl:
                stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
                if plots:
                    confusion.process_batch(None, labels[:, 0])
            native.append(None)
            continue
        if single_cls:
            pred[:, 5] = 0
        predn = pred.clone()
        scale_boxes(im[si].shape[1:], predn[:, :4], shape, ratio_pad)
        if nl:
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im[si].shape[1:], tbox, shape, ratio_pad)
            labelsn = torch.cat((labels[:, 0:1], tbox), 1)
            correct = match_predictions(predn, labelsn, iouv)
            if plots:
                confusion.process_batch(predn, labelsn)
        stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
        native.append((predn, shape))
    return stats, native


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300, task="val",
        device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False, save_hybrid=False,
        save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp", exist_ok=False, half=True,
        model=None, dataloader=None, save_dir=Path(""), plots=True, compute_loss=None):
    """Validate; returns ((mp, mr, map50, map, box, obj, cls), maps (nc,), (t_pre, t_inf, t_nms) ms/img)."""
    from utils.dataset_yaml import check_dataset

    training = model is not None
    if training:  # called by the engine: model (EMA) and loader given
        device = next(model.parameters()).device
        half &= device.type == "cuda"
        model.half() if half else model.float()
        model.eval()
        names = dict(getattr(model, "names", None) or {})
        forward = (lambda x, augment=False: model(x, augment=augment)) if augment else model
        save_dir = Path(save_dir)
    else:
        device = select_device(device, batch_size)
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        weights = [weights] if isinstance(weights, (str, Path)) else list(weights or [])
        if not weights:
            raise ValueError("val.run: give weights (a .pt/.onnx path or list) or a model")
        forward = Ensemble(weights, device, half)
        names, half = forward.names, forward.fp16
        imgsz = check_img_size(imgsz, s=forward.stride)
        if not forward.pt:
            batch_size = 1 if any(m.fixed_shape and m.fixed_shape[0] == 1 for m in forward.members) else batch_size
    data = data if isinstance(data, dict) and "nc" in data else check_dataset(data)
    nc = 1 if single_cls else int(data["nc"])
    names = names if names and len(names) == nc else ({0: "item"} if single_cls else dict(data["names"]))
    iouv = torch.linspace(0.5, 0.95, 10, device=device)

    if training and dataloader is None:
        from utils.dataloaders import create_dataloader

        stride = int(torch.as_tensor(getattr(model, "stride", 32)).max())
        dataloader = create_dataloader(data[task if task in ("train", "val", "test") else "val"], imgsz, batch_size,
                                       stride, single_cls, pad=0.5, rect=True, workers=workers)[0]
    if not training:
        ncm = len(forward.names)
        if not single_cls and ncm != nc:
            raise ValueError(f"{weights[0]}: model has {ncm} classes but {data.get('yaml_file', 'the dataset')} "
                             f"has nc={nc}: pass matching --weights and --data")
        forward.warmup((1 if forward.pt else batch_size, 3, imgsz, imgsz))
        shape_free = forward.pt or all(m.fixed_shape is None for m in forward.members)  # .pt or dynamic ONNX
        pad, rect = (0.0, False) if task == "speed" else (0.5, shape_free)
        split = task if task in ("train", "val", "test") else "val"
        if not data.get(split):
            raise ValueError(f"{data.get('yaml_file', 'dataset')}: no '{split}:' split to validate on")
        from utils.dataloaders import create_dataloader

        dataloader = create_dataloader(data[split], imgsz, batch_size, forward.stride, single_cls, pad=pad,
                                       rect=rect, workers=workers, prefix=colorstr(f"{split}: "))[0]

    seen = 0
    confusion = ConfusionMatrix(nc=nc)
    class_map = list(range(1000))
    dt = Timer(device), Timer(device), Timer(device), Timer(device)  # pre, inference, NMS, matching
    mp = mr = map50 = map_ = 0.0
    loss = torch.zeros(3, device=device)
    stats, jdict = [], []
    try:
        from tqdm import tqdm

        pbar = tqdm(dataloader, desc=TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}", disable=not sys.stderr.isatty())
    except ImportError:
        pbar = dataloader
    if getattr(pbar, "disable", True):  # no progress bar: print the table header ourselves
        LOGGER.info(TABLE_HEADER)
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            im = (im.half() if half else im.float()) / 255
            targets = targets.to(device)
            nb, _, height, width = im.shape
        with dt[1]:
            if training:
                out = forward(im) if not augment else forward(im, augment=True)
                preds, train_out = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
            else:
                preds, train_out = forward(im, augment=augment), None
        if compute_loss is not None and train_out is not None:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        with dt[2]:
            preds = non_max_suppression(preds, conf_thres, iou_thres, labels=lb, multi_label=True,
                                        agnostic=single_cls, max_det=max_det)
        with dt[3]:
            batch_stats, native = _batch_metrics(preds, targets, im, paths, shapes, iouv, single_cls, confusion,
                                                 plots)
        stats += batch_stats
        seen += len(preds)
        for path, nat in zip(paths, native):
            if nat is None:
                continue
            if save_txt:
                save_one_txt(nat[0], save_conf, nat[1], save_dir / "labels" / f"{Path(path).stem}.txt")
            if save_json:
                jdict += coco_predictions(nat[0], path, class_map)
        if plots and batch_i < 3:
            from utils.plots import output_to_target, plot_images

            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds, max_det=15), paths, save_dir / f"val_batch{batch_i}_pred.jpg",
                        names)

    # metrics
    t_metrics = time.perf_counter()
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)] if stats else [np.zeros((0, 10), bool)] + \
        [np.zeros(0)] * 3
    ap_class, p, r, ap50, ap = np.zeros(0, int), *[np.zeros(0)] * 4
    if len(stats[0]) and stats[0].any():
        _, _, p, r, _, ap, ap_class = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names)
        ap50, ap = ap[:, 0], ap.mean(1)
        mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), ap.mean()
    nt = np.bincount(stats[3].astype(int), minlength=nc)
    LOGGER.info(TABLE_FMT % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        LOGGER.warning(f"WARNING: no labels found in {task} set, cannot compute metrics without labels")
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(stats[0]):
        for i, c in enumerate(ap_class):
            LOGGER.info(TABLE_FMT % (names.get(int(c), str(c)), seen, nt[c], p[i], r[i], ap50[i], ap[i]))
    t_metrics = time.perf_counter() - t_metrics

    t = tuple(x.t / max(seen, 1) * 1e3 for x in dt[:3])
    if not training:
        LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape "
                    f"{(batch_size, 3, imgsz, imgsz)}" % t)
    if plots:
        confusion.plot(save_dir=save_dir, names=list(names.values()))
    if save_json and jdict:
        pred_json = save_dir / f"{Path(weights[0]).stem if weights else 'model'}_predictions.json"
        gt_json = save_dir / "ground_truth.json"
        pred_json.write_text(json.dumps(jdict))
        gt_json.write_text(json.dumps(coco_ground_truth(dataloader.dataset, names, class_map)))
        LOGGER.info(f"saved {pred_json} and {gt_json}")
        res = evaluate_coco(gt_json, pred_json)
        if res:
            LOGGER.info(f"pycocotools: mAP50 {res[1]:.3f}, mAP50-95 {res[0]:.3f} (ours: mAP50 {map50:.3f}, "
                        f"mAP50-95 {map_:.3f}; COCO gives 0 precision beyond the last recall point)")
    if training:
        model.float()
    else:
        n_txt = len(list(save_dir.glob("labels/*.txt")))
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}" +
                    (f"\n{n_txt} labels saved to {save_dir / 'labels'}" if save_txt else ""))
    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i]
    # totals in seconds of the last call, for benchmarks (metrics = matching + AP + table)
    run.last_profile = {"images": seen, "pre": dt[0].t, "inference": dt[1].t, "nms": dt[2].t,
                        "metrics": dt[3].t + t_metrics}
    return (mp, mr, map50, map_, *(loss.cpu() / max(len(dataloader), 1)).tolist()), maps, t


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Validate a YOLOv5 model on a dataset")
    p.add_argument("--data", type=str, default=str(ROOT / "data/NEU-DET.yaml"), help="dataset.yaml path")
    p.add_argument("--weights", nargs="+", type=str, default=["yolov5s.pt"], help="model path(s); several = ensemble")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", help="train, val, test, speed or study")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--augment", action="store_true", help="augmented inference (TTA)")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    p.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    opt = p.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def study(opt):
    """mAP and speed against image size for each weights file -> study_*.txt and study.png."""
    from utils.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    for w in opt.weights:
        rows = []
        for size in range(256, 1536 + 128, 128):
            LOGGER.info(f"\nRunning {w} --imgsz {size}...")
            r, _, t = run(**{**vars(opt), "weights": w, "imgsz": size, "plots": False})
            rows.append([size, *r, *t])
        rows = np.array(rows)
        f = Path(opt.project) / f"study_{Path(opt.data).stem}_{Path(w).stem}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(f, rows, fmt="%10.4g")
        ax[0].plot(rows[:, 0], rows[:, 4], ".-", label=Path(w).stem)
        ax[1].plot(rows[:, 9], rows[:, 4], ".-", label=Path(w).stem)
    ax[0].set(xlabel="image size", ylabel="mAP50-95")
    ax[1].set(xlabel="inference ms/img", ylabel="mAP50-95")
    ax[0].legend()
    fig.savefig(Path(opt.project) / "study.png", dpi=200)


def main(opt):
    if opt.task in ("train", "val", "test"):
        if opt.conf_thres > 0.001:
            LOGGER.info(f"WARNING: confidence threshold {opt.conf_thres} > 0.001 produces invalid results")
        if opt.save_hybrid:
            LOGGER.info("WARNING: --save-hybrid returns high mAP from hybrid labels, not from predictions alone")
        return run(**vars(opt))
    opt.half = torch.cuda.is_available() and opt.device != "cpu"
    if opt.task == "speed":
        opt.conf_thres, opt.iou_thres, opt.save_json = 0.25, 0.45, False
        for w in opt.weights:
            run(**{**vars(opt), "weights": w, "plots": False})
    elif opt.task == "study":
        study(opt)
    else:
        raise ValueError(f"--task {opt.task} not in train, val, test, speed, study")


def cli_main(opt):
    print_args(opt, "val")
    return main(opt)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(cli_main, parse_opt, "val.py")

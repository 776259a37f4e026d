"""Detection evaluation as a library (mAP as YOLOv5 computes it).

evaluate()          the loop over a validation loader: NMS, matching, mAP, plots, saved outputs
validate()          an in-memory model on a prepared loader (the training engine, every epoch)
validate_weights()  weights files (.pt/.onnx, several = ensemble) on a dataset split (val.py, as `val.run`)
"""

import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from utils.backends import Ensemble
from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.coco import coco_predictions, save_coco_json
from utils.general import LOGGER, ROOT, check_img_size, colorstr, increment_path
from utils.metrics import ConfusionMatrix, ap_curves, match_predictions, operating_point
from utils.nms import non_max_suppression
from utils.run_dirs import writing
from utils.torch_utils import Timer, select_device

TABLE_FMT = "%22s" + "%11i" * 2 + "%11.3g" * 4
TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
SPLITS = ("train", "val", "test")


class EvalResult(NamedTuple):
    results: tuple  # (mP, mR, mAP50, mAP50-95, val box, obj, cls loss)
    maps: np.ndarray  # (nc,) mAP50-95 per class (the overall mAP for classes without labels)
    speed: tuple  # (pre-process, inference, NMS) ms per image
    profile: dict  # seconds: 'images', 'pre', 'inference', 'nms', 'metrics' (matching + AP + table)
    ap50: np.ndarray = None  # (nc,) AP50 per class (0 for classes without labels)


def save_one_txt(predn, save_conf, shape, file):
    """Append predictions (pixels of the original image) as normalised `cls xc yc w h [conf]` rows."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]
    xywh = xyxy2xywh(predn[:, :4].float().cpu()) / gn
    rows = torch.cat((predn[:, 5:6].cpu(), xywh) + ((predn[:, 4:5].cpu(),) if save_conf else ()), 1).tolist()
    with writing(file), open(file, "a") as f:
        f.writelines(" ".join(f"{v:g}" for v in r) + "\n" for r in rows)


def _batch_metrics(preds, targets, im, shapes, iouv, single_cls, confusion, plots):
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


def _progress(dataloader):
    """A progress bar titled with the table header on a terminal; elsewhere the loader and a header line."""
    try:
        from tqdm import tqdm

        pbar = tqdm(dataloader, desc=TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}", disable=not sys.stderr.isatty())
    except ImportError:
        pbar = dataloader
    if getattr(pbar, "disable", True):
        LOGGER.info(TABLE_HEADER)
    return pbar


def _summary(stats, nc, names, seen, task, per_class, plots, save_dir):
    """(mP, mR, mAP50, mAP50-95), AP50-95 and AP50 per class, and the logged table, from the accumulated stats."""
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)] if stats else [np.zeros((0, 10), bool)] + \
        [np.zeros(0)] * 3
    mp = mr = map50 = map_ = 0.0
    ap_class, p, r, ap50, ap = np.zeros(0, int), *[np.zeros(0)] * 4
    if len(stats[0]) and stats[0].any():
        curves = ap_curves(*stats)
        _, _, p, r, _, ap, ap_class = operating_point(curves)
        if plots:
            from utils.plots import plot_ap_curves

            plot_ap_curves(curves, save_dir, names)
        ap50, ap = ap[:, 0], ap.mean(1)
        mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), ap.mean()
    nt = np.bincount(stats[3].astype(int), minlength=nc)
    LOGGER.info(TABLE_FMT % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        LOGGER.warning(f"WARNING: no labels found in {task} set, cannot compute metrics without labels")
    if per_class and nc > 1 and len(stats[0]):
        for i, c in enumerate(ap_class):
            LOGGER.info(TABLE_FMT % (names.get(int(c), str(c)), seen, nt[c], p[i], r[i], ap50[i], ap[i]))
    maps, ap50s = np.zeros(nc) + map_, np.zeros(nc)
    for i, c in enumerate(ap_class):
        maps[c], ap50s[c] = ap[i], ap50[i]
    return (mp, mr, map50, map_), maps, ap50s


@torch.no_grad()
def evaluate(forward, dataloader, names, device, *, half=False, conf_thres=0.001, iou_thres=0.6, max_det=300,
             single_cls=False, save_hybrid=False, compute_loss=None, per_class=False, plots=False, save_dir=Path(""),
             save_txt=False, save_conf=False, save_json=False, json_stem="model", task="val"):
    """Run `forward(im) -> (decoded predictions, raw train outputs or None)` over `dataloader` -> EvalResult.

    names: {class: name} of the nc evaluated classes. compute_loss: the detection loss on the raw outputs
    (val box/obj/cls). Writes under save_dir: plots (curves, confusion matrix, first batches), --save-txt
    labels/, --save-json COCO files.
    """
    nc = len(names)
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    seen, confusion, class_map = 0, ConfusionMatrix(nc=nc), list(range(1000))
    dt = Timer(device), Timer(device), Timer(device), Timer(device)  # pre, inference, NMS, matching
    loss = torch.zeros(3, device=device)
    stats, jdict = [], []
    for batch_i, (im, targets, paths, shapes) in enumerate(_progress(dataloader)):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            im = (im.half() if half else im.float()) / 255
            targets = targets.to(device)
            nb, _, height, width = im.shape
        with dt[1]:
            preds, train_out = forward(im)
        if compute_loss is not None and train_out is not None:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        with dt[2]:
            preds = non_max_suppression(preds, conf_thres, iou_thres, labels=lb, multi_label=True,
                                        agnostic=single_cls, max_det=max_det)
        with dt[3]:
            batch_stats, native = _batch_metrics(preds, targets, im, shapes, iouv, single_cls, confusion, plots)
        stats += batch_stats
        seen += len(preds)
        for path, nat in zip(paths, native):
            if nat is not None and save_txt:
                save_one_txt(nat[0], save_conf, nat[1], save_dir / "labels" / f"{Path(path).stem}.txt")
            if nat is not None and save_json:
                jdict += coco_predictions(nat[0], path, class_map)
        if plots and batch_i < 3:
            from utils.plots import output_to_target, plot_images

            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds, max_det=15), paths, save_dir / f"val_batch{batch_i}_pred.jpg",
                        names)

    t_metrics = time.perf_counter()
    (mp, mr, map50, map_), maps, ap50s = _summary(stats, nc, names, seen, task, per_class, plots, save_dir)
    t_metrics = time.perf_counter() - t_metrics
    if plots:
        from utils.plots import plot_confusion_matrix

        plot_confusion_matrix(confusion.matrix, True, save_dir / "confusion_matrix.png", list(names.values()))
    if save_json and jdict:
        save_coco_json(jdict, dataloader.dataset, names, class_map, save_dir, json_stem, map50, map_)
    speed = tuple(x.t / max(seen, 1) * 1e3 for x in dt[:3])
    profile = {"images": seen, "pre": dt[0].t, "inference": dt[1].t, "nms": dt[2].t, "metrics": dt[3].t + t_metrics}
    results = (mp, mr, map50, map_, *(loss.cpu() / max(len(dataloader), 1)).tolist())
    return EvalResult(results, maps, speed, profile, ap50s)


def _dataset(data):
    """A dataset dict (as check_dataset returns) from a dict or a dataset YAML."""
    if isinstance(data, dict) and "nc" in data:
        return data
    from utils.dataset_yaml import check_dataset

    return check_dataset(data)


def _class_names(data, model_names, single_cls):
    """{class: name} evaluated: the model's names when they fit the dataset's class count."""
    nc = 1 if single_cls else int(data["nc"])
    names = dict(model_names or {})
    return names if names and len(names) == nc else ({0: "item"} if single_cls else dict(data["names"]))


def validate(model, dataloader, data, *, half=False, single_cls=False, augment=False, conf_thres=0.001,
             iou_thres=0.6, max_det=300, compute_loss=None, plots=False, verbose=False, save_dir=Path(""),
             autocast_dtype=None):
    """Evaluate an in-memory model (eval mode; float16 only when half and on CUDA) on a prepared loader,
    as the training engine does each epoch -> EvalResult. The model is left in eval mode, float32.

    autocast_dtype: torch.bfloat16 runs the forward pass under CPU autocast (what a bf16 training run trains
    in, as upstream validates in float16 on CUDA while training); Detect decodes boxes in float32 either way."""
    device = next(model.parameters()).device
    half &= device.type == "cuda"
    model.half() if half else model.float()
    model.eval()
    data = _dataset(data)
    channels_last = device.type == "cpu"  # channels_last input: faster convolutions on CPUs (oneDNN)
    use_autocast = autocast_dtype is not None and not half

    def forward(im):
        if channels_last:
            im = im.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=use_autocast):
            out = model(im, augment=True) if augment else model(im)
        preds, raw = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
        if use_autocast:  # bf16 raw maps -> float32 for the loss (the decoded boxes are float32 already)
            preds, raw = preds.float(), None if raw is None else [x.float() for x in raw]
        return preds, raw

    result = evaluate(forward, dataloader, _class_names(data, getattr(model, "names", None), single_cls), device,
                      half=half, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
                      compute_loss=compute_loss, per_class=verbose, plots=plots, save_dir=Path(save_dir))
    model.float()
    return result


def validate_weights(*args, **kwargs):
    """Validate weights files on a dataset split (val.py's flags) -> ((mP, mR, mAP50, mAP50-95, box, obj, cls),
    maps (nc,), (pre-process, inference, NMS) ms/img). Outputs go to project/name (incremented)."""
    result = evaluate_weights(*args, **kwargs)
    return result.results, result.maps, result.speed


def evaluate_weights(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
                     task="val", device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False,
                     save_hybrid=False, save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp",
                     exist_ok=False, half=True, plots=True, cfg=None, rect=None):
    """validate_weights with the whole EvalResult (AP50 per class, profile) as its result. rect=None: upstream's
    rule (rectangular batches for .pt and dynamic ONNX, square letterbox for fixed-shape artifacts); False forces
    the square letterbox everywhere, so formats can be compared on identical inputs."""
    from utils.dataloaders import create_dataloader

    device = select_device(device, batch_size)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    weights = [weights] if isinstance(weights, (str, Path)) else list(weights or [])
    if not weights:
        raise ValueError("val.run: give weights (a .pt/.onnx path or list)")
    model = Ensemble(weights, device, half, cfg=cfg)
    half = model.fp16
    imgsz = check_img_size(imgsz, s=model.stride)
    if not model.pt:
        batch_size = 1 if any(m.fixed_shape and m.fixed_shape[0] == 1 for m in model.members) else batch_size
    data = _dataset(data)
    names = _class_names(data, model.names, single_cls)
    if not single_cls and len(model.names) != int(data["nc"]):
        raise ValueError(f"{weights[0]}: model has {len(model.names)} classes but "
                         f"{data.get('yaml_file', 'the dataset')} has nc={data['nc']}: "
                         f"pass matching --weights and --data")
    model.warmup((1 if model.pt else batch_size, 3, imgsz, imgsz))
    shape_free = model.pt or all(m.fixed_shape is None for m in model.members)  # .pt or dynamic ONNX
    pad, rect = (0.0, False) if task == "speed" else (0.5, shape_free if rect is None else rect and shape_free)
    split = task if task in SPLITS else "val"
    if not data.get(split):
        raise ValueError(f"{data.get('yaml_file', 'dataset')}: no '{split}:' split to validate on")
    dataloader = create_dataloader(data[split], imgsz, batch_size, model.stride, single_cls, pad=pad, rect=rect,
                                   workers=workers, prefix=colorstr(f"{split}: "), nc=int(data["nc"]),
                                   background_workers=device.type == "cpu")[0]
    result = evaluate(lambda im: (model(im, augment=augment), None), dataloader, names, device, half=half,
                      conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
                      save_hybrid=save_hybrid, per_class=verbose or len(names) < 50, plots=plots, save_dir=save_dir,
                      save_txt=save_txt, save_conf=save_conf, save_json=save_json, json_stem=Path(weights[0]).stem,
                      task=task)
    LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape "
                f"{(batch_size, 3, imgsz, imgsz)}" % result.speed)
    n_txt = len(list(save_dir.glob("labels/*.txt")))
    LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}" +
                (f"\n{n_txt} labels saved to {save_dir / 'labels'}" if save_txt else ""))
    return result

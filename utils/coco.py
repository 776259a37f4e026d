"""COCO-JSON export of predictions and ground truth, and the optional pycocotools check (val.py --save-json)."""

import json
from pathlib import Path

import numpy as np

from utils.boxes import xyxy2xywh
from utils.general import LOGGER


def image_id(path):
    """COCO image id of a file: its stem, as an int when numeric."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def coco_predictions(predn, path, class_map):
    """COCO result dicts for one image: bbox [x, y, w, h] in original pixels."""
    box = xyxy2xywh(predn[:, :4].float().cpu())
    box[:, :2] -= box[:, 2:] / 2
    return [{"image_id": image_id(path), "category_id": class_map[int(p[5])],
             "bbox": [round(x, 3) for x in b], "score": round(p[4], 5)}
            for p, b in zip(predn.tolist(), box.tolist())]


def coco_ground_truth(dataset, names, class_map):
    """COCO ground-truth dict built from a LoadImagesAndLabels dataset (labels scaled to original size)."""
    images, anns = [], []
    for f, (w, h), lb in zip(dataset.im_files, dataset.shapes, dataset.labels):
        images.append({"id": image_id(f), "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for c, xc, yc, bw, bh in np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, :5]:
            box = [(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": image_id(f), "category_id": class_map[int(c)],
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


def save_coco_json(jdict, dataset, names, class_map, save_dir, stem, map50, map_):
    """Write <stem>_predictions.json and ground_truth.json to save_dir and compare with pycocotools."""
    pred_json, gt_json = save_dir / f"{stem}_predictions.json", save_dir / "ground_truth.json"
    pred_json.write_text(json.dumps(jdict))
    gt_json.write_text(json.dumps(coco_ground_truth(dataset, names, class_map)))
    LOGGER.info(f"saved {pred_json} and {gt_json}")
    res = evaluate_coco(gt_json, pred_json)
    if res:
        LOGGER.info(f"pycocotools: mAP50 {res[1]:.3f}, mAP50-95 {res[0]:.3f} (ours: mAP50 {map50:.3f}, "
                    f"mAP50-95 {map_:.3f}; COCO gives 0 precision beyond the last recall point)")
    return res

"""Calibration images for INT8 post-training quantization: letterboxed train-split images, never val ones."""

import numpy as np

from utils.augmentations import model_input
from utils.cli import UserError
from utils.general import LOGGER


def calibration_images(data, imgsz, n=300, batch=1, seed=0):
    """Up to n images of the dataset YAML's train split (a seeded sample) in batches of (batch, 3, h, w) float32
    0..1, letterboxed to imgsz (h, w) as validation feeds them. Unreadable images are skipped by name."""
    from utils.dataset_yaml import check_dataset
    from utils.image_io import read_image
    from utils.label_files import list_image_files

    d = check_dataset(data, autodownload=False)
    if not d.get("train"):
        raise UserError(f"--data {data}: no 'train:' split to calibrate on (INT8 never calibrates on val)")
    files = list_image_files(d["train"])
    if not files:
        raise UserError(f"--data {data}: its train split has no images to calibrate on")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    out, skipped = [], []
    for i in order:
        if len(out) >= n:
            break
        im, problem = read_image(files[i])
        if im is None:
            skipped.append(f"{files[i]} ({problem})")
            continue
        out.append(model_input(im, tuple(imgsz), scaleup=False))
    if skipped:
        LOGGER.warning(f"calibration: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    if not out:
        raise UserError(f"--data {data}: none of its train images could be read for calibration")
    LOGGER.info(f"calibration: {len(out)} train images of {data} at {imgsz[0]}x{imgsz[1]}")
    out += out[:(-len(out)) % batch]  # whole batches for a static batch size
    return [np.concatenate(out[i:i + batch]) for i in range(0, len(out), batch)]

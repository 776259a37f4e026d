"""Small helpers shared by every entry point: logging, paths, sizes, seeds, YAML I/O."""

import logging
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]  # repository root
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))


def _make_logger(name="yolov5-kd"):
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


LOGGER = _make_logger()

_COLOURS = {
    "black": "\033[30m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m",
    "blue": "\033[34m", "magenta": "\033[35m", "cyan": "\033[36m", "white": "\033[37m",
    "bold": "\033[1m", "underline": "\033[4m", "end": "\033[0m",
}


def colorstr(*args):
    """colorstr('blue', 'bold', 'text') -> text wrapped in ANSI codes (last arg is the text)."""
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    return "".join(_COLOURS[s] for s in styles) + f"{text}" + _COLOURS["end"]


def make_divisible(x, divisor):
    """Smallest multiple of divisor that is >= x."""
    if hasattr(divisor, "max"):  # a tensor of strides
        divisor = int(divisor.max())
    return math.ceil(x / divisor) * divisor


def check_img_size(imgsz, s=32, floor=0):
    """Round image size(s) up to a multiple of stride s, warning when it changes."""
    if isinstance(imgsz, int):
        new = max(make_divisible(imgsz, int(s)), floor)
    else:
        new = [max(make_divisible(x, int(s)), floor) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be a multiple of max stride {s}, updating to {new}")
    return new


def increment_path(path, exist_ok=False, sep="", mkdir=False):
    """runs/exp -> runs/exp2, runs/exp3, ... (first free number) unless exist_ok."""
    path = Path(path)
    if path.exists() and not exist_ok:
        path, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{path}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{path}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def init_seeds(seed=0, deterministic=False):
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def yaml_load(file):
    """Read a YAML file into a dict, naming the file in any error."""
    from utils.limits import check_structure

    file = Path(file)
    try:
        with open(file, errors="ignore") as f:
            d = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: not valid YAML ({e})") from e
    check_structure(d, str(file))  # aliases can make a few hundred bytes stand for billions of nodes
    return d


def yaml_save(file, data):
    """Write a dict as YAML, turning Paths into strings."""
    from utils.run_dirs import writing

    clean = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    with writing(file), open(file, "w") as f:
        yaml.safe_dump(clean, f, sort_keys=False)


def clean_str(s):
    """Replace characters that are awkward in file names."""
    return re.sub(r"[|@#!¡·$€%&()=?¿^*;:,¨´><+]", "_", s)


def intersect_dicts(da, db, exclude=()):
    """Entries of da whose key is in db with the same shape, minus keys containing an excluded word."""
    return {k: v for k, v in da.items() if k in db and all(x not in k for x in exclude) and v.shape == db[k].shape}


def names_dict(names, nc=0):
    """Class names as {int: str} from a dict or a list; '0', '1', ... for nc classes when absent."""
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    return {i: str(i) for i in range(int(nc or 0))}


def print_args(args, name=""):
    """Log an argparse namespace / dict on one line."""
    d = vars(args) if not isinstance(args, dict) else args
    LOGGER.info((colorstr(f"{name}: ") if name else "") + ", ".join(f"{k}={v}" for k, v in d.items()))


def labels_to_class_weights(labels, nc):
    """Inverse class frequency weights (nc,) from dataset labels, normalised to sum 1."""
    import torch

    if not len(labels):
        return torch.ones(nc) / nc
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    counts = np.bincount(classes, minlength=nc).astype(float)
    counts[counts == 0] = 1
    w = 1 / counts
    return torch.from_numpy(w / w.sum()).float()


def labels_to_image_weights(labels, nc, class_weights):
    """Per-image sampling weight = sum of its labels' class weights."""
    return np.array([(class_weights[lb[:, 0].astype(int)]).sum() if len(lb) else 0.0 for lb in labels]) + 1e-9


def warn_each(messages, prefix="", limit=100, what="file(s) with problems"):
    """Log each problem message as a warning, the first `limit` by name and the rest as one count."""
    for m in messages[:limit]:
        LOGGER.warning(f"{prefix}WARNING: {m}")
    if len(messages) > limit:
        LOGGER.warning(f"{prefix}WARNING: ... {len(messages) - limit} more {what}")

"""Checks of training options and hyperparameters, done before any work: each problem is one
OptionError naming the option (for a hyp file: every missing key at once)."""

import math

from utils.cli import OptionError
from utils.general import LOGGER

REQUIRED_HYP = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                "box", "cls", "obj", "anchor_t")
AUGMENT_HYP = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
               "fliplr", "mosaic", "mixup", "copy_paste")  # read with a default of 0 when absent
CACHE_CHOICES = ("ram", "disk", "val")


def check_train_options(opt):
    """Refuse option values that cannot work (--epochs 0, --batch-size 0 ...) with one message."""
    if opt.epochs < 1:
        raise OptionError(f"--epochs {opt.epochs}: must be at least 1")
    if opt.batch_size == 0 or opt.batch_size < -1:
        raise OptionError(f"--batch-size {opt.batch_size}: must be at least 1, or -1 for AutoBatch")
    if opt.imgsz < 1:
        raise OptionError(f"--imgsz {opt.imgsz}: must be a positive number of pixels")
    if opt.workers < 0:
        raise OptionError(f"--workers {opt.workers}: must be 0 or more")
    hours = getattr(opt, "time", None)
    if hours is not None and not (math.isfinite(hours) and hours > 0):
        raise OptionError(f"--time {hours}: must be a positive number of hours")
    cache = getattr(opt, "cache", None)
    if cache not in (None, *CACHE_CHOICES):
        raise OptionError(f"--cache {cache}: choose one of {', '.join(CACHE_CHOICES)}")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_hyp(hyp, source="hyp"):
    """Refuse a hyp dict without the training keys (all named at once) or with non-numeric values."""
    if not isinstance(hyp, dict):
        raise OptionError(f"--hyp {source}: not a mapping of hyperparameters")
    missing = [k for k in REQUIRED_HYP if k not in hyp]
    if missing:
        raise OptionError(f"--hyp {source}: missing key(s) {', '.join(missing)} "
                          "(see data/hyps/hyp.scratch-low.yaml for every key)")
    bad = [f"{k}={hyp[k]!r}" for k in (*REQUIRED_HYP, *AUGMENT_HYP, "nonfinite_limit", "nbs")
           if k in hyp and not _is_number(hyp[k])]
    if bad:
        raise OptionError(f"--hyp {source}: not finite numbers: {', '.join(bad)}")
    if "nbs" in hyp and not (isinstance(hyp["nbs"], int) and hyp["nbs"] >= 1):
        raise OptionError(f"--hyp {source}: nbs={hyp['nbs']!r} must be a whole number of images, at least 1")
    if "nonfinite_limit" in hyp and hyp["nonfinite_limit"] < 1:
        raise OptionError(f"--hyp {source}: nonfinite_limit={hyp['nonfinite_limit']} must be at least 1")
    absent = [k for k in AUGMENT_HYP if k not in hyp]
    if absent:
        LOGGER.warning(f"WARNING: --hyp {source}: no {', '.join(absent)}; treated as 0 (augmentation off)")

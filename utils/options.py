"""Checks of command-line options and hyperparameters, done before any work: each problem is one
OptionError naming the option and its valid range (for a hyp file: every missing key at once).

Each entry point has a table of Rule(attribute, flag, test, valid range) applied by check_options() right
after parsing (train.py/train_kd.py/val.py/detect.py/export.py main()); the few checks spanning several
options follow their table. An option absent from the namespace (a partial one built in code) or None
(an optional flag not given: --time, --classes, --evolve) is not checked. Where upstream YOLOv5 gives a
value a meaning (--patience 0: no early stopping, --save-period < 1: no periodic checkpoints,
--line-thickness 0: automatic, --evolve 0: no search, an --img not a multiple of the stride: rounded up
with a warning) that meaning is kept; values without a working meaning are refused.
"""

import math
import re
from pathlib import Path
from typing import Callable, NamedTuple

from utils.cli import OptionError
from utils.general import LOGGER
from utils.run_dirs import refuse_folder_in_the_way

REQUIRED_HYP = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
                "box", "cls", "obj", "anchor_t")
AUGMENT_HYP = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
               "fliplr", "mosaic", "mixup", "copy_paste")  # read with a default of 0 when absent
CACHE_CHOICES = ("ram", "disk", "val")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
VAL_TASKS = ("train", "val", "test", "speed", "study")

MAX_IMGSZ = 8192  # pixels per image side (a multiple of every model stride; 8192^2 x 3 floats is 0.8 GB per image)
MAX_EXPORT_BATCH = 1024  # export's dry run and traced graphs hold batch x 3 x h x w floats
MAX_LINE_THICKNESS = 1000  # pixels; cv2 draws nothing sensible beyond, 0 = upstream's automatic width
MAX_SEED = 2 ** 32 - 1 - 1024  # numpy seeds are 32-bit and each DDP rank seeds with seed + 1 + rank
ONNX_OPSETS = (11, 21)
EXPORT_FORMATS = ("torchscript", "onnx", "openvino")  # upstream's --include names (the ones this repo writes)
EXPORT_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?|\d+")
EXPORT_FILES = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": ".onnx"}  # written beside --weights


class Rule(NamedTuple):
    """``flag``'s value (attribute ``dest``) must pass ``test``; else 'flag value: <says><valid>'.
    each: test every item of a list value (nargs options), else the value as a whole."""

    dest: str
    flag: str
    test: Callable
    valid: str
    each: bool = True
    says: str = "must be "


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(lo, hi=None):
    """Test: an int in lo..hi (hi None: no upper bound)."""
    return lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi)


def real(lo, hi=None, above=False):
    """Test: a finite number >= lo (> lo with above) and <= hi; NaN and +-inf never pass."""
    return lambda v: _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi)


def one_of(choices):
    return lambda v: v in choices


def sizes(v):
    """--imgsz of detect/export: one int or a list of one or two, each in 1..MAX_IMGSZ."""
    v = [v] if _is_int(v) else v
    return isinstance(v, (list, tuple)) and len(v) in (1, 2) and all(whole(1, MAX_IMGSZ)(x) for x in v)


def _shown(v):
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


_MISSING = object()


def check_options(opt, rules):
    """Apply ``rules`` to ``opt`` (a Namespace or a dict): the first failing one raises OptionError."""
    get = opt.get if isinstance(opt, dict) else lambda k, d: getattr(opt, k, d)
    for r in rules:
        v = get(r.dest, _MISSING)
        if v is _MISSING or v is None:
            continue
        items = v if r.each and isinstance(v, (list, tuple)) else [v]
        if not all(r.test(x) for x in items):
            raise OptionError(f"{r.flag} {_shown(v)}: {r.says}{r.valid}")


IMGSZ_VALID = f"a whole number of pixels in 1..{MAX_IMGSZ} (rounded up to a multiple of the model stride)"
WORKERS = Rule("workers", "--workers", whole(0), "0 or more")
THRESHOLDS = (Rule("conf_thres", "--conf-thres", real(0, 1), "a number in [0, 1]"),
              Rule("iou_thres", "--iou-thres", real(0, 1), "a number in [0, 1]"),
              Rule("max_det", "--max-det", whole(1), "at least 1 (detections kept per image)"))

TRAIN_RULES = (
    Rule("epochs", "--epochs", whole(1), "at least 1"),
    Rule("optimizer", "--optimizer", one_of(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}"),
    Rule("batch_size", "--batch-size", lambda v: _is_int(v) and (v >= 1 or v == -1), "at least 1, or -1 for AutoBatch"),
    Rule("imgsz", "--imgsz", whole(1, MAX_IMGSZ), IMGSZ_VALID),
    WORKERS,
    Rule("time", "--time", real(0, above=True), "a positive number of hours"),
    Rule("cache", "--cache", one_of(CACHE_CHOICES), f"one of {', '.join(CACHE_CHOICES)}"),
    Rule("label_smoothing", "--label-smoothing", real(0, 1),
         "a number in [0, 1] (epsilon: class targets become 1 - eps/2 and eps/2; 0 = off)"),
    Rule("patience", "--patience", whole(0),
         "0 (no early stopping, as upstream) or a positive number of epochs without improvement"),
    Rule("freeze", "--freeze", whole(0),
         "0 or more (one value N: freeze the first N layers; several: the layer indices to freeze)"),
    Rule("seed", "--seed", whole(0, MAX_SEED), f"a whole number in 0..{MAX_SEED}"),
    Rule("evolve", "--evolve", whole(0), "a number of generations, at least 1 (0: no search, as upstream)"),
    Rule("local_rank", "--local_rank", whole(-1), "-1 or a process rank >= 0 (set by torch.distributed.run)"),
)  # --save-period: any whole number (upstream: < 1 disables periodic checkpoints)

VAL_RULES = (
    Rule("batch_size", "--batch-size", whole(1), "at least 1"),
    Rule("imgsz", "--imgsz", whole(1, MAX_IMGSZ), IMGSZ_VALID),
    *THRESHOLDS,
    Rule("task", "--task", one_of(VAL_TASKS), f"one of {', '.join(VAL_TASKS)}"),
    WORKERS,
)

DETECT_RULES = (
    Rule("imgsz", "--imgsz", sizes, f"one or two sizes (h w), each {IMGSZ_VALID}", each=False, says=""),
    *THRESHOLDS,
    Rule("classes", "--classes", whole(0), "class indices >= 0 (below the model's nc)"),
    Rule("line_thickness", "--line-thickness", whole(0, MAX_LINE_THICKNESS),
         f"in 0..{MAX_LINE_THICKNESS} pixels (0: automatic, as upstream)"),
    Rule("vid_stride", "--vid-stride", whole(1), "at least 1 (1 = every frame, 2 = every other ...)"),
)

EXPORT_RULES = (
    Rule("imgsz", "--imgsz", sizes, f"one or two positive sizes (h w), each at most {MAX_IMGSZ}", each=False,
         says=""),
    Rule("batch_size", "--batch-size", whole(1, MAX_EXPORT_BATCH), f">= 1 and <= {MAX_EXPORT_BATCH}"),
    Rule("opset", "--opset", whole(*ONNX_OPSETS), f"in {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}"),
    Rule("device", "--device", lambda v: EXPORT_DEVICE.fullmatch(str(v).strip()) is not None,
         "cpu, a CUDA device index such as 0, or cuda:0"),
)


def check_train_options(opt):
    """train.py / train_kd.py: refuse option values that cannot work (--epochs 0, --batch-size 0 ...)."""
    check_options(opt, TRAIN_RULES)


def check_val_options(opt):
    """val.py."""
    check_options(opt, VAL_RULES)


def check_detect_options(opt):
    """detect.py (--classes against the model's nc: check_classes, once the model is loaded)."""
    check_options(opt, DETECT_RULES)


def check_classes(classes, nc):
    """--classes must name classes of the loaded model (0..nc-1)."""
    classes = [classes] if _is_int(classes) else list(classes or ())
    bad = [c for c in classes if not (_is_int(c) and 0 <= c < nc)]
    if bad:
        raise OptionError(f"--classes {_shown(classes)}: the model has nc={nc} classes, indices 0..{nc - 1}; "
                          f"{_shown(bad)} {'is' if len(bad) == 1 else 'are'} beyond")


def check_export_options(opt):
    """export.py (a Namespace or a dict of run()'s arguments); --include names are compared lower-case."""
    opt = dict(opt if isinstance(opt, dict) else vars(opt))
    include = opt["include"] = [str(x).lower() for x in opt.get("include") or ()]
    unknown = [x for x in include if x not in EXPORT_FORMATS]
    if unknown:
        raise OptionError(f"--include {' '.join(unknown)}: unsupported format(s); "
                          f"choose from {', '.join(EXPORT_FORMATS)}")
    if not include:
        raise OptionError(f"--include: name at least one format ({', '.join(EXPORT_FORMATS)})")
    check_options(opt, EXPORT_RULES)
    if opt.get("int8"):
        check_options(opt, (Rule("calib_images", "--calib-images", whole(1), ">= 1"),))
        if not opt.get("data"):
            raise OptionError("--int8 needs --data: its train images calibrate the quantization")
        if not {"onnx", "openvino"} & set(include):
            raise OptionError("--int8 quantizes the onnx and openvino exports: add --include onnx and/or openvino")
        if opt.get("half"):
            raise OptionError("--int8 and --half are exclusive: choose one")
    if opt.get("weights"):
        for fmt in include:
            refuse_folder_in_the_way(Path(opt["weights"]).with_suffix(EXPORT_FILES[fmt]))


_PROBABILITY = (real(0, 1), "a number in [0, 1]")
HYP_RULES = tuple(Rule(k, k, test, valid) for k, test, valid in (  # the ranges in which each key means something
    ("lr0", real(0, above=True), "a positive learning rate"), ("lrf", real(0, above=True), "a positive fraction"),
    ("momentum", real(0, 1), "a number in [0, 1]"), ("weight_decay", real(0), "0 or more"),
    ("warmup_epochs", real(0), "0 or more epochs"), ("warmup_momentum", real(0, 1), "a number in [0, 1]"),
    ("warmup_bias_lr", real(0), "0 or more"), ("box", real(0), "0 or more"), ("cls", real(0), "0 or more"),
    ("obj", real(0), "0 or more"), ("cls_pw", real(0, above=True), "positive"), ("obj_pw", real(0, above=True), "positive"),
    ("iou_t", real(0, 1), "a number in [0, 1]"), ("anchor_t", real(1), "a box/anchor ratio of at least 1"),
    ("fl_gamma", real(0), "0 (off) or more"), ("degrees", real(0, 180), "0..180 degrees"),
    ("translate", real(0, 1), "a fraction in [0, 1]"), ("scale", real(0, 1), "a gain in [0, 1]"),
    ("shear", real(0, 180), "0..180 degrees"), ("perspective", real(0, 0.1), "a number in [0, 0.1]"),
    *((k, *_PROBABILITY) for k in ("hsv_h", "hsv_s", "hsv_v", "flipud", "fliplr", "mosaic", "mixup", "copy_paste"))))


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
    check_options(hyp, [r._replace(flag=f"--hyp {source}: {r.dest}") for r in HYP_RULES])
    absent = [k for k in AUGMENT_HYP if k not in hyp]
    if absent:
        LOGGER.warning(f"WARNING: --hyp {source}: no {', '.join(absent)}; treated as 0 (augmentation off)")

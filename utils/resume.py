"""--resume: the one place that reads an interrupted run's last.pt and restores its options.

The engine calls resume_run() once; every plugin takes its own options back in Plugin.restore_options().
"""

import math
from pathlib import Path

from utils.checkpoint import CheckpointError, is_optimizer_state, load_checkpoint
from utils.run_dirs import latest_run

DEFAULT_EPOCHS = 100  # train.py's --epochs default; another value extends (or shortens) the resumed run
CURRENT_KEYS = ("device", "workers")  # the machine may differ: these flags always come from this command
RESUME_KEYS = ("resume", "weights", "evolve", "save_dir")  # set by resume_run itself, never read from last.pt
MAPPING_KEYS = ("hyp",)  # upstream stores the hyp dict itself where our parser takes a file name


def resumable_checkpoint(opt):
    """(path, checkpoint) of the run --resume names, else the latest last.pt under --project."""
    last = Path(opt.resume if isinstance(opt.resume, str) else latest_run(opt.project))
    ckpt = load_checkpoint(last)
    if ckpt.get("optimizer") is None or int(ckpt.get("epoch", -1)) < 0:
        raise ValueError(f"{last}: not a resumable checkpoint (finished or stripped); use --weights instead")
    if not is_optimizer_state(ckpt["optimizer"]):
        raise CheckpointError(f"{last}: field 'optimizer' is not an optimizer state_dict ({{'state': ..., "
                              f"'param_groups': [...]}})")
    return last, ckpt


def _same_kind(value, default):
    """Could argparse have produced ``value`` for an option whose default (this command's value) is ``default``?"""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and all(
            any(_same_kind(v, d) for d in default) if default else isinstance(v, (str, int, float)) for v in value)
    if isinstance(default, str):
        return isinstance(value, (str, bool)) if default in ("", "True", "False") else isinstance(value, str)
    return value is None or isinstance(value, (str, int, float, bool, list))  # default None: any option value


def check_saved_options(saved, current, path):
    """The saved options of last.pt must be of the types this command's parser gives (seed, epochs, batch size,
    patience, ...): one CheckpointError naming the file and the option, before any of them is used."""
    for k, v in saved.items():
        if k in CURRENT_KEYS or k in RESUME_KEYS or (k in MAPPING_KEYS and isinstance(v, dict)):
            continue
        if k in current and not _same_kind(v, current[k]):
            raise CheckpointError(f"{path}: saved option '{k}' is {str(v)[:60]!r} ({type(v).__name__}); this "
                                  f"option takes a {type(current[k]).__name__}")


def resume_run(opt, plugins=()):
    """Read the checkpoint once and put its saved options into `opt` (in place, so the caller sees the
    resumed run): --epochs when given, --device and --workers stay those of this command; then each
    plugin restores its options -> (checkpoint dict, hyp dict or file)."""
    last, ckpt = resumable_checkpoint(opt)
    saved = dict(ckpt.get("opt") or {})
    current = dict(vars(opt))
    check_saved_options(saved, current, last)
    vars(opt).update(saved)
    if current["epochs"] != DEFAULT_EPOCHS:
        opt.epochs = current["epochs"]
    for k in CURRENT_KEYS:
        setattr(opt, k, current[k])
    opt.resume, opt.weights, opt.evolve = True, str(last), None  # RESUME_KEYS
    opt.save_dir = str(last.parent.parent)
    for p in plugins:
        p.restore_options(opt, saved)
    return ckpt, ckpt.get("hyp") or opt.hyp


def restore_state(path, field, load):
    """Apply one saved state of last.pt (``load()``); one that does not fit this run is a CheckpointError naming
    the file and the field instead of whatever torch raises deep inside load_state_dict."""
    try:
        load()
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{path}: field '{field}' does not fit this run ({type(e).__name__}: {detail})") from None

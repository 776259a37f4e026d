"""--resume: the one place that reads an interrupted run's last.pt and restores its options.

The engine calls resume_run() once; every plugin takes its own options back in Plugin.restore_options().
"""

from pathlib import Path

from utils.checkpoint import load_checkpoint
from utils.run_dirs import latest_run

DEFAULT_EPOCHS = 100  # train.py's --epochs default; another value extends (or shortens) the resumed run
CURRENT_KEYS = ("device", "workers")  # the machine may differ: these flags always come from this command


def resumable_checkpoint(opt):
    """(path, checkpoint) of the run --resume names, else the latest last.pt under --project."""
    last = Path(opt.resume if isinstance(opt.resume, str) else latest_run(opt.project))
    ckpt = load_checkpoint(last)
    if ckpt.get("optimizer") is None or int(ckpt.get("epoch", -1)) < 0:
        raise ValueError(f"{last}: not a resumable checkpoint (finished or stripped); use --weights instead")
    return last, ckpt


def resume_run(opt, plugins=()):
    """Read the checkpoint once and put its saved options into `opt` (in place, so the caller sees the
    resumed run): --epochs when given, --device and --workers stay those of this command; then each
    plugin restores its options -> (checkpoint dict, hyp dict or file)."""
    last, ckpt = resumable_checkpoint(opt)
    saved = dict(ckpt.get("opt") or {})
    current = dict(vars(opt))
    vars(opt).update(saved)
    if current["epochs"] != DEFAULT_EPOCHS:
        opt.epochs = current["epochs"]
    for k in CURRENT_KEYS:
        setattr(opt, k, current[k])
    opt.resume, opt.weights, opt.evolve = True, str(last), None
    opt.save_dir = str(last.parent.parent)
    for p in plugins:
        p.restore_options(opt, saved)
    return ckpt, ckpt.get("hyp") or opt.hyp

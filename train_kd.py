"""Train a YOLOv5 student with knowledge distillation from a teacher checkpoint.

Usage:
    python train_kd.py --teacher_weight runs/train/exp/weights/best.pt --cfg models/yolov5n.yaml \\
        --data data/NEU-DET.yaml --img 224 --epochs 30 [--feat fgfi] [--no-kd]

All train.py flags work; this file only adds the distillation flags and the Distiller plug-in.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from utils.distill.config import KDConfig, add_kd_args  # noqa: E402
from utils.general import LOGGER, ROOT as REPO  # noqa: E402
from utils.run_dirs import latest_run  # noqa: E402


def build_parser():
    """train.py's flags, the distillation flags (utils.distill.config.add_kd_args) and runs/kd as --project."""
    parser = add_kd_args(train.build_parser())
    parser.set_defaults(project=str(REPO / "runs" / "kd"))
    return parser


def check_teacher(path):
    """Clear error when --teacher_weight is missing, absent or unreadable."""
    if not path:
        raise SystemExit("train_kd.py: --teacher_weight is required (a teacher .pt checkpoint)")
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"train_kd.py: teacher checkpoint {path} does not exist")
    try:
        with open(p, "rb") as f:
            f.read(4)
    except OSError as e:
        raise SystemExit(f"train_kd.py: teacher checkpoint {path} is unreadable: {e}") from None


def parse_opt(argv=None):
    return build_parser().parse_args(argv)


def kd_config(opt):
    """The run's KDConfig: from the flags, or on --resume from the interrupted run's last.pt `opt`
    (opt.resume then names that file)."""
    if not getattr(opt, "resume", False):
        return KDConfig.from_opt(opt)
    from utils.checkpoint import load_checkpoint

    last = opt.resume if isinstance(opt.resume, str) else latest_run(opt.project)
    opt.resume = str(last)
    return KDConfig.resumed(opt, load_checkpoint(last).get("opt") or {})


def main(opt):
    """Validate the KD options, then run train.main with the Distiller plug-in."""
    from utils.distill.distiller import Distiller

    cfg = kd_config(opt)  # a bad --feat / --beta fails here, before any data is read
    check_teacher(cfg.teacher_weight)
    if not getattr(opt, "noautoanchor", False):
        LOGGER.info("train_kd: AutoAnchor off (--noautoanchor): the student keeps the teacher's anchors")
        opt.noautoanchor = True
    cfg.store(opt)
    return train.main(opt, plugin=Distiller(cfg))


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "train_kd.py")

"""Train a YOLOv5 student with knowledge distillation from a teacher checkpoint.

Usage:
    python train_kd.py --teacher_weight runs/train/exp/weights/best.pt --cfg models/yolov5n.yaml \\
        --data data/NEU-DET.yaml --img 224 --epochs 30 [--feat fgfi] [--no-kd]

All train.py flags work; this file only adds the distillation flags and the Distiller plug-in.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from utils.general import LOGGER, ROOT as REPO  # noqa: E402

# Defaults from benchmarks/kd_experiment.py (NEU-DET, img 224, 30 epochs; README "Results"): output KD
# l2 beats the baseline student; per-loss feature weights are in utils/distill/distiller.DEFAULT_BETAS.
DEFAULT_KD_LOSS = "l2"
DEFAULT_FEAT = ["none"]


def add_kd_args(parser):
    """Add the distillation flags to train.py's parser (in place) and return it."""
    g = parser.add_argument_group("knowledge distillation")
    g.add_argument("--teacher_weight", "--teacher-weight", dest="teacher_weight", type=str, default=None,
                   help="teacher checkpoint (ours or upstream YOLOv5 .pt); required")
    g.add_argument("--kd", action=argparse.BooleanOptionalAction, default=True, help="output distillation on/off")
    g.add_argument("--kd_loss_selected", "--kd-loss-selected", dest="kd_loss_selected", default=DEFAULT_KD_LOSS,
                   choices=("l2", "kl", "bce"), help="class distillation loss")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (kl, cwd)")
    g.add_argument("--alpha", type=float, default=1.0, help="weight of the output distillation loss")
    g.add_argument("--beta", nargs="+", default=[],
                   help="feature loss weights: a number for all, or name=value per loss (at=1 fgfi=0.001); "
                        "default at/wat/ft 1, fgfi/cwd 0.001")
    g.add_argument("--feat", nargs="+", default=list(DEFAULT_FEAT),
                   help="feature losses: one or several of at wat ft fgfi cwd, or none")
    g.add_argument("--ratio", type=float, default=0.25, help="background weight of the masked AT (wat)")
    g.add_argument("--kd-layers", "--kd_layers", dest="kd_layers", type=str, default=None,
                   help="explicit teacher:student layer pairs '17:17,20:20' (default: automatic by stride/role)")
    parser.set_defaults(project=str(REPO / "runs" / "kd"))
    return parser


def build_parser():
    return add_kd_args(train.build_parser())


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


KD_KEYS = ("teacher_weight", "kd", "kd_loss_selected", "temperature", "alpha", "beta", "feat", "ratio", "kd_layers")


def _resume_kd_opts(opt):
    """On --resume, take the KD options of the interrupted run from its last.pt."""
    from utils.checkpoint import load_checkpoint

    last = opt.resume if isinstance(opt.resume, str) else train._latest_run(opt.project)
    saved = load_checkpoint(last).get("opt") or {}
    for k in KD_KEYS:
        if k in saved:
            setattr(opt, k, saved[k])
    opt.resume = str(last)
    return opt


def main(opt):
    """Validate the KD options, then run train.main with the Distiller plug-in."""
    from utils.distill.distiller import Distiller, parse_betas, parse_feats

    if getattr(opt, "resume", False):
        opt = _resume_kd_opts(opt)
    check_teacher(opt.teacher_weight)
    if not getattr(opt, "noautoanchor", False):
        LOGGER.info("train_kd: AutoAnchor off (--noautoanchor): the student keeps the teacher's anchors")
        opt.noautoanchor = True
    opt.feat = list(parse_feats(opt.feat))
    parse_betas(opt.beta, opt.feat)  # a bad --beta fails here, before any data is read
    return train.main(opt, plugin=Distiller(opt))


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "train_kd.py")

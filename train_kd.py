"""Train a YOLOv5 student with knowledge distillation from a teacher checkpoint.

Usage:
    python train_kd.py --teacher_weight runs/train/exp/weights/best.pt --cfg models/yolov5n.yaml \\
        --data data/NEU-DET.yaml --img 224 --epochs 30 [--feat fgfi] [--no-kd]
    python train_kd.py ... --unlabeled more_images/ --unlabeled-ratio 2   # also distil on unlabeled images

All train.py flags work; this file only adds the distillation flags and the Distiller plug-in.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from utils.distill.config import KDConfig, add_kd_args, check_teacher  # noqa: E402
from utils.general import LOGGER, ROOT as REPO  # noqa: E402
from utils.options import check_train_options  # noqa: E402
from utils.unlabeled import check_semi_options  # noqa: E402


def build_parser():
    """train.py's flags, the distillation flags (utils.distill.config.add_kd_args) and runs/kd as --project."""
    parser = add_kd_args(train.build_parser())
    parser.set_defaults(project=str(REPO / "runs" / "kd"))
    return parser


def parse_opt(argv=None):
    return build_parser().parse_args(argv)


def main(opt):
    """Validate the KD options, then run train.main with the Distiller plug-in (on --resume the engine
    gives the Distiller the interrupted run's KD options)."""
    from utils.distill.distiller import Distiller

    check_train_options(opt)  # train.py's options first (train.main checks them again: cheap)
    cfg = KDConfig.from_opt(opt)  # a bad --feat / --beta / --alpha fails here, before any data is read
    if not opt.resume:
        check_teacher(cfg.teacher_weight)
        if cfg.unlabeled:
            check_semi_options(opt)
    if not getattr(opt, "noautoanchor", False):
        LOGGER.info("train_kd: AutoAnchor off (--noautoanchor): the student keeps the teacher's anchors")
        opt.noautoanchor = True
    cfg.store(opt)
    if opt.evolve or opt.resume_evolve:
        return train.main(opt, evolve_plugins=lambda o: [Distiller(KDConfig.from_opt(o))],
                          evolve_genes=kd_genes(cfg), apply_genes=apply_kd_genes)
    return train.main(opt, plugins=[Distiller(cfg)])


def kd_genes(cfg):
    """The KD options --evolve searches, as [(Gene, start value)]: the output-KD weight alpha, the
    temperature where a loss uses it, and each selected feature loss's beta (within 1/10..10x its start)."""
    from utils.evolve import Gene

    genes = [(Gene("kd_alpha", 1, 0.0, 5.0), cfg.alpha)] if cfg.kd else []
    if cfg.kd and cfg.kd_loss_selected == "kl" or "cwd" in cfg.feat:
        genes.append((Gene("kd_temperature", 1, 1.0, 10.0), cfg.temperature))
    genes += [(Gene(f"kd_beta_{name}", 1, beta / 10, beta * 10), beta) for name, beta in cfg.betas.items()]
    return genes


def apply_kd_genes(opt, values):
    """Write one generation's KD gene values into its train_kd options (read by KDConfig.from_opt)."""
    opt.alpha = values.get("kd_alpha", opt.alpha)
    opt.temperature = values.get("kd_temperature", opt.temperature)
    betas = [f"{k[len('kd_beta_'):]}={v:g}" for k, v in values.items() if k.startswith("kd_beta_")]
    if betas:
        opt.beta = betas


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "train_kd.py")

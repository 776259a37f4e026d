"""Train a YOLOv5 model on a detection dataset.

Usage:
    python train.py --data data/NEU-DET.yaml --cfg yolov5n.yaml --weights '' --img 224 --batch-size 16 --epochs 30
    python train.py --resume runs/train/exp/weights/last.pt [--epochs 50]       # continue (or extend) a run
    python -m torch.distributed.run --nproc_per_node 2 train.py ...              # DDP (NCCL on GPU, gloo on CPU)
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.engine import RANK, Trainer  # noqa: E402
from utils.general import LOGGER, increment_path, print_args  # noqa: E402
from utils.options import CACHE_CHOICES, check_train_options  # noqa: E402
from utils.precision import CHOICES as PRECISIONS  # noqa: E402
from utils.resume import DEFAULT_EPOCHS  # noqa: E402

DEFAULT_CFG = "yolov5s.yaml"  # model used when neither --cfg nor --weights is given


def build_parser():
    """Upstream YOLOv5's train.py flags and defaults (plus --bf16 / --channels-last for CPU)."""
    p = argparse.ArgumentParser(description="Train a YOLOv5 detector")
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", type=str, default="", help="model.yaml path")
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset.yaml path")
    p.add_argument("--hyp", type=str, default=str(ROOT / "data/hyps/hyp.scratch-low.yaml"), help="hyperparameters path")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="total training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs, -1 for autobatch")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training (or a given last.pt)")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="evolve hyperparameters for x generations")
    p.add_argument("--resume_evolve", "--resume-evolve", dest="resume_evolve", type=str, default=None,
                   help="continue the --evolve search in this runs/evolve/expN folder")
    p.add_argument("--cache", type=str, nargs="?", const="ram", choices=CACHE_CHOICES,
                   help="cache images: ram (default), disk, or val (the validation set only, in RAM)")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--time", type=float, default=None,
                   help="training budget in hours: as many epochs as fit (overrides --epochs; LR schedule spans them)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="Freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="Save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="Global training seed")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning: INT8 fake quantization in training (start from --weights, "
                        "a few epochs, low lr0: data/hyps/hyp.qat.yaml); deploy with export.py --int8")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="Automatic DDP Multi-GPU argument, do not modify")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: fp16 AMP on CUDA; on a CPU bf16 autocast only where this CPU runs it faster "
                        "(flags + a short probe), else fp32")
    p.add_argument("--bf16", action="store_true", help="shorthand for --precision bf16")
    p.add_argument("--fp32", action="store_true", help="shorthand for --precision fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CPU, where it measured ~30%% faster)")
    return p


def parse_opt(known=False, args=None):
    parser = build_parser()
    return parser.parse_known_args(args)[0] if known else parser.parse_args(args)


def _check_file(path, what):
    if path and not Path(path).exists():
        raise FileNotFoundError(f"{what} file not found: {path}")


def _resolve_cfg(cfg):
    if cfg and not Path(cfg).exists() and (ROOT / "models" / cfg).exists():
        return str(ROOT / "models" / cfg)
    return cfg


def main(opt, plugins=(), plugin=None, evolve_plugins=None, evolve_genes=(), apply_genes=None):
    """Train with the options of build_parser() and engine plugins (`plugin=p`: one) -> final results tuple.

    With --evolve / --resume_evolve: a hyperparameter search instead (utils/evolve.py) -> hyp_evolve.yaml;
    evolve_plugins(opt) makes each generation's plugins, evolve_genes/apply_genes add genes beyond the hyp.
    """
    check_train_options(opt)  # before any work: --epochs 0, --batch-size 0 ... end here
    if RANK in (-1, 0):
        print_args(opt, "train")
    if not opt.resume:  # on --resume the engine restores the run's options (into this namespace)
        opt.cfg = _resolve_cfg(opt.cfg)
        if not opt.cfg and not opt.weights:
            opt.cfg = _resolve_cfg(DEFAULT_CFG)
            LOGGER.info(f"train: no --cfg or --weights given, training {DEFAULT_CFG} from scratch")
        _check_file(opt.cfg, "--cfg")
        _check_file(opt.weights, "--weights")
        _check_file(opt.hyp, "--hyp")
        if opt.evolve or opt.resume_evolve:
            return _evolve(opt, evolve_plugins, evolve_genes, apply_genes)
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    return Trainer(opt, opt.hyp, plugins=plugins, plugin=plugin).run()


def _evolve(opt, plugin_factory, extra_genes, apply_genes):
    from utils.evolve import evolve_dir, evolve_training
    from utils.general import yaml_load
    from utils.options import check_hyp

    hyp = yaml_load(opt.hyp)
    check_hyp(hyp, opt.hyp)
    save_dir = evolve_dir(opt, (build_parser().get_default("project"), ROOT / "runs" / "kd"))
    return evolve_training(opt, hyp, save_dir, plugin_factory, extra_genes, apply_genes)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, lambda argv: parse_opt(args=argv), "train.py")

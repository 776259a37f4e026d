"""The main job, end to end: train a teacher, distil a student, validate both, print a table.

Runs out of the box on a fresh machine (CPU, no dataset, no network): the default
dataset is the synthetic defect set that data/synthetic.yaml generates locally.

    python quickstart.py                      # teacher yolov5s -> KD student yolov5n
    python quickstart.py --baseline           # also train the student alone, for comparison
    python quickstart.py --data data/NEU-DET.yaml --img 224 --teacher-epochs 30 --student-epochs 30
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
import train_kd  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.evaluation import validate_weights  # noqa: E402
from utils.general import LOGGER, increment_path  # noqa: E402
from utils.precision import CHOICES as PRECISIONS  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

COLUMNS = ("run", "model", "params", "GFLOPs", "mAP50", "mAP50-95", "ms/img", "train s")


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data/synthetic.yaml"), help="dataset YAML")
    p.add_argument("--teacher-cfg", default="yolov5s.yaml", help="teacher model YAML")
    p.add_argument("--student-cfg", default="yolov5n.yaml", help="student model YAML")
    p.add_argument("--teacher-weight", default="", help="use this trained teacher instead of training one")
    p.add_argument("--img", type=int, default=128, help="train/val image size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=40)
    p.add_argument("--baseline", action="store_true", help="also train the student without distillation")
    p.add_argument("--device", default="", help="cpu, 0, 0,1 ... ('' = CUDA if available)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--project", default=str(ROOT / "runs/quickstart"), help="everything is written under here")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training precision (auto: bf16 only on a CPU where it is faster, fp16 AMP on CUDA)")
    p.add_argument("--fp32", action="store_true", help="shorthand for --precision fp32")
    p.add_argument("--kd-args", default="", help="extra train_kd.py flags, e.g. \"--feat at fgfi --beta fgfi=0.002\"")
    return p.parse_args(argv)


def _common_args(opt, project, name, epochs, cfg):
    return ["--data", opt.data, "--cfg", cfg, "--imgsz", str(opt.img), "--batch-size", str(opt.batch_size),
            "--epochs", str(epochs), "--device", opt.device, "--workers", str(opt.workers),
            "--project", str(project), "--name", name, "--exist-ok", "--noplots",
            "--precision", "fp32" if opt.fp32 else opt.precision]


def _train(module, args):
    """Run train.py / train_kd.py in-process; returns (best.pt path, wall seconds)."""
    run_opt = module.build_parser().parse_args(args)
    t0 = time.time()
    module.main(run_opt)
    best = Path(run_opt.save_dir) / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"{module.__name__}: training finished without {best}")
    return best, time.time() - t0


def _evaluate(opt, run, cfg, weights, train_seconds, project):
    """Validate one checkpoint (as val.py does) and describe the model."""
    (_, _, map50, map5095, *_), _, speed = validate_weights(opt.data, weights=str(weights), batch_size=opt.batch_size,
                                                            imgsz=opt.img, device=opt.device, workers=opt.workers,
                                                            project=project / "val", name=run, exist_ok=True,
                                                            plots=False)
    model = load_model(weights)
    params = sum(p.numel() for p in model.parameters())
    gflops = model_flops(model, opt.img)
    return {"run": run, "model": Path(cfg).stem if cfg else "?", "params": params, "GFLOPs": round(gflops, 2) if gflops else None,
            "mAP50": round(float(map50), 4), "mAP50-95": round(float(map5095), 4),
            "ms/img": round(float(speed[1]), 2), "train s": round(train_seconds, 1)}


def format_table(rows):
    """Markdown table of the result rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else f"{r[c]:,}" if c == "params" else str(r[c])
                                       for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(opt):
    project = increment_path(Path(opt.project) / "exp", mkdir=True)
    rows = []
    if opt.teacher_weight:
        teacher, t_teacher = Path(opt.teacher_weight), 0.0
    else:
        LOGGER.info(f"quickstart: 1/3 training the teacher {opt.teacher_cfg}")
        teacher, t_teacher = _train(train, _common_args(opt, project, "teacher", opt.teacher_epochs, opt.teacher_cfg))
    rows.append(_evaluate(opt, "teacher", "" if opt.teacher_weight else opt.teacher_cfg, teacher, t_teacher, project))

    LOGGER.info(f"quickstart: 2/3 distilling the student {opt.student_cfg}")
    kd_args = _common_args(opt, project, "student_kd", opt.student_epochs, opt.student_cfg)
    kd_args += ["--teacher_weight", str(teacher)] + opt.kd_args.split()
    student, t_student = _train(train_kd, kd_args)
    rows.append(_evaluate(opt, "student_kd", opt.student_cfg, student, t_student, project))

    if opt.baseline:
        LOGGER.info(f"quickstart: 3/3 training the baseline student {opt.student_cfg} without distillation")
        base, t_base = _train(train, _common_args(opt, project, "student_baseline", opt.student_epochs,
                                                  opt.student_cfg))
        rows.append(_evaluate(opt, "student_baseline", opt.student_cfg, base, t_base, project))

    table = format_table(rows)
    (project / "results.md").write_text(table + "\n")
    (project / "results.json").write_text(json.dumps(rows, indent=2))
    LOGGER.info(f"\n{table}\n\nSaved to {project}/results.md and results.json")
    return rows


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "quickstart.py")

"""The main job, end to end: train a teacher, distil a student, train the same student alone, validate all
three on the same val set, and write a table and the KD report -- in about --minutes on this machine.

Runs out of the box on a fresh machine (CPU, no dataset, no network): the default dataset is the synthetic
defect set that data/synthetic.yaml generates locally. In its first seconds it times a few training steps of
both models here; each stage then trains under its share of the budget as a --time cap (the probe only
guesses its epochs). The baseline student gets exactly the KD student's epochs.

    python quickstart.py --baseline                    # ~10 minutes: teacher yolov5s -> KD student yolov5n
    python quickstart.py --baseline --minutes 30       # a longer budget: more epochs for every stage
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
from utils.general import LOGGER, increment_path  # noqa: E402
from utils.precision import CHOICES as PRECISIONS  # noqa: E402
from utils.report import Run, markdown_table, measure, write_report  # noqa: E402

COLUMNS = ("run", "model", "params", "GFLOPs", "mAP50", "mAP50-95", "ms/img", "epochs", "train s")
HYP = ROOT / "data/hyps/hyp.quickstart.yaml"
STAGE_KEYS = {"teacher": "teacher", "student_kd": "kd", "student_baseline": "baseline"}
GPU_EPOCHS = 40


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data/synthetic.yaml"), help="dataset YAML")
    p.add_argument("--teacher-cfg", default="yolov5s.yaml", help="teacher model YAML")
    p.add_argument("--student-cfg", default="yolov5n.yaml", help="student model YAML")
    p.add_argument("--teacher-weight", default="", help="use this trained teacher instead of training one")
    p.add_argument("--hyp", default=str(HYP), help="hyperparameters of every stage (the same for both students)")
    p.add_argument("--optimizer", default="AdamW", choices=["SGD", "Adam", "AdamW"], help="optimizer of every stage")
    p.add_argument("--img", type=int, default=128, help="train/val image size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the whole job")
    p.add_argument("--teacher-share", type=float, default=0.4, help="fraction of the training time for the teacher")
    p.add_argument("--teacher-epochs", type=int, default=None, help="fixed teacher epochs (no budget)")
    p.add_argument("--student-epochs", type=int, default=None, help="fixed student epochs (no budget)")
    p.add_argument("--baseline", action="store_true", help="also train the student without distillation")
    p.add_argument("--device", default="", help="cpu, 0, 0,1 ... ('' = CUDA if available)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default=str(ROOT / "runs/quickstart"), help="everything is written under here")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training precision (auto: bf16 only on a CPU where it is faster, fp16 AMP on CUDA)")
    p.add_argument("--fp32", action="store_true", help="shorthand for --precision fp32")
    p.add_argument("--kd-args", default="", help="extra train_kd.py flags, e.g. \"--feat at fgfi --beta fgfi=0.002\"")
    p.add_argument("--report-images", type=int, default=3, help="val images with detections in report.png")
    return p.parse_args(argv)


def _fmt_s(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class Stages:
    """Progress: one line per stage with its ETA, and the time of each at the end."""

    def __init__(self, total):
        self.total, self.n, self.t0, self.done = total, 0, time.time(), []

    def start(self, name, eta_seconds=None, detail=""):
        self.n += 1
        self.name, self.t_stage = name, time.time()
        eta = "" if eta_seconds is None else (f", ETA {_fmt_s(eta_seconds)} (about "
                                              f"{time.strftime('%H:%M:%S', time.localtime(time.time() + eta_seconds))})")
        LOGGER.info(f"\nquickstart: stage {self.n}/{self.total} {name}{detail}{eta}")

    def finish(self):
        self.done.append((self.name, time.time() - self.t_stage))
        return self.done[-1][1]

    def summary(self):
        parts = ", ".join(f"{n} {_fmt_s(s)}" for n, s in self.done)
        return f"quickstart: done in {_fmt_s(time.time() - self.t0)} ({parts})"


def _common_args(opt, project, name, epochs, cfg, precision, hours=None):
    args = ["--data", opt.data, "--cfg", cfg, "--imgsz", str(opt.img), "--batch-size", str(opt.batch_size),
            "--epochs", str(epochs), "--device", opt.device, "--workers", str(opt.workers), "--hyp", opt.hyp,
            "--optimizer", opt.optimizer, "--seed", str(opt.seed), "--project", str(project), "--name", name,
            "--exist-ok", "--noplots", "--precision", precision]
    return args + (["--time", f"{hours:.6f}"] if hours else [])


def _train(module, args):
    """Run train.py / train_kd.py in-process -> (best.pt path, wall seconds, epochs trained)."""
    run_opt = module.build_parser().parse_args(args)
    t0 = time.time()
    module.main(run_opt)
    save_dir = Path(run_opt.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"{module.__name__}: training finished without {best}")
    csv = save_dir / "results.csv"
    epochs = max(len(csv.read_text().splitlines()) - 1, 0) if csv.is_file() else 0
    return best, time.time() - t0, epochs


def format_table(rows):
    """Markdown table of the result rows."""
    return markdown_table(rows, COLUMNS)


def _resolve_precision(opt):
    """The precision every stage uses: decided once here (auto's probe runs once, not per stage)."""
    from utils.precision import choose_precision, requested_precision
    from utils.torch_utils import select_device

    device = select_device(opt.device, opt.batch_size)
    precision = choose_precision(requested_precision(opt), device.type)
    LOGGER.info(f"quickstart: precision {precision.name} ({precision.reason})")
    return precision, device


def _dataset_sizes(data_dict):
    from utils.label_files import list_image_files

    return len(list_image_files(data_dict["train"])), len(list_image_files(data_dict["val"]))


def _probe(opt, data_dict, precision, device):
    """Per-image costs of the job's models on this machine, or None where no budget is planned (every
    epoch count given, or a GPU: the probe is for CPUs) -> (costs, (n_train, n_val))."""
    from utils.stage_plan import probe_costs

    train_teacher = not opt.teacher_weight
    if opt.student_epochs and (opt.teacher_epochs or not train_teacher):
        return None, None
    if device.type != "cpu":
        LOGGER.info(f"quickstart: no time budget on {device.type} (the probe is for CPUs): "
                    f"{GPU_EPOCHS} epochs per stage unless given")
        opt.teacher_epochs, opt.student_epochs = opt.teacher_epochs or GPU_EPOCHS, opt.student_epochs or GPU_EPOCHS
        return None, None
    sizes = _dataset_sizes(data_dict)
    costs = probe_costs(opt.teacher_cfg if train_teacher else opt.teacher_weight, opt.student_cfg,
                        int(data_dict["nc"]), opt.img, opt.batch_size, precision)
    LOGGER.info(f"quickstart: probe (img {opt.img}, batch {opt.batch_size}, {precision.name}, {sizes[0]} train / "
                f"{sizes[1]} val images): " + ", ".join(f"{k} {v * 1e3:.1f} ms/img" for k, v in vars(costs).items()))
    return costs, sizes


class MainJob:
    """The stages of the main job under one budget: probe, teacher, KD student, baseline, report."""

    RESERVE = 30.0  # seconds kept for start-up, the final validations and the report

    def __init__(self, opt):
        self.opt = opt
        self.t0 = time.time()
        self.project = increment_path(Path(opt.project) / "exp", mkdir=True)
        self.train_teacher = not opt.teacher_weight
        self.stages = Stages(2 + self.train_teacher + 1 + opt.baseline)
        self.runs, self.info = [], {}

    def seconds_left(self):
        return self.opt.minutes * 60 - (time.time() - self.t0) - self.RESERVE

    def run(self):
        from utils.dataset_yaml import check_dataset

        opt = self.opt
        self.stages.start("dataset and machine probe")
        self.data_dict = check_dataset(opt.data)
        self.precision, device = _resolve_precision(opt)
        self.costs, self.sizes = _probe(opt, self.data_dict, self.precision, device)
        self.stages.finish()
        if self.train_teacher:
            teacher = self.train_stage("teacher", train, opt.teacher_cfg, opt.teacher_epochs)[0]
        else:
            teacher = Path(opt.teacher_weight)
            self.runs.append(Run("teacher", teacher))
            self.info["teacher"] = {"cfg": "", "epochs": None, "train s": 0.0}
        kd_extra = ["--teacher_weight", str(teacher)] + opt.kd_args.split()
        kd = self.train_stage("student_kd", train_kd, opt.student_cfg, opt.student_epochs, extra=kd_extra)
        if opt.baseline:  # exactly the epochs the KD student ran, uncapped (each is cheaper than a KD epoch)
            self.train_stage("student_baseline", train, opt.student_cfg, kd[1], bound=kd[2])
        return self.report()

    def _stage_seconds(self, role):
        """A budgeted stage's seconds: the teacher's share of what is left now, or the KD student's half of
        the students' time (the baseline's epochs then cost at most as much)."""
        from utils.stage_plan import split_budget

        opt = self.opt
        share = opt.teacher_share if role == "teacher" else 0.0
        seconds = split_budget(self.seconds_left(), share, role == "teacher", opt.baseline)[STAGE_KEYS[role]]
        return max(seconds, 1.0)  # budget spent already (a very slow machine): one epoch, not a refusal

    def train_stage(self, role, module, cfg, epochs=None, extra=(), bound=None):
        """One training stage with its stage line: fixed epochs, or (epochs None) the stage's seconds of the
        budget as a --time cap with the probe's epoch guess. bound: an upper limit of its time, for the ETA.
        -> (best.pt, epochs run, seconds)."""
        from utils.stage_plan import calibrate, epochs_for

        key, cap = STAGE_KEYS[role], None
        if epochs is None:
            cap = self._stage_seconds(role)
            epochs = epochs_for(self.costs, key, cap, *self.sizes)
            eta, detail = cap, f": {_fmt_s(cap)} of the budget (about {epochs} epochs by the probe)"
        else:
            eta = bound or (self.costs.epoch_seconds(key, *self.sizes) * epochs if self.costs else None)
            detail = f": {epochs} epochs"
        self.stages.start(f"{role} {Path(cfg).stem}", eta, detail)
        args = _common_args(self.opt, self.project, role, epochs, cfg, self.precision.name,
                            cap / 3600 if cap else None) + list(extra)
        best, seconds, done = _train(module, args)
        self.stages.finish()
        self.info[role] = {"cfg": cfg, "epochs": done, "train s": round(seconds, 1)}
        self.runs.append(Run(role, best, best.parent.parent / "results.csv"))
        if self.costs is not None and done:  # later guesses use what this stage really took per epoch
            self.costs, k = calibrate(self.costs, self.costs.epoch_seconds(key, *self.sizes), seconds / done)
            LOGGER.info(f"quickstart: {role}: {done} epochs in {_fmt_s(seconds)} ({k:.2f}x the probe's estimate)")
        return best, done, seconds

    def report(self):
        """Validate every model (as val.py), write results.md/json, report.md/png -> table rows."""
        opt = self.opt
        self.stages.start("validation of every model and the KD report")
        rows = []
        for r in self.runs:
            m = measure(r, self.data_dict, opt.img, opt.batch_size, opt.device, opt.workers, project=self.project)
            r.metrics.update(self.info[r.role])
            rows.append({"run": r.role, "model": Path(self.info[r.role]["cfg"]).stem or "?", **m,
                         **self.info[r.role]})
        basis = _basis(opt, self.precision, self.info)
        write_report(self.project, self.runs, self.data_dict, opt.img, basis=basis, images=opt.report_images,
                     extra_columns=("epochs", "train s"))
        self.stages.finish()
        table = format_table(rows)
        (self.project / "results.md").write_text(table + "\n\n" + basis + "\n")
        rows = [{k: v for k, v in r.items() if k not in ("ap50", "cfg")} for r in rows]
        (self.project / "results.json").write_text(json.dumps(rows, indent=2))
        LOGGER.info(f"\n{table}\n\n{basis}\n\nSaved to {self.project}: results.md, report.md, report.png")
        LOGGER.info(self.stages.summary())
        return rows


def main(opt):
    return MainJob(opt).run()


def _basis(opt, precision, info):
    """The line that says what the table compares."""
    from utils.precision import cpu_description

    kd, base = info.get("student_kd", {}), info.get("student_baseline", {})
    same = f"both students {kd.get('epochs')} epochs" if base else f"KD student {kd.get('epochs')} epochs"
    return (f"Basis: {same}, teacher {info['teacher']['epochs'] or 'given'} epochs; img {opt.img}, batch "
            f"{opt.batch_size}, hyp {Path(opt.hyp).name}, {opt.optimizer}, seed {opt.seed}, precision "
            f"{precision.name}; metrics of each best.pt on the same val set ({Path(opt.data).name}); "
            f"{cpu_description()}.")


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "quickstart.py")

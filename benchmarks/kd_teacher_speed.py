"""What the frozen teacher's forward costs in a KD step, as loaded and as the Distiller prepares it.

    python benchmarks/kd_teacher_speed.py --teacher runs/train/exp/weights/best.pt
    python benchmarks/kd_teacher_speed.py --teacher T.pt --student yolov5n.yaml --img 224 --batch 16

The engine feeds channels_last batches on a CPU. Timed, alternating, on the same random batch:
- teacher as loaded (BatchNorm separate, contiguous weights): the Distiller before it prepared the teacher;
- teacher as Distiller.setup leaves it (prepare_teacher: BatchNorm folded into the convs, weights channels_last);
- one student training step (forward + backward) for scale: the share of a KD step the teacher takes.
Prints medians (ms per batch) and writes runs/benchmarks/kd_teacher_speed.json. Run it on a quiet machine.
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None):
    from models.yolo import Model
    from utils.checkpoint import load_model
    from utils.distill.distiller import prepare_teacher
    from utils.profiler import median_time
    from vs_upstream import cpu_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", default="yolov5n.yaml")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "kd_teacher_speed.json"))
    a = p.parse_args(argv)

    torch.manual_seed(0)
    loaded = load_model(a.teacher).eval().requires_grad_(False)
    prepared = prepare_teacher(copy.deepcopy(loaded), channels_last=True)
    student = Model(ROOT / "models" / a.student, nc=int(loaded.nc)).train().to(memory_format=torch.channels_last)
    x = torch.rand(a.batch, 3, a.img, a.img).contiguous(memory_format=torch.channels_last)

    def teacher(m):
        def run():
            with torch.no_grad():
                m(x)
        return run

    def student_step():
        sum(o.float().mean() for o in student(x)).backward()

    rows = {}
    for _ in range(2):  # two alternating rounds: drift on a shared machine hits every variant alike
        for name, fn in (("teacher as loaded", teacher(loaded)), ("teacher as prepared", teacher(prepared)),
                         ("student train step", student_step)):
            rows.setdefault(name, []).append(round(median_time(fn, x.device, a.repeats, a.warmup) * 1e3, 1))
    ms = {k: min(v) for k, v in rows.items()}
    result = {"ms_per_batch": ms,
              "teacher_speedup": round(ms["teacher as loaded"] / ms["teacher as prepared"], 2),
              "kd_step_saving": round(1 - (ms["teacher as prepared"] + ms["student train step"])
                                      / (ms["teacher as loaded"] + ms["student train step"]), 3),
              "settings": {**vars(a), "threads": torch.get_num_threads(), "torch": torch.__version__},
              "cpu": cpu_info()}
    for k, v in ms.items():
        print(f"{k:>22}: {v:8.1f} ms / batch of {a.batch} at {a.img}")
    print(f"teacher forward {result['teacher_speedup']}x faster; teacher + student step "
          f"{result['kd_step_saving']:.1%} shorter")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""How hard each distillation term pulls on the student, next to the detection loss.

    python benchmarks/kd_grad_balance.py                      # fixture teacher, fresh yolov5n, NEU-DET
    python benchmarks/kd_grad_balance.py --student-weights runs/kd/exp/weights/last.pt

For a few training batches it measures the norm of the student's gradient from the detection
loss, from output KD (alpha 1) and from each feature loss at beta 1, all batch-scaled as in
training, and prints the beta that would make each feature gradient `--target` times the
detection gradient. The engine clips the summed gradient at norm 10, so a term whose gradient
is far above the detection loss's does not add to it: it replaces it. Figures go to
runs/benchmarks/kd/kd_grad_balance.json.
"""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.distill.features import FEATURE_LOSSES  # noqa: E402
from utils.distill.health import grad_norm  # noqa: E402 - the run's KD health check measures the same

FIXTURE = ROOT.parent / "shared" / "fixtures" / "upstream_yolov5s_neu224.pt"
FEATS = tuple(FEATURE_LOSSES)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(FIXTURE), help="teacher checkpoint (ours or upstream)")
    p.add_argument("--student-cfg", default="models/yolov5n.yaml", help="fresh student (unless --student-weights)")
    p.add_argument("--student-weights", default="", help="measure a trained student checkpoint instead")
    p.add_argument("--data", default="data/NEU-DET.yaml")
    p.add_argument("--hyp", default="data/hyps/hyp.scratch-low.yaml")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="training batches averaged")
    p.add_argument("--feat", nargs="+", default=list(FEATS), choices=FEATS)
    p.add_argument("--target", type=float, default=0.1, help="wanted |grad feature| / |grad detection|")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "kd" / "kd_grad_balance.json"))
    return p.parse_args(argv)


def build(a, device):
    """Teacher, student (train mode, upstream loss gains), loss, distiller and a loader."""
    import torch
    from models.yolo import DetectionModel
    from utils.checkpoint import load_model
    from utils.dataloaders import create_dataloader
    from utils.dataset_yaml import check_dataset
    from utils.distill.config import KDConfig
    from utils.distill.distiller import Distiller
    from utils.general import yaml_load
    from utils.loss import ComputeLoss, scale_loss_gains

    teacher = load_model(a.teacher, device=device)
    torch.manual_seed(a.seed)
    if a.student_weights:
        student = load_model(a.student_weights, device=device).float()
    else:
        student = DetectionModel(str(ROOT / a.student_cfg), nc=int(teacher.nc)).to(device)
    student.train().requires_grad_(True)
    student.names = dict(teacher.names)
    student.hyp = scale_loss_gains(yaml_load(ROOT / a.hyp), student.model[-1].nl, int(teacher.nc), a.img)
    data = check_dataset(a.data)
    loader, _ = create_dataloader(data["train"], a.img, a.batch, int(student.stride.max()), hyp=student.hyp,
                                  augment=True, workers=0, shuffle=True, seed=a.seed)
    distiller = Distiller(KDConfig(teacher_weight=a.teacher, feat=tuple(a.feat)))  # loss_terms: before any beta
    engine = SimpleNamespace(model=student, hyp=student.hyp, amp=False,
                             opt=SimpleNamespace(cfg=a.student_cfg, weights=a.student_weights))
    distiller.setup(engine)
    distiller.on_train_start(engine)
    return student, ComputeLoss(student), distiller, loader


def measure(a):
    from utils.torch_utils import select_device

    device = select_device(a.device)
    student, compute_loss, distiller, loader = build(a, device)
    s_params = [p for p in student.parameters() if p.requires_grad]
    a_params = [p for m in distiller.trainable_modules() for p in m.parameters()]
    sums, n = {}, 0
    try:
        for imgs, targets, *_ in loader:
            imgs = imgs.to(device).float() / 255
            preds = student(imgs)
            det, _ = compute_loss(preds, targets.to(device))
            terms = {"det": det.sum(), **distiller.loss_terms(imgs, targets, preds)}
            for name, value in terms.items():
                row = sums.setdefault(name, {"loss_per_image": 0.0, "grad_student": 0.0, "grad_adapters": 0.0})
                row["loss_per_image"] += float(value) / imgs.shape[0]
                row["grad_student"] += grad_norm(value, s_params)
                if a_params and name not in ("det", "kd"):
                    row["grad_adapters"] += grad_norm(value, a_params)
            n += 1
            if n == a.batches:
                break
    finally:
        distiller.teardown()
    rows = {k: {m: v / n for m, v in r.items()} for k, r in sums.items()}
    g_det = rows["det"]["grad_student"]
    for name, r in rows.items():
        r["ratio_to_det"] = r["grad_student"] / g_det if g_det else float("nan")
        if name in a.feat:
            r["beta_for_target"] = a.target * g_det / r["grad_student"] if r["grad_student"] else None
    return rows


def report(rows, a):
    print(f"{'term':>6} {'loss/img':>10} {'|g student|':>12} {'/det':>7} {'|g adapters|':>13} "
          f"{'beta for ' + str(a.target) + 'x det':>18}")
    for name, r in rows.items():
        beta = r.get("beta_for_target")
        print(f"{name:>6} {r['loss_per_image']:>10.4f} {r['grad_student']:>12.3f} {r['ratio_to_det']:>7.3f} "
              f"{r['grad_adapters']:>13.3f} {('%.2g' % beta) if beta else '-':>18}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(a, k) for k in ("teacher", "student_cfg", "student_weights", "data", "img", "batch",
                                           "batches", "target", "seed")}
    out.write_text(json.dumps({"settings": settings, "terms": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    args = parse_args()
    report(measure(args), args)

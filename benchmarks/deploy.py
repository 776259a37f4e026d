r"""Every deployment format of one checkpoint: mAP on the val set and batch-1 CPU latency (issue 27).

    python benchmarks/deploy.py --weights best.pt --data data/NEU-DET.yaml --img 224 [--latency-img 224 640]

Exports the checkpoint (a copy, in --out) with export.py to TorchScript, ONNX, OpenVINO and, calibrated on
--calib-images train images, INT8 OpenVINO (NNCF) and INT8 ONNX (onnxruntime QDQ); validates each with
val.py's metrics code at --img; times each at batch 1 (median of --repeats after --warmup calls, --threads
threads) at every --latency-img (static formats are exported once per size). Writes deploy.{json,md}.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMATS = {"PyTorch": "{stem}.pt", "TorchScript": "{stem}.torchscript", "ONNX": "{stem}.onnx",
           "OpenVINO": "{stem}_openvino_model", "OpenVINO INT8": "{stem}_int8_openvino_model",
           "ONNX INT8": "{stem}_int8.onnx"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", default="data/NEU-DET.yaml")
    p.add_argument("--img", type=int, default=224, help="validation image size (the model's)")
    p.add_argument("--latency-img", type=int, nargs="+", default=[224, 640])
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-val", action="store_true", help="latency only")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "deploy"))
    return p.parse_args(argv)


def export_all(weights, img, data, calib_images, folder):
    """Copy weights into folder/img<N>/ and export every format there -> {format: path}."""
    import export

    d = Path(folder) / f"img{img}"
    d.mkdir(parents=True, exist_ok=True)
    w = d / f"{Path(weights).stem}.pt"
    shutil.copy(weights, w)
    export.run(weights=w, imgsz=[img], include=["torchscript", "onnx", "openvino"], int8=True, data=data,
               calib_images=calib_images)
    return {k: d / v.format(stem=w.stem) for k, v in FORMATS.items()}


def latency_ms(path, img, repeats, warmup):
    from utils.backends import InferenceBackend
    from utils.profiler import batch1_latency_ms

    backend = InferenceBackend(path, device="cpu")
    return batch1_latency_ms(backend, img, repeats, warmup, channels_last=backend.channels_last)


def validate(a, path, img, out, name, rect):
    """(mAP50, mAP50-95) of one artifact on the val split; rect=False: every format sees the same square
    letterboxed img x img inputs (a fixed-shape artifact can take no other), so differences are the export's."""
    from utils.evaluation import evaluate_weights

    r = evaluate_weights(a.data, weights=str(path), batch_size=32, imgsz=img, device="cpu", workers=a.workers,
                         project=out / "val", name=name.replace(" ", "_"), exist_ok=True, plots=False, rect=rect)
    return round(float(r.results[2]), 4), round(float(r.results[3]), 4)


def main(argv=None):
    a = parse_args(argv)
    import torch

    from utils.precision import cpu_description

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    rows = {k: {"format": k} for k in FORMATS}
    for img in sorted(set([a.img, *a.latency_img])):
        t0 = time.time()
        files = export_all(a.weights, img, a.data, a.calib_images, out)
        print(f"[deploy] exported at {img} in {time.time() - t0:.0f} s", flush=True)
        for k, f in files.items():
            rows[k][f"file@{img}"] = str(f.relative_to(out))
            if img in a.latency_img:
                rows[k][f"ms@{img}"] = latency_ms(f, img, a.repeats, a.warmup)
            if img == a.img and not a.no_val:
                rows[k]["mAP50"], rows[k]["mAP50-95"] = validate(a, f, img, out, k, rect=False)
                if k == "PyTorch":  # val.py's own default for a .pt: rectangular batches, pad 0.5
                    rows[k]["val.py mAP50"], rows[k]["val.py mAP50-95"] = validate(a, f, img, out, k + "_rect",
                                                                                   rect=None)
            print(f"[deploy] {k} @{img}: {rows[k]}", flush=True)
    ref = rows["PyTorch"]
    for r in rows.values():
        for img in a.latency_img:
            r[f"speedup@{img}"] = round(ref[f"ms@{img}"] / r[f"ms@{img}"], 2)
        if "mAP50" in r:
            r["dmAP50"] = round(r["mAP50"] - ref["mAP50"], 4)
    cols = ["format", *(["mAP50", "mAP50-95", "dmAP50"] if not a.no_val else []),
            *[c for img in a.latency_img for c in (f"ms@{img}", f"speedup@{img}")]]
    from utils.report import markdown_table

    rect = (f"; val.py's default for the .pt (rectangular batches padded by half a stride) gives "
            f"{ref['val.py mAP50']} / {ref['val.py mAP50-95']}" if "val.py mAP50" in ref else "")
    basis = (f"{a.weights}, val {a.data} at img {a.img} (square letterbox for every format{rect}), batch-1 CPU "
             f"latency (median of {a.repeats} after {a.warmup}, {a.threads} threads), {cpu_description()}, "
             f"torch {torch.__version__}")
    md = f"Deployment formats: {basis}\n\n{markdown_table(list(rows.values()), cols)}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.md").write_text(md)
    (out / "deploy.json").write_text(json.dumps({"basis": basis, "settings": vars(a), "rows": list(rows.values())},
                                                indent=1))
    print(md, flush=True)


if __name__ == "__main__":
    main()

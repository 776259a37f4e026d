"""Export a checkpoint (ours or upstream YOLOv5) to ONNX.

Usage:
    python export.py --weights runs/train/exp/weights/best.pt --include onnx [--dynamic] [--half] [--imgsz 640]

Writes best.onnx next to the weights. The ONNX graph takes images (B, 3, H, W) float 0..1 and returns the
decoded predictions (B, N, nc + 5) = xywh in input pixels, objectness, class scores. Its metadata holds
'stride' and 'names' (a Python-literal dict string), read back by utils.backends.InferenceBackend.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.checkpoint import load_model  # noqa: E402
from utils.cli import add_cfg_argument  # noqa: E402
from utils.general import LOGGER, check_img_size, colorstr  # noqa: E402

DEFAULT_OPSET = 17  # supported by every current onnxruntime


class DecodedOutput(torch.nn.Module):
    """Wraps a DetectionModel so that eval forward returns only the decoded tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def _prepare_detect(model, dynamic):
    """Make Detect rebuild its grids inside the traced graph (needed for dynamic shapes)."""
    detect = model.model[-1] if hasattr(model, "model") else None
    if detect is None:
        return
    if hasattr(detect, "dynamic"):
        detect.dynamic = dynamic
    if hasattr(detect, "inplace"):
        detect.inplace = False
    nl = getattr(detect, "nl", 0)
    for attr in ("grid", "anchor_grid"):
        if isinstance(getattr(detect, attr, None), list):
            setattr(detect, attr, [torch.empty(0) for _ in range(nl)])
    if isinstance(getattr(detect, "_grid_cache", None), dict):
        detect._grid_cache.clear()


def add_metadata(file, meta):
    """Write {key: str(value)} into an ONNX file's metadata_props."""
    import onnx

    model_onnx = onnx.load(str(file))
    for k, v in meta.items():
        entry = model_onnx.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(model_onnx, str(file))


def export_onnx(model, im, file, opset=DEFAULT_OPSET, dynamic=False, simplify=False):
    """Trace ``model`` on ``im`` to ``file`` (.onnx) with metadata; returns the path."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx") from e
    LOGGER.info(f"{colorstr('ONNX:')} exporting with torch {torch.__version__}, opset {opset}...")
    _prepare_detect(model, dynamic)
    wrapper = DecodedOutput(model).eval()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes about shape checks
        torch.onnx.export(wrapper, (im,), str(file), opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    model_onnx = onnx.load(str(file))
    onnx.checker.check_model(model_onnx)
    if simplify:
        try:
            import onnxsim

            model_onnx, ok = onnxsim.simplify(model_onnx)
            if ok:
                onnx.save(model_onnx, str(file))
        except ImportError:
            LOGGER.info(f"{colorstr('ONNX:')} --simplify ignored (onnxsim not installed)")
    stride = int(torch.as_tensor(model.stride).max())
    add_metadata(file, {"stride": stride, "names": repr(dict(model.names))})
    return Path(file)


def run(weights="yolov5s.pt", imgsz=(640, 640), batch_size=1, device="cpu", include=("onnx",), half=False,
        dynamic=False, simplify=False, opset=DEFAULT_OPSET, cfg=None):
    """Export ``weights`` to each format in ``include`` (only 'onnx' now); returns the written files."""
    t0 = time.time()
    include = [x.lower() for x in include]
    unknown = [x for x in include if x != "onnx"]
    if unknown:
        raise ValueError(f"--include {unknown}: unsupported format(s); supported: onnx")
    weights = Path(weights)
    device = torch.device("cuda:0" if str(device).isdigit() else device)
    if half and device.type != "cuda":
        raise ValueError("--half export needs a CUDA --device (onnxruntime on CPU lacks float16 kernels)")
    if half and dynamic:
        raise ValueError("--half and --dynamic are not compatible: choose one")
    model = load_model(weights, device=device, fuse=True, cfg=cfg or None)
    imgsz = list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)
    gs = int(torch.as_tensor(model.stride).max())
    imgsz = [check_img_size(x, gs) for x in imgsz]
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    if half:
        im, model = im.half(), model.half()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        y = DecodedOutput(model)(im)  # dry run
    LOGGER.info(f"{colorstr('PyTorch:')} starting from {weights} with output shape {tuple(y.shape)}")
    files = [export_onnx(model, im, weights.with_suffix(".onnx"), opset=opset, dynamic=dynamic, simplify=simplify)]
    mb = files[0].stat().st_size / 1e6
    LOGGER.info(f"\nExport complete ({time.time() - t0:.1f}s): {files[0]} ({mb:.1f} MB)"
                f"\nValidate: python val.py --weights {files[0]} --img {imgsz[0]}"
                f"\nDetect:   python detect.py --weights {files[0]} --img {imgsz[0]}")
    return files


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Export a yolov5-kd / YOLOv5 checkpoint to ONNX")
    parser.add_argument("--weights", type=str, default="yolov5s.pt", help="checkpoint path")
    add_cfg_argument(parser)
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda device, i.e. 0")
    parser.add_argument("--half", action="store_true", help="FP16 export (CUDA only)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch and image size axes")
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxsim (ignored if absent)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--include", nargs="+", default=["onnx"], help="formats: onnx")
    return parser.parse_args(argv)


def main(opt):
    return run(**vars(opt))


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "export.py", echo="export")

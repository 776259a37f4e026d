"""Export a checkpoint (ours or upstream YOLOv5) to TorchScript, ONNX and OpenVINO, optionally INT8.

Usage:
    python export.py --weights runs/train/exp/weights/best.pt --include torchscript onnx openvino [--imgsz 640]
    python export.py --weights best.pt --include onnx openvino --int8 --data data/mydata.yaml [--calib-images 300]

Writes next to the weights (upstream's names): best.torchscript, best.onnx, best_openvino_model/ and, with
--int8, best_int8_openvino_model/ (NNCF post-training quantization) and best_int8.onnx (onnxruntime static
QDQ), both calibrated on train images of --data. The ONNX graph takes images (B, 3, H, W) float 0..1 and returns the
decoded predictions (B, N, nc + 5) = xywh in input pixels, objectness, class scores. Its metadata holds
'stride' and 'names' (a Python-literal dict string), read back by utils.backends.InferenceBackend.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.checkpoint import load_model  # noqa: E402
from utils.deploy.onnx_export import DEFAULT_OPSET, DecodedOutput, export_onnx  # noqa: E402
from utils.cli import OptionError, add_cfg_argument  # noqa: E402
from utils.general import LOGGER, check_img_size, colorstr  # noqa: E402
from utils.options import EXPORT_FORMATS, check_export_options  # noqa: E402

FORMATS = EXPORT_FORMATS  # upstream's --include names (the ones this repo writes)


def run(weights="yolov5s.pt", imgsz=(640, 640), batch_size=1, device="cpu", include=("onnx",), half=False,
        dynamic=False, simplify=False, opset=DEFAULT_OPSET, cfg=None, int8=False, data=None, calib_images=300):
    """Export ``weights`` to each format in ``include`` (and INT8 variants with int8); returns the files."""
    from utils.deploy.metadata import as_strings, metadata_of

    t0 = time.time()
    include = [x.lower() for x in include]
    check_export_options(dict(include=include, imgsz=list(imgsz), batch_size=batch_size, opset=opset, int8=int8,
                              data=data, half=half, calib_images=calib_images, device=device, weights=weights))
    weights = Path(weights)
    device = torch.device("cuda:0" if str(device).isdigit() else device)
    if half and device.type != "cuda":
        raise OptionError("--half export needs a CUDA --device (onnxruntime on CPU lacks float16 kernels)")
    if half and dynamic:
        raise OptionError("--half and --dynamic are not compatible: choose one")
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
    meta = metadata_of(model, imgsz, batch_size)
    files = []
    if "torchscript" in include:
        from utils.deploy.torchscript import export_torchscript

        files.append(export_torchscript(model, im, weights.with_suffix(".torchscript"), meta))
    onnx_file = None
    if {"onnx", "openvino"} & set(include):
        onnx_file = export_onnx(model, im, weights.with_suffix(".onnx"), opset=opset, dynamic=dynamic,
                                simplify=simplify)
        files += [onnx_file] if "onnx" in include else []
    if "openvino" in include:
        from utils.deploy.int8 import export_openvino

        files.append(export_openvino(onnx_file, meta))
    if int8:
        from utils.deploy.calibration import calibration_images
        from utils.deploy.int8 import export_onnx_int8, export_openvino_int8

        calib = calibration_images(data, imgsz, n=calib_images, batch=batch_size)
        if "openvino" in include:
            files.append(export_openvino_int8(onnx_file, meta, calib))
        if "onnx" in include:
            files.append(export_onnx_int8(onnx_file, as_strings(meta), calib))
    LOGGER.info(f"\nExport complete ({time.time() - t0:.1f}s): " + ", ".join(str(f) for f in files)
                + f"\nValidate: python val.py --weights {files[-1]} --img {imgsz[0]}"
                + f"\nDetect:   python detect.py --weights {files[-1]} --img {imgsz[0]}")
    return files


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Export a yolov5-kd / YOLOv5 checkpoint for deployment")
    parser.add_argument("--weights", type=str, default="yolov5s.pt", help="checkpoint path")
    add_cfg_argument(parser)
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda device, i.e. 0")
    parser.add_argument("--half", action="store_true", help="FP16 export (CUDA only)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch and image size axes")
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxsim (ignored if absent)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--include", nargs="+", default=["onnx"], help=f"formats: {', '.join(FORMATS)}")
    parser.add_argument("--int8", action="store_true", help="also INT8: OpenVINO via NNCF, ONNX via onnxruntime "
                                                            "(static QDQ), calibrated on --data's train images")
    parser.add_argument("--data", type=str, default=None, help="dataset YAML whose train split calibrates --int8")
    parser.add_argument("--calib-images", type=int, default=300, help="--int8: calibration images (train split)")
    return parser.parse_args(argv)


def main(opt):
    return run(**vars(opt))


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, parse_opt, "export.py", echo="export")

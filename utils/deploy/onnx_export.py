"""ONNX export of a DetectionModel: the decoded-output wrapper, the Detect preparation for tracing (shared with
the TorchScript export) and the metadata export.py writes."""

import warnings
from pathlib import Path

import torch

from utils.general import LOGGER, colorstr

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

"""Load an OpenVINO artifact (a *_openvino_model folder, or its .xml) for inference on the CPU."""

from pathlib import Path

import yaml

from utils.checkpoint import CheckpointError
from utils.deploy.int8 import require
from utils.deploy.metadata import MAX_TEXT, read_metadata


def _xml_of(path):
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise CheckpointError(f"{path}: an OpenVINO model folder holds one .xml (found {len(xmls)})")
        return xmls[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: OpenVINO model not found")
    return path


def read_openvino_metadata(folder):
    """Validated (stride, names) of metadata.yaml in the model's folder."""
    f = Path(folder) / "metadata.yaml"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (an OpenVINO model exported by export.py carries stride and names)")
    if f.stat().st_size > MAX_TEXT:
        raise CheckpointError(f"{f}: over {MAX_TEXT} bytes")
    try:
        meta = yaml.safe_load(f.read_text(errors="replace"))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{f}: not valid YAML ({str(e).splitlines()[0]})") from e
    return read_metadata(meta, f)


def load_openvino(path):
    """(compiled CPU model, stride, names, fixed input shape or None)."""
    ov = require("openvino", f"{path}: running an OpenVINO model")
    xml = _xml_of(path)
    stride, names = read_openvino_metadata(xml.parent)
    try:
        model = ov.Core().read_model(str(xml))
        # f32: on CPUs with native bf16 OpenVINO would otherwise run the float parts in bf16 (errors ~1e-3)
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as e:  # openvino raises its own RuntimeError subclasses with long messages
        raise CheckpointError(f"{xml}: OpenVINO cannot load this model ({str(e).splitlines()[0][:200]})") from e
    shape = compiled.inputs[0].get_partial_shape()
    fixed = tuple(d.get_length() for d in shape) if shape.is_static else None
    return compiled, stride, names, fixed

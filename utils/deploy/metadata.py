"""What every exported artifact carries beside its graph: stride and class names (and the export image size).

The same fields in each format: ONNX metadata_props, TorchScript extra file config.txt (JSON), OpenVINO
metadata.yaml beside the .xml (as upstream YOLOv5). Artifacts are untrusted files: every field is validated
where it is read, and a bad one is one CheckpointError naming the file and the field.
"""

import ast
import json
import math

from utils.checkpoint import CheckpointError
from utils.limits import check_names as limited_names

MAX_NAMES = 10_000  # classes
MAX_TEXT = 1_000_000  # bytes of a metadata field or file
STRIDES = (8, 16, 32, 64, 128)


def metadata_of(model, imgsz, batch_size=1):
    """The fields export writes for a DetectionModel."""
    import torch

    return {"stride": int(torch.as_tensor(model.stride).max()), "names": {int(k): str(v) for k, v in model.names.items()},
            "imgsz": [int(x) for x in imgsz], "batch": int(batch_size)}


def as_strings(meta):
    """{key: str} for formats whose metadata values are strings (ONNX): names as a Python literal."""
    return {"stride": str(meta["stride"]), "names": repr(meta["names"]), "imgsz": json.dumps(meta["imgsz"]),
            "batch": str(meta["batch"])}


def _literal(text, source, field):
    if not isinstance(text, str):
        return text
    if len(text) > MAX_TEXT:
        raise CheckpointError(f"{source}: metadata '{field}' is {len(text)} characters (limit {MAX_TEXT})")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise CheckpointError(f"{source}: metadata '{field}' is not a literal: {text[:80]!r}") from e


def check_stride(value, source):
    try:
        stride = float(value)
    except (TypeError, ValueError):
        stride = math.nan
    if stride not in STRIDES:
        raise CheckpointError(f"{source}: metadata 'stride' is {str(value)[:40]!r}; expected one of {STRIDES}")
    return int(stride)


def check_names(value, source):
    """Class names of an artifact -> {0: str, ...} (utils.limits.check_names: ids 0..n-1, short strings)."""
    if isinstance(value, (list, tuple, dict)) and len(value) > MAX_NAMES:
        raise CheckpointError(f"{source}: metadata 'names' holds {len(value)} classes (limit {MAX_NAMES})")
    return limited_names(value, f"{source}: metadata 'names'", error=CheckpointError)


def read_metadata(meta, source):
    """Validated (stride, names) from a metadata mapping (values may be strings, as in ONNX)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: metadata is not a mapping")
    missing = [k for k in ("stride", "names") if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: metadata has no {' or '.join(missing)} (export it with this repo's export.py)")
    return check_stride(meta["stride"], source), check_names(_literal(meta["names"], source, "names"), source)

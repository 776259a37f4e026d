"""TorchScript export (best.torchscript, upstream's name) and a guarded load.

A TorchScript archive is a program: torch.jit.load compiles the TorchScript source in its code/ folder and
that source may call any registered operator. Before loading, every operator the source names is checked
against the tensor operators a detection model needs (the ones export writes for this repo's blocks); an
archive naming anything else (file or process operators, custom namespaces) is refused, naming the file and
the operator. The stride/names of config.txt are validated like every artifact's metadata.
"""

import json
import re
import warnings
import zipfile
from pathlib import Path

import torch

from utils.checkpoint import CheckpointError
from utils.deploy.metadata import MAX_TEXT, read_metadata
from utils.run_dirs import OutputError

CONFIG = "config.txt"
MAX_SOURCE = 50_000_000  # bytes of TorchScript source in one archive
# Operators a traced detection model calls (aten, as `torch.<op>` or `ops.aten.<op>` in the source).
TENSOR_OPS = frozenset("""
    _convolution conv2d batch_norm add add_ sub sub_ mul mul_ div div_ pow neg sigmoid sigmoid_ silu silu_ relu
    relu_ relu6 hardtanh hardtanh_ hardswish hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ tanh exp
    log clamp clamp_ softmax max_pool2d avg_pool2d adaptive_avg_pool2d adaptive_max_pool2d mean amax amin max min
    sum linear matmul flatten reshape view permute transpose contiguous expand expand_as cat stack split
    split_with_sizes chunk unbind select slice narrow index squeeze unsqueeze arange meshgrid zeros ones
    zeros_like ones_like full size to detach clone upsample_nearest2d upsample_bilinear2d dropout feature_dropout
    floor_divide remainder sqrt rsqrt abs floor ceil round numel dim Int Float ScalarImplicit copy_ repeat tile
    device tensor where eq ne gt lt ge le sign type_as float half int long
""".split())
PRIM_OPS = frozenset("NumToTensor device dtype shape TupleUnpack ListUnpack min max".split())
OP_REF = re.compile(r"\b(?:torch\.)?ops\.(\w+)\.(\w+)|\btorch\.(\w+)\b(?!\.)")
CLASS_REF = re.compile(r"\btorch\.(?:nn|models|utils)\.[\w.]+")


def export_torchscript(model, im, file, meta):
    """Trace model (fused, eval; its Detect returns decoded boxes) on im -> file with meta in config.txt."""
    from utils.deploy.onnx_export import DecodedOutput, _prepare_detect

    _prepare_detect(model, dynamic=True)  # grids computed from the input's size inside the graph
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape-dependent branches
        ts = torch.jit.trace(DecodedOutput(model).eval(), im, strict=False, check_trace=False)
    try:
        ts.save(str(file), _extra_files={CONFIG: json.dumps(meta)})
    except RuntimeError as e:  # torch's writer reports a full disk or an unwritable folder so, not as OSError
        raise OutputError(file, str(e).strip().splitlines()[0][:200] if str(e).strip() else "write failed") from e
    return Path(file)


def check_torchscript_source(path):
    """Refuse an archive whose TorchScript source names an operator outside the detection set."""
    try:
        with zipfile.ZipFile(path) as z:
            sources = [i for i in z.infolist() if i.filename.endswith(".py") and "/code/" in f"/{i.filename}"]
            if sum(i.file_size for i in sources) > MAX_SOURCE:
                raise CheckpointError(f"{path}: TorchScript source over {MAX_SOURCE} bytes")
            text = "\n".join(z.read(i).decode("utf-8", "replace") for i in sources)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({e})") from e
    if not sources:
        raise CheckpointError(f"{path}: no TorchScript code in the archive")
    scrubbed = CLASS_REF.sub("", text)  # module class paths (torch.nn.modules.conv.Conv2d), not calls
    for ns, op, aten in OP_REF.findall(scrubbed):
        ok = (aten in TENSOR_OPS) if aten else (ns == "aten" and op in TENSOR_OPS) or (ns == "prim" and op in PRIM_OPS)
        if not ok:
            raise CheckpointError(f"{path}: TorchScript calls operator {f'{ns}.{op}' if ns else 'torch.' + aten}, "
                                  "which is not a detection model's tensor operator: refused (not loaded)")


def load_torchscript(path, device):
    """(scripted module in eval, stride, names) after the source check."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: TorchScript file not found")
    check_torchscript_source(path)
    extra = {CONFIG: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: torch.jit.load failed ({str(e).splitlines()[0][:200]})") from e
    raw = extra[CONFIG]
    if not raw or len(raw) > MAX_TEXT:
        raise CheckpointError(f"{path}: no {CONFIG} metadata (or over {MAX_TEXT} bytes): export it with export.py")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{path}: {CONFIG} is not JSON ({e})") from e
    stride, names = read_metadata(meta, path)
    return module.eval(), stride, names

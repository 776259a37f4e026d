"""Safe import of upstream YOLOv5 ``.pt`` files (pickled whole modules) into our checkpoint format.

Upstream checkpoints pickle ``models.yolo.DetectionModel`` objects. Unpickling them normally would
import and run upstream code. Here a restricted unpickler reads the zip written by ``torch.save``
itself: every global the pickle names is looked up in an allowlist and replaced by an inert
stand-in that only records state; any other global is refused before anything is called.
Tensors are rebuilt from the raw storage bytes in the zip. Nothing from the file is executed.
"""

import io
import pickle
import zipfile
from collections import OrderedDict
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from utils.cli import UserError
from utils.general import names_dict

FORMAT = "yolov5-kd/1"


class UpstreamCheckpointError(UserError, ValueError):
    """An upstream checkpoint that cannot (or must not) be imported."""


# ----------------------------------------------------------------------------- inert stand-ins
class ModuleStandIn:
    """Records the pickled ``__dict__`` of an upstream nn.Module; has no behaviour."""

    upstream_name = "?"

    def __init__(self, *args, **kwargs):  # only reached through REDUCE/NEWOBJ with pickled args
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict_state, slot_state)
            state = state[0] or {}
        self.state = dict(state) if isinstance(state, dict) else {}

    def get(self, key, default=None):
        return getattr(self, "state", {}).get(key, default)

    def __repr__(self):
        return f"<stand-in {self.upstream_name}>"


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, dtype):
        self.dtype = dtype


class _NumpyDtype:
    """Stand-in for ``numpy.dtype`` built by REDUCE + BUILD."""

    def __init__(self, code, *args):
        self.code, self.order = str(code), "|"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>":
            self.order = state[1]

    def to_numpy(self):
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _NumpyArray:
    """Stand-in for an ``ndarray`` rebuilt by ``_reconstruct`` + BUILD (numeric dtypes only)."""

    def __init__(self, *args):
        self.value = None

    def __setstate__(self, state):
        _, shape, dtype, fortran, raw = state
        dt = dtype.to_numpy() if isinstance(dtype, _NumpyDtype) else None
        if dt is None or dt.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array with object dtype is not allowed")
        arr = np.frombuffer(bytes(raw), dtype=dt)
        self.value = arr.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_scalar(dtype, raw=None):
    dt = dtype.to_numpy() if isinstance(dtype, _NumpyDtype) else None
    if dt is None or dt.hasobject or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar with object dtype is not allowed")
    return np.frombuffer(bytes(raw), dtype=dt)[0].item()


def _as_posix_path(*parts):
    return str(PurePosixPath(*parts))


def _as_windows_path(*parts):
    return str(PureWindowsPath(*parts))


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """Replacement for torch._utils._rebuild_tensor_v2: a strided view of a flat storage tensor."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
    if isinstance(dtype, torch.dtype) and storage.dtype != dtype:
        storage = storage.view(dtype)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_TORCH_DTYPES = {str(d).split(".")[1]: d for d in set(_STORAGE_DTYPES.values())}

# upstream YOLOv5 classes (models.common / models.yolo) and torch.nn classes seen in its models
UPSTREAM_BLOCKS = (
    "Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "SPP", "SPPF", "Focus", "Concat",
    "GhostConv", "GhostBottleneck", "C3Ghost", "C3TR", "C3SPP", "Contract", "Expand",
)
UPSTREAM_MODELS = ("Detect", "DetectionModel", "Model")
TORCH_NN = {
    "conv": ("Conv2d", "ConvTranspose2d"),
    "batchnorm": ("BatchNorm2d", "SyncBatchNorm"),
    "activation": ("SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Identity"),
    "linear": ("Linear", "Identity"),
    "pooling": ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"),
    "upsampling": ("Upsample",),
    "container": ("Sequential", "ModuleList"),
    "dropout": ("Dropout",),
}

_STANDIN_CLASSES = {}


def _standin_class(qualname):
    """One inert ModuleStandIn subclass per upstream class name (cached)."""
    if qualname not in _STANDIN_CLASSES:
        short = qualname.rsplit(".", 1)[1]
        _STANDIN_CLASSES[qualname] = type(short, (ModuleStandIn,), {"upstream_name": qualname})
    return _STANDIN_CLASSES[qualname]


def _build_allowlist():
    allowed = {
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "pathlib.PosixPath": _as_posix_path,
        "pathlib.PurePosixPath": _as_posix_path,
        "pathlib.WindowsPath": _as_windows_path,
        "pathlib.PureWindowsPath": _as_windows_path,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "numpy.dtype": _NumpyDtype,
        "numpy.ndarray": _NumpyArray,
    }
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{core}.scalar"] = _numpy_scalar
        allowed[f"{core}._reconstruct"] = lambda cls, *args: _NumpyArray()
    allowed.update({f"torch.{k}": _StorageType(v) for k, v in _STORAGE_DTYPES.items()})
    allowed.update({f"torch.{k}": v for k, v in _TORCH_DTYPES.items()})
    for name in UPSTREAM_BLOCKS:
        allowed[f"models.common.{name}"] = _standin_class(f"models.common.{name}")
    for name in UPSTREAM_MODELS:
        allowed[f"models.yolo.{name}"] = _standin_class(f"models.yolo.{name}")
    for sub, names in TORCH_NN.items():
        for name in names:
            allowed[f"torch.nn.modules.{sub}.{name}"] = _standin_class(f"torch.nn.modules.{sub}.{name}")
    return allowed


ALLOWED_GLOBALS = _build_allowlist()


# ----------------------------------------------------------------------------- unpickler
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from ALLOWED_GLOBALS; storages are read from the zip."""

    def __init__(self, data, zf, prefix, file):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.file = zf, prefix, file
        self.storages = {}

    def find_class(self, module, name):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        key = f"{module}.{name}"
        if key not in ALLOWED_GLOBALS:
            raise UpstreamCheckpointError(
                f"{self.file}: refused to load global '{key}': it is not in the allowlist of upstream "
                f"YOLOv5 classes (the file may be unsafe, or hold a model type this importer does not know)"
            )
        return ALLOWED_GLOBALS[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UpstreamCheckpointError(f"{self.file}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise UpstreamCheckpointError(f"{self.file}: storage of unknown type {stype!r:.80}")
        if key not in self.storages:
            try:
                raw = self.zf.read(f"{self.prefix}data/{key}")
            except KeyError as e:
                raise UpstreamCheckpointError(f"{self.file}: storage '{key}' missing from the archive") from e
            flat = torch.frombuffer(bytearray(raw), dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
            if stype.dtype != torch.uint8 and flat.numel() != numel:
                raise UpstreamCheckpointError(f"{self.file}: storage '{key}' has {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def read_pickled_zip(file):
    """Unpickle the ``data.pkl`` of a torch.save zip with the restricted unpickler (raw objects)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: checkpoint file not found")
    try:
        zf = zipfile.ZipFile(file)
    except zipfile.BadZipFile as e:
        raise UpstreamCheckpointError(f"{file}: not a torch.save zip archive (truncated or wrong format): {e}") from e
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise UpstreamCheckpointError(f"{file}: zip archive without a data.pkl (not a torch.save file)")
        prefix = pkl[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in zf.namelist() and zf.read(order).strip() not in (b"little", b""):
            raise UpstreamCheckpointError(f"{file}: big-endian checkpoints are not supported")
        try:
            return RestrictedUnpickler(zf.read(pkl[0]), zf, prefix, file).load()
        except UpstreamCheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise UpstreamCheckpointError(f"{file}: damaged or truncated archive ({e})") from e
        except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UpstreamCheckpointError(f"{file}: cannot read the pickled content ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- conversion
def standin_state_dict(module, prefix=""):
    """state_dict of a pickled module tree, in nn.Module order (params, persistent buffers, children)."""
    out = OrderedDict()
    for name, p in (module.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p
    skip = module.get("_non_persistent_buffers_set") or set()
    for name, b in (module.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, child in (module.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, ModuleStandIn):
            raise UpstreamCheckpointError(f"sub-module '{prefix}{name}' is not a module")
        out.update(standin_state_dict(child, f"{prefix}{name}."))
    return out


def to_plain(x):
    """Recursively turn a value into plain Python/tensor data loadable with weights_only=True."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, _NumpyArray):
        x = x.value
    if isinstance(x, np.ndarray):
        return x.item() if x.size == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, dict):
        return {to_plain(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in x]
    return str(x)


def convert_model(module, file="checkpoint"):
    """Pickled upstream DetectionModel stand-in -> our ``ckpt['model']`` dict (yaml, state_dict, names, nc, stride)."""
    if not isinstance(module, ModuleStandIn) or not module.upstream_name.startswith("models.yolo."):
        raise UpstreamCheckpointError(f"{file}: 'model' is {type(module).__name__}, not an upstream YOLOv5 DetectionModel")
    yaml_dict = module.get("yaml")
    if not isinstance(yaml_dict, dict):
        raise UpstreamCheckpointError(f"{file}: the pickled model has no yaml dict (cannot rebuild its architecture)")
    yaml_dict = to_plain(yaml_dict)
    nc = module.get("nc", yaml_dict.get("nc"))
    nc = int(to_plain(nc)) if nc is not None else None
    if nc is not None:
        yaml_dict["nc"] = nc
    stride = module.get("stride")
    stride = [float(s) for s in stride.flatten().tolist()] if isinstance(stride, torch.Tensor) else to_plain(stride)
    state = OrderedDict((k, v.detach().clone()) for k, v in standin_state_dict(module).items())
    return {"yaml": yaml_dict, "state_dict": state, "names": names_dict(to_plain(module.get("names")), nc),
            "nc": nc, "stride": stride}


def load_upstream(file):
    """Import an upstream YOLOv5 ``.pt`` file into our checkpoint dict format (see ARCHITECTURE.md)."""
    raw = read_pickled_zip(file)
    if not isinstance(raw, dict) or "model" not in raw:
        raise UpstreamCheckpointError(f"{file}: not a YOLOv5 checkpoint (expected a dict with a 'model' entry)")
    model = raw.get("ema") if raw.get("model") is None else raw["model"]
    ckpt_model = convert_model(model, file)
    ema = raw.get("ema")
    ema_sd = convert_model(ema, file)["state_dict"] if isinstance(ema, ModuleStandIn) else None
    opt = to_plain(raw.get("opt")) if isinstance(raw.get("opt"), dict) else {}
    hyp = opt.get("hyp")  # the run's hyp as given; model.hyp holds upstream's layer-scaled copy
    if not isinstance(hyp, dict):
        hyp = model.get("hyp")
    best = to_plain(raw.get("best_fitness"))
    return {
        "format": FORMAT,
        "model": ckpt_model,
        "ema": ema_sd,
        "updates": to_plain(raw.get("updates")),
        "optimizer": to_plain(raw.get("optimizer")) if isinstance(raw.get("optimizer"), dict) else None,
        "epoch": int(to_plain(raw.get("epoch", -1)) if raw.get("epoch") is not None else -1),
        "best_fitness": float(best) if isinstance(best, (int, float)) else None,
        "opt": opt,
        "hyp": to_plain(hyp) if isinstance(hyp, dict) else {},
        "plugin": None,
        "date": str(raw.get("date") or datetime.now().isoformat()),
        "source": f"upstream YOLOv5 ({Path(file).name})",
    }


def is_upstream_pickle(file):
    """True when a torch.save zip references upstream ``models.*`` classes (cheap scan of data.pkl)."""
    try:
        with zipfile.ZipFile(file) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            data = zf.read(pkl[0]) if pkl else b""
    except (zipfile.BadZipFile, OSError):
        return False
    # GLOBAL opcode (protocol 2, what torch.save writes) or a protocol-4 SHORT_BINUNICODE module name
    return b"cmodels.yolo\n" in data or b"cmodels.common\n" in data or b"\x8c\x0bmodels.yolo" in data

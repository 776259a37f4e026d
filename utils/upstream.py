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

# Bounds on what one archive may make the reader do (a crafted file must fail fast, not exhaust memory).
LIMITS = {
    "max_ratio": 100,             # uncompressed / compressed size of one zip entry
    "max_entry_bytes": 8 << 30,   # one zip entry, uncompressed
    "max_entries": 100_000,       # entries in the archive
    "max_dims": 8,                # dimensions of one tensor view
    "max_depth": 100,             # nesting of containers and modules in the pickled objects
    "max_nodes": 2_000_000,       # objects visited while converting (a shared sub-list counts each time)
}


def upstream_names():
    """Every allowlisted global name: upstream YOLOv5 blocks and models, torch.nn layers, data helpers."""
    names = [f"models.common.{n}" for n in UPSTREAM_BLOCKS] + [f"models.yolo.{n}" for n in UPSTREAM_MODELS]
    names += [f"torch.nn.modules.{sub}.{n}" for sub, ns in TORCH_NN.items() for n in ns]
    return names


def check_zip_archive(file, zf):
    """Refuse archives whose entries claim absurd sizes or compression ratios (zip bombs) before reading."""
    infos = zf.infolist()
    if len(infos) > LIMITS["max_entries"]:
        raise UpstreamCheckpointError(f"{file}: {len(infos)} zip entries (limit {LIMITS['max_entries']})")
    for zi in infos:
        if zi.file_size > LIMITS["max_entry_bytes"]:
            raise UpstreamCheckpointError(f"{file}: zip entry '{zi.filename}' claims {zi.file_size} bytes "
                                          f"(limit {LIMITS['max_entry_bytes']})")
        if zi.file_size > (1 << 20) and zi.file_size > LIMITS["max_ratio"] * max(zi.compress_size, 1):
            raise UpstreamCheckpointError(f"{file}: zip entry '{zi.filename}' expands {zi.file_size} bytes from "
                                          f"{zi.compress_size} (ratio over {LIMITS['max_ratio']}: a zip bomb?)")


# ----------------------------------------------------------------------------- unpickler
class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD opcode can be checked
    """Unpickler whose globals come only from a per-load allowlist; storages are read from the zip.

    Every load gets fresh stand-in classes and storage types, so nothing one file does (BUILD on a
    class, attributes set on a stand-in) can reach another load. BUILD is allowed only on stand-in
    instances; tensor views are checked against their storage.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, zf, prefix, file):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.file = zf, prefix, file
        self.storages = {}
        self.allowed = self._allowlist()

    def _allowlist(self):
        standins = {}

        def standin(qualname):
            return standins.setdefault(qualname, type(qualname.rsplit(".", 1)[1], (ModuleStandIn,),
                                                      {"upstream_name": qualname}))

        allowed = {
            "collections.OrderedDict": OrderedDict,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "pathlib.PosixPath": _as_posix_path,
            "pathlib.PurePosixPath": _as_posix_path,
            "pathlib.WindowsPath": _as_windows_path,
            "pathlib.PureWindowsPath": _as_windows_path,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
            "torch._utils._rebuild_tensor_v3": self._rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "numpy.dtype": _NumpyDtype,
            "numpy.ndarray": _NumpyArray,
        }
        for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[f"{core}.scalar"] = _numpy_scalar
            allowed[f"{core}._reconstruct"] = lambda cls, *args: _NumpyArray()
        allowed.update({f"torch.{k}": _StorageType(v) for k, v in _STORAGE_DTYPES.items()})
        allowed.update({f"torch.{k}": v for k, v in _TORCH_DTYPES.items()})
        allowed.update({name: standin(name) for name in upstream_names()})
        return allowed

    def find_class(self, module, name):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        key = f"{module}.{name}"
        if key not in self.allowed:
            raise UpstreamCheckpointError(
                f"{self.file}: refused to load global '{key}': it is not in the allowlist of upstream "
                f"YOLOv5 classes (the file may be unsafe, or hold a model type this importer does not know)"
            )
        return self.allowed[key]

    def load_build(self):
        """BUILD only on the inert objects that record state; never on a class, function or storage type."""
        target = self.stack[-2] if len(self.stack) > 1 else None
        if not isinstance(target, (ModuleStandIn, _NumpyDtype, _NumpyArray)) or isinstance(target, type):
            raise UpstreamCheckpointError(f"{self.file}: refused to set state on {type(target).__name__} "
                                          f"(only pickled modules carry state)")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UpstreamCheckpointError(f"{self.file}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise UpstreamCheckpointError(f"{self.file}: malformed storage reference {pid!r:.80}")
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, stype.dtype, numel)
        return self.storages[key]

    def _read_storage(self, key, dtype, numel):
        """A flat tensor from zip entry data/<key>, whose size must be exactly what the pickle claims."""
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise UpstreamCheckpointError(f"{self.file}: storage '{key}' missing from the archive") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if numel < 0 or info.file_size != numel * itemsize:
            raise UpstreamCheckpointError(f"{self.file}: storage '{key}' claims {numel} elements of {itemsize} "
                                          f"bytes but the archive holds {info.file_size} bytes")
        raw = self.zf.read(name)
        return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)

    def _known_storage(self, storage):
        if not any(storage is s for s in self.storages.values()):
            raise UpstreamCheckpointError(f"{self.file}: tensor rebuilt from something that is not a storage")

    def _view(self, storage, storage_offset, size, stride):
        """A strided view of a flat storage, after checking it stays inside the storage."""
        size, stride = tuple(size), tuple(stride)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (storage_offset, *size, *stride))
        if not ints or len(size) != len(stride) or len(size) > LIMITS["max_dims"]:
            raise UpstreamCheckpointError(f"{self.file}: malformed tensor view size={size!r:.60} stride={stride!r:.60}")
        if storage_offset < 0 or any(s < 0 for s in size) or any(st < 1 for sz, st in zip(size, stride) if sz > 1):
            raise UpstreamCheckpointError(f"{self.file}: tensor view with a negative size or offset, or a stride of "
                                          f"0 (size={size}, stride={stride}, offset={storage_offset})")
        if all(size):
            last = storage_offset + sum((sz - 1) * st for sz, st in zip(size, stride))
            if last >= storage.numel():
                raise UpstreamCheckpointError(f"{self.file}: tensor view reaches element {last} of a storage of "
                                              f"{storage.numel()} (out of bounds)")
        return torch.as_strided(storage, size, stride, storage_offset)

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_):
        """torch._utils._rebuild_tensor_v2, checked: a view of one of this archive's storages."""
        self._known_storage(storage)
        return self._view(storage, storage_offset, size, stride)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
        self._known_storage(storage)
        if isinstance(dtype, torch.dtype) and storage.dtype != dtype:
            storage = storage.view(dtype)
        return self._view(storage, storage_offset, size, stride)


def read_pickled_zip(file):
    """Unpickle the ``data.pkl`` of a torch.save zip with the restricted unpickler (raw objects).

    Every failure is one UpstreamCheckpointError naming the file.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: checkpoint file not found")
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UpstreamCheckpointError(f"{file}: not a torch.save zip archive (truncated or wrong format): {e}") from e
    with zf:
        check_zip_archive(file, zf)
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise UpstreamCheckpointError(f"{file}: zip archive without a data.pkl (not a torch.save file)")
        prefix = pkl[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        try:
            if order in zf.namelist() and zf.read(order).strip() not in (b"little", b""):
                raise UpstreamCheckpointError(f"{file}: big-endian checkpoints are not supported")
            return RestrictedUnpickler(zf.read(pkl[0]), zf, prefix, file).load()
        except UpstreamCheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise UpstreamCheckpointError(f"{file}: damaged or truncated archive ({e})") from e
        except Exception as e:  # noqa: BLE001 - whatever a crafted pickle provokes is one error naming the file
            raise UpstreamCheckpointError(f"{file}: cannot read the pickled content ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- conversion
def standin_state_dict(module, prefix="", depth=0):
    """state_dict of a pickled module tree, in nn.Module order (params, persistent buffers, children)."""
    if depth > LIMITS["max_depth"]:
        raise UpstreamCheckpointError(f"modules nested deeper than {LIMITS['max_depth']} at '{prefix}'")
    out = OrderedDict()
    skip = module.get("_non_persistent_buffers_set") or set()
    tensors = [(n, p) for n, p in _dict_items(module.get("_parameters"), prefix)]
    tensors += [(n, b) for n, b in _dict_items(module.get("_buffers"), prefix) if n not in skip]
    for name, value in tensors:
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise UpstreamCheckpointError(f"'{prefix}{name}' is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    for name, child in _dict_items(module.get("_modules"), prefix):
        if child is None:
            continue
        if not isinstance(child, ModuleStandIn):
            raise UpstreamCheckpointError(f"sub-module '{prefix}{name}' is not a module")
        out.update(standin_state_dict(child, f"{prefix}{name}.", depth + 1))
    if len(out) > LIMITS["max_nodes"]:
        raise UpstreamCheckpointError(f"more than {LIMITS['max_nodes']} tensors")
    return out


def _dict_items(d, prefix):
    if d is None:
        return []
    if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
        raise UpstreamCheckpointError(f"module '{prefix or 'model'}' has a malformed parameter/module table")
    return list(d.items())


def to_plain(x, depth=0, budget=None):
    """Recursively turn a value into plain Python/tensor data loadable with weights_only=True.

    Depth and the number of visited objects are bounded (a crafted pickle can share one list many times).
    """
    budget = [LIMITS["max_nodes"]] if budget is None else budget
    budget[0] -= 1
    if depth > LIMITS["max_depth"] or budget[0] < 0:
        raise UpstreamCheckpointError(f"pickled data nested deeper than {LIMITS['max_depth']} or larger than "
                                      f"{LIMITS['max_nodes']} objects")
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
        return {to_plain(k, depth + 1, budget): to_plain(v, depth + 1, budget) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [to_plain(v, depth + 1, budget) for v in x]
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
    """Import an upstream YOLOv5 ``.pt`` file into our checkpoint dict format (see ARCHITECTURE.md).

    Every failure is one UpstreamCheckpointError naming the file.
    """
    raw = read_pickled_zip(file)
    try:
        return _convert_checkpoint(raw, file)
    except UpstreamCheckpointError as e:
        raise e if str(file) in str(e) else UpstreamCheckpointError(f"{file}: {e}") from None
    except Exception as e:  # noqa: BLE001 - malformed content of a file someone else wrote
        raise UpstreamCheckpointError(f"{file}: malformed checkpoint content ({type(e).__name__}: {e})") from None


def _convert_checkpoint(raw, file):
    """The unpickled dict of an upstream checkpoint -> our checkpoint dict."""
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
            check_zip_archive(file, zf)
            pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            data = zf.read(pkl[0]) if pkl else b""
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    # GLOBAL opcode (protocol 2, what torch.save writes) or a protocol-4 SHORT_BINUNICODE module name
    return b"cmodels.yolo\n" in data or b"cmodels.common\n" in data or b"\x8c\x0bmodels.yolo" in data

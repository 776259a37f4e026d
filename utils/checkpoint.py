"""Our checkpoint format: atomic save, safe load (ours, upstream YOLOv5, plain state_dicts), model building
and weight transfer for ``--weights``. Format described in docs/ARCHITECTURE.md."""

import copy
import math
import os
import tempfile
import zipfile
from argparse import Namespace
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import torch

from models.yolo import UNTRUSTED_LIMITS
from utils.cli import UserError
from utils.general import LOGGER, names_dict
from utils.limits import check_names, check_structure
from utils.run_dirs import OutputError, writing
from utils.torch_utils import de_parallel
from utils.upstream import (FORMAT, UpstreamCheckpointError, check_zip_archive, is_upstream_pickle,
                            load_upstream, to_plain)


class CheckpointError(UserError, ValueError):
    """A weights file that is missing, damaged or of the wrong kind (message names the file)."""


# ----------------------------------------------------------------------------- save
def save_checkpoint(ckpt, path):
    """torch.save ``ckpt`` to ``path`` atomically: write a temp file in the same folder, then os.replace."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as RuntimeError
            raise OutputError(path, str(e).strip().splitlines()[0][:200] if str(e).strip() else "write failed") from e
        raise
    return path


def _state_dict(module, half=False):
    return OrderedDict(
        (k, (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone())
        for k, v in de_parallel(module).state_dict().items()
    )


def model_to_checkpoint_dict(model, half=False):
    """``ckpt['model']`` entry for a DetectionModel: yaml, state_dict (float16 if half), names, nc, stride."""
    model = de_parallel(model)
    nc = int(getattr(model, "nc", model.yaml.get("nc", 0)))
    stride = getattr(model, "stride", None)
    stride = [float(s) for s in torch.as_tensor(stride).flatten().tolist()] if stride is not None else None
    return {"yaml": to_plain(copy.deepcopy(model.yaml)), "state_dict": _state_dict(model, half),
            "names": names_dict(getattr(model, "names", None), nc), "nc": nc, "stride": stride}


def make_checkpoint(model, ema=None, updates=None, optimizer=None, epoch=-1, best_fitness=None, opt=None,
                    hyp=None, plugin=None, half=False):
    """A complete checkpoint dict in our format (plain data; loadable with weights_only=True)."""
    if isinstance(opt, Namespace):
        opt = vars(opt)
    return {
        "format": FORMAT,
        "model": model_to_checkpoint_dict(model, half=half),
        "ema": _state_dict(ema, half) if isinstance(ema, torch.nn.Module) else ema,
        "updates": updates,
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        "opt": to_plain(opt or {}),
        "hyp": to_plain(hyp or {}),
        "plugin": plugin,
        "date": datetime.now().isoformat(),
    }


# ----------------------------------------------------------------------------- load
def _is_tensor_dict(d):
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _plain_state_dict(obj):
    """The tensor dict inside a plain weights file ({name: tensor} or {'state_dict'|'model': {...}}), else None."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and obj[key] and "yaml" not in obj[key]:
                obj = obj[key]
                break
        if obj and _is_tensor_dict(obj):
            return obj
    return None


def read_weights_file(path):
    """Load any supported weights file. Returns ('checkpoint', ckpt dict in our format) or ('state_dict', dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch.save zip archive (truncated, empty or another format)")
    upstream = None
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip_archive(path, zf)
        if is_upstream_pickle(path):
            upstream = load_upstream(path)
    except UpstreamCheckpointError as e:
        raise CheckpointError(str(e)) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: damaged zip archive ({e})") from None
    if upstream is not None:
        check_checkpoint_entries(upstream, path)
        return "checkpoint", upstream
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged or crafted file provokes: one error naming it
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: {msg[:300]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "state_dict" in obj["model"]:
        if not str(obj.get("format", "")).startswith("yolov5-kd/"):
            LOGGER.warning(f"WARNING: {path}: checkpoint without a 'format' tag, reading it as ours")
        check_checkpoint_entries(obj, path)
        return "checkpoint", obj
    state = _plain_state_dict(obj)
    if state is not None:
        check_tensors(state, f"{path}: state_dict")
        return "state_dict", state
    raise CheckpointError(f"{path}: unrecognised content (neither a yolov5-kd checkpoint, an upstream YOLOv5 "
                          f"checkpoint, nor a state_dict of tensors)")


def _valid_nc(nc):
    """A class count a weights file may claim (models.yolo.UNTRUSTED_LIMITS)."""
    return isinstance(nc, int) and not isinstance(nc, bool) and 0 < nc <= UNTRUSTED_LIMITS["nc"]


def _finite_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v, low=None):
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def is_optimizer_state(v):
    """torch.optim state_dict layout: {'state': {int: {...}}, 'param_groups': [{'params': [int, ...]}, ...]}."""
    return (isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) and all(map(_is_int, g["params"]))
                    for g in v["param_groups"])
            and all(_is_int(k) and isinstance(s, dict) for k, s in v["state"].items()))


def _is_stride(v):
    return isinstance(v, (list, tuple)) and 0 < len(v) <= 16 and all(_finite_number(s) and 0 < s <= 4096 for s in v)


def _all_finite(v):
    """True when no element is NaN or infinite: a sum in the tensor's own dtype is non-finite whenever one is
    (fast, one pass); only a sum that overflowed without one needs the element-wise look."""
    return math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all())


def check_tensors(state, where):
    """Refuse tensors a model cannot use: without data (meta device), of an exotic kind, or not finite."""
    for k, v in state.items():
        if v.is_meta or v.device.type != "cpu":
            raise CheckpointError(f"{where}: tensor '{k}' has no data here (device {v.device.type})")
        if v.layout != torch.strided or v.is_quantized or v.is_complex():
            raise CheckpointError(f"{where}: tensor '{k}' is of an unsupported kind ({v.layout}, {v.dtype})")
        if v.is_floating_point() and not _all_finite(v):
            raise CheckpointError(f"{where}: tensor '{k}' holds NaN or infinite values (weights from a diverged run?)")


def check_checkpoint_entries(ckpt, path):
    """Every entry code reads from a checkpoint in our format (from our file or converted from upstream's),
    validated where it is read: one CheckpointError naming the file and the first bad field."""
    entry = ckpt["model"]
    for field in ("model", "opt", "hyp", "plugin", "optimizer", "best_fitness", "updates", "epoch"):
        check_structure(entry if field == "model" else ckpt.get(field), f"{path}: field '{field}'",
                        error=CheckpointError)
    checks = (
        ("model.yaml", entry.get("yaml"), lambda v: isinstance(v, dict)),
        ("model.state_dict", entry.get("state_dict"), lambda v: _is_tensor_dict(v) and len(v) > 0),
        ("model.nc", entry.get("nc"), lambda v: v is None or _valid_nc(v)),
        ("model.stride", entry.get("stride"), lambda v: v is None or _is_stride(v)),
        ("ema", ckpt.get("ema"), lambda v: v is None or _is_tensor_dict(v)),
        ("epoch", ckpt.get("epoch", -1), lambda v: _is_int(v, -1)),
        ("best_fitness", ckpt.get("best_fitness"), lambda v: v is None or _finite_number(v)),
        ("updates", ckpt.get("updates"), lambda v: v is None or _is_int(v, 0)),
        ("optimizer", ckpt.get("optimizer"), lambda v: v is None or isinstance(v, dict)),  # layout: on --resume
        ("opt", ckpt.get("opt"), lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) for k in v))),
        ("hyp", ckpt.get("hyp"), lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) for k in v))),
        ("plugin", ckpt.get("plugin"), lambda v: v is None or isinstance(v, dict)),
    )
    for name, value, ok in checks:
        if not ok(value):
            raise CheckpointError(f"{path}: malformed checkpoint field '{name}' ({type(value).__name__}: "
                                  f"{str(value)[:60]!r})")
    if entry.get("names") is not None:
        entry["names"] = check_names(entry["names"], f"{path}: field 'model.names'", CheckpointError, nc=entry.get("nc"))
    for field, state in (("model.state_dict", entry["state_dict"]), ("ema", ckpt.get("ema"))):
        if state is not None:
            check_tensors(state, f"{path}: field '{field}'")


def load_checkpoint(path):
    """Checkpoint dict in our format from our file or an upstream YOLOv5 .pt (converted on the fly)."""
    kind, obj = read_weights_file(path)
    if kind != "checkpoint":
        raise CheckpointError(f"{path}: a plain state_dict, not a checkpoint (no model yaml inside); "
                              f"use load_model(path, cfg=...) or --weights with --cfg")
    return obj


def build_stored_model(yaml_dict, path, nc=None, anchors=None, state=None):
    """DetectionModel from the model YAML stored in weights file ``path``: data, never code.

    Its blocks resolve only among known nn.Module classes (no imports); with the file's ``state`` dict,
    a YAML describing a model much larger than the weights it came with is refused before allocation.
    Any failure to rebuild it is a CheckpointError naming the file, the layer and how to load it anyway.
    """
    from models.yolo import DetectionModel, ModelConfigError

    if not isinstance(yaml_dict, dict):
        raise CheckpointError(f"{path}: the stored model YAML is a {type(yaml_dict).__name__}, not a mapping")
    if nc is not None and not _valid_nc(nc):
        raise CheckpointError(f"{path}: stored class count nc={nc!r} is not an int in 1..{UNTRUSTED_LIMITS['nc']}")
    try:
        budget = None if state is None else 2 * sum(v.numel() for v in state.values()) + 100_000
        return DetectionModel(copy.deepcopy(yaml_dict), ch=3, nc=nc, anchors=anchors, source=path,
                              allow_imports=False, max_params=budget)
    except ModelConfigError as e:
        raise CheckpointError(f"{e} -- to load these weights anyway, give your own model YAML with --cfg "
                              f"(it may name your module by dotted path), or register the class with "
                              f"@models.yolo.register_block in code that runs before loading") from None
    except Exception as e:  # noqa: BLE001 - any other failure on stored data is a bad file, not a bug of ours
        raise CheckpointError(f"{path}: cannot rebuild the stored model ({type(e).__name__}: {e})") from None


def _build_model(cfg, nc=None):
    """A model from the user's own cfg (a YAML path: their code, it may import their blocks)."""
    from models.yolo import DetectionModel

    return DetectionModel(cfg, ch=3, nc=nc)


def _load_strict(model, state, path):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model ({len(missing)} missing e.g. {missing[:3]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:3]}, {len(wrong)} wrong shape e.g. {wrong[:3]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_model(path, device="cpu", fuse=False, cfg=None):
    """Ready DetectionModel (eval, float32, names/stride set) from ours, upstream YOLOv5 or a state_dict + cfg.

    A mid-training checkpoint (last.pt) gives its EMA weights, the ones validation measured (as upstream's
    loader does); best.pt and finished checkpoints hold the EMA as their model already.
    """
    kind, obj = read_weights_file(path)
    if kind == "checkpoint":
        entry = obj["model"]
        if cfg is not None:
            model = _build_model(cfg, nc=entry.get("nc"))
        else:
            model = build_stored_model(entry["yaml"], path, nc=entry.get("nc"), state=entry["state_dict"])
        state, names = obj.get("ema") or entry["state_dict"], entry.get("names")
    else:
        if cfg is None:
            raise CheckpointError(f"{path}: a plain state_dict holds no architecture; give cfg= (a model YAML)")
        model, state, names = _build_model(cfg), obj, None
    _load_strict(model, state, path)
    model.names = names_dict(names, getattr(model, "nc", 0)) if names else names_dict(None, model.nc)
    if kind == "checkpoint" and entry.get("stride"):
        expected = [float(s) for s in entry["stride"]]
        got = [float(s) for s in torch.as_tensor(model.stride).flatten().tolist()]
        if got != expected:
            LOGGER.warning(f"WARNING: {path}: rebuilt model strides {got} differ from the checkpoint's {expected}")
    model = model.float()
    if fuse and hasattr(model, "fuse"):
        with torch.no_grad():  # fused weights must stay leaf tensors
            model = model.fuse()
    model.pt_path = str(path)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- transfer (--weights)
def _source_state(path_or_state):
    """(state_dict, model yaml or None, label for logs) from a path, a checkpoint dict or a state_dict."""
    if isinstance(path_or_state, (str, Path)):
        kind, obj = read_weights_file(path_or_state)
        label = str(path_or_state)
    else:
        obj, label = path_or_state, "state_dict"
        kind = "checkpoint" if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else "state_dict"
    if kind == "checkpoint":
        return obj["model"]["state_dict"], obj["model"].get("yaml"), label
    state = _plain_state_dict(obj) if kind == "state_dict" else None
    if state is None:
        raise CheckpointError(f"{label}: no tensors to transfer")
    return state, None, label


def _match_by_name(src, dst, exclude):
    return OrderedDict((k, v) for k, v in src.items()
                       if k in dst and v.shape == dst[k].shape and not any(x in k for x in exclude))


def _trim_ones(shape):
    shape = list(shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape.pop()
    return shape


def _match_by_order(src, dst):
    """Pair entries in order while shapes agree (the compatible prefix), e.g. torchvision backbone -> our YAML.

    A 1x1 conv weight (o, i, 1, 1) and a Linear weight (o, i) count as the same shape (SE blocks differ so).
    """
    out = OrderedDict()
    for (_, v), (k, t) in zip(src.items(), dst.items()):
        if v.shape == t.shape:
            out[k] = v
        elif v.dim() > 1 and t.dim() > 1 and _trim_ones(v.shape) == _trim_ones(t.shape):
            out[k] = v.reshape(t.shape)
        else:
            break
    return out


def transfer_weights(model, path_or_state, exclude=()):
    """Copy matching tensors into ``model`` (by name and shape; plain state_dicts by order if that matches more).

    Detect output convs of a checkpoint with another class count never match (their shape differs);
    anchors are excluded when the source's YAML anchors differ from the model's. Returns (n, total).
    """
    model_ = de_parallel(model)
    src, src_yaml, label = _source_state(path_or_state)
    dst = model_.state_dict()
    exclude = list(exclude)
    model_yaml = getattr(model_, "yaml", None) or {}
    if src_yaml is not None and "anchors" in src_yaml and src_yaml.get("anchors") != model_yaml.get("anchors"):
        exclude.append("anchor")
    matched = _match_by_name(src, dst, exclude)
    how = "by name"
    if src_yaml is None:
        by_order = _match_by_order(src, dst)
        if len(by_order) > len(matched):
            matched, how = by_order, "by order"
    model_.load_state_dict({k: v.to(dst[k].dtype) for k, v in matched.items()}, strict=False)
    LOGGER.info(f"Transferred {len(matched)}/{len(dst)} items from {label} ({how})")
    return len(matched), len(dst)

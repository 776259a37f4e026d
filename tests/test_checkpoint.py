"""Checkpoints: upstream import (allowlisted unpickler), our format round trip, atomic save, weight transfer."""

import copy
import functools
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from tests.conftest import import_torchvision_or_skip

from utils import checkpoint as ck
from utils.checkpoint import (CheckpointError, load_checkpoint, load_model, make_checkpoint, save_checkpoint,
                              transfer_weights)
from utils.upstream import load_upstream

NEU_NAMES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def tiny_yaml(nc=2, width=0.125):
    """yolov5n-style model dict at a small width (fast on CPU)."""
    return {
        "nc": nc, "depth_multiple": 0.33, "width_multiple": width, "anchors": copy.deepcopy(ANCHORS),
        "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                     [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
                     [-1, 9, "C3", [512]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C3", [1024]],
                     [-1, 1, "SPPF", [1024, 5]]],
        "head": [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                 [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [256, 1, 1]],
                 [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]],
                 [-1, 3, "C3", [256, False]], [-1, 1, "Conv", [256, 3, 2]], [[-1, 14], 1, "Concat", [1]],
                 [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]],
                 [-1, 3, "C3", [1024, False]], [[17, 20, 23], 1, "Detect", ["nc", "anchors"]]],
    }


@functools.lru_cache(maxsize=None)
def _built_model(nc, width):
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(tiny_yaml(nc, width), ch=3, nc=nc)
    model.names = {i: f"class{i}" for i in range(nc)}
    return model


def tiny_model(nc=2, width=0.125):
    """A fresh copy of a yolov5n-layout model at 1/8 width (built once per nc: building runs a forward)."""
    return copy.deepcopy(_built_model(nc, width))


def _perturb_bn(model):
    """Give BN buffers non-default values so a round trip that loses them is caught."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


# ----------------------------------------------------------------------------- upstream import
def test_upstream_fixture_imports_expected_model(upstream_ckpt):
    ckpt = load_upstream(upstream_ckpt)
    m = ckpt["model"]
    assert ckpt["format"] == "yolov5-kd/1" and ckpt["epoch"] == -1 and ckpt["optimizer"] is None
    assert m["nc"] == 6 and m["yaml"]["nc"] == 6
    assert m["names"] == dict(enumerate(NEU_NAMES))
    assert m["stride"] == [8.0, 16.0, 32.0]
    sd = m["state_dict"]
    assert len(sd) == 349
    assert list(sd)[0] == "model.0.conv.weight" and "model.24.m.2.bias" in sd
    assert sd["model.24.m.0.weight"].shape == (33, 128, 1, 1)
    assert sd["model.0.conv.weight"].dtype == torch.float16  # finished run: EMA in half
    assert sd["model.0.bn.num_batches_tracked"].dtype == torch.int64
    # anchors buffer is in grid units: times stride gives the yaml's pixel anchors
    pix = sd["model.24.anchors"].float() * torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)
    assert torch.allclose(pix.view(3, 6), torch.tensor(ANCHORS, dtype=torch.float32), atol=0.01)
    assert all(torch.isfinite(v.float()).all() for v in sd.values())
    assert all((v > 0).all() for k, v in sd.items() if k.endswith("running_var"))
    # the run's options come back as plain values (pathlib paths -> str)
    assert ckpt["opt"]["imgsz"] == 224 and isinstance(ckpt["opt"]["evolve_population"], str)
    assert ckpt["hyp"]["lr0"] == 0.01


def test_upstream_import_is_weights_only_data(upstream_ckpt, tmp_path):
    ckpt = load_checkpoint(upstream_ckpt)
    save_checkpoint(ckpt, tmp_path / "conv.pt")
    back = torch.load(tmp_path / "conv.pt", weights_only=True)
    assert back["model"]["names"] == ckpt["model"]["names"]
    for k, v in ckpt["model"]["state_dict"].items():
        assert torch.equal(back["model"]["state_dict"][k], v)


def test_upstream_fixture_loads_into_detection_model(upstream_ckpt):
    model = load_model(upstream_ckpt)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.names == dict(enumerate(NEU_NAMES))
    assert torch.as_tensor(model.stride).tolist() == [8.0, 16.0, 32.0]
    ref = load_upstream(upstream_ckpt)["model"]["state_dict"]
    got = model.state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k].to(ref[k].dtype), ref[k]) for k in ref)
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 224, 224))[0]
    assert y.shape == (1, 3 * (28 * 28 + 14 * 14 + 7 * 7), 11)


def _fake_torch_zip(path, pickle_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval")])
@pytest.mark.parametrize("looks_upstream", [True, False])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, module, name, looks_upstream):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    body = b"\x80\x02}("
    if looks_upstream:  # an allowed upstream class first, so the importer (not torch.load) handles it
        body += _unicode("model") + _global("models.yolo", "DetectionModel") + b")\x81"
    body += _unicode("evil") + _global(module, name) + _unicode(arg) + b"\x85R" + b"u."
    pickle.loads(body.replace(_global(module, name), _global("builtins", "str")).replace(
        _global("models.yolo", "DetectionModel"), _global("builtins", "object")))  # the pickle is well formed
    file = tmp_path / "evil.pt"
    _fake_torch_zip(file, body)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(file)
    assert str(file) in str(e.value)
    if looks_upstream:
        assert f"{module}.{name}" in str(e.value)
    with pytest.raises(CheckpointError):
        load_model(file)
    assert not marker.exists()


# ----------------------------------------------------------------------------- our format
def test_checkpoint_round_trip_weights_only(tmp_path):
    model = _perturb_bn(tiny_model(nc=3))
    model.names = {0: "a", 1: "b", 2: "c"}
    ckpt = make_checkpoint(model, epoch=4, best_fitness=0.5, opt={"img": 64, "path": tmp_path}, hyp={"lr0": 0.01})
    file = save_checkpoint(ckpt, tmp_path / "w" / "last.pt")
    raw = torch.load(file, weights_only=True)
    assert raw["epoch"] == 4 and raw["opt"]["path"] == str(tmp_path) and raw["model"]["names"] == model.names
    loaded = load_model(file)
    assert loaded.names == model.names and loaded.nc == 3
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], model(x)[0], atol=1e-5)


def test_half_checkpoint_loads_as_float32(tmp_path):
    model = tiny_model()
    file = save_checkpoint(make_checkpoint(model, half=True), tmp_path / "best.pt")
    assert torch.load(file, weights_only=True)["model"]["state_dict"]["model.0.conv.weight"].dtype == torch.float16
    assert next(load_model(file).parameters()).dtype == torch.float32


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    file = tmp_path / "last.pt"
    save_checkpoint({"format": "yolov5-kd/1", "epoch": 1}, file)
    before = file.read_bytes()

    def dying_save(obj, f):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"format": "yolov5-kd/1", "epoch": 2}, file)
    assert file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_bad_files_are_named_in_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(text)
    good = save_checkpoint(make_checkpoint(tiny_model()), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    wrong = tmp_path / "list.pt"
    torch.save([1, 2, 3], wrong)
    with pytest.raises(CheckpointError, match="list.pt"):
        load_checkpoint(wrong)
    sd = tmp_path / "plain.pth"
    torch.save(tiny_model().state_dict(), sd)
    with pytest.raises(CheckpointError, match="cfg"):
        load_model(sd)
    assert load_model(sd, cfg=tiny_yaml()).nc == 2


# ----------------------------------------------------------------------------- transfer
def test_transfer_same_architecture_counts_everything(tmp_path):
    src = _perturb_bn(tiny_model(nc=2))
    file = save_checkpoint(make_checkpoint(src), tmp_path / "src.pt")
    dst = tiny_model(nc=2)
    n, total = transfer_weights(dst, file)
    assert n == total == len(src.state_dict())
    assert torch.equal(dst.state_dict()["model.2.cv1.bn.running_var"], src.state_dict()["model.2.cv1.bn.running_var"])


def test_transfer_other_class_count_skips_detect_outputs(tmp_path):
    src = _perturb_bn(tiny_model(nc=2))
    dst = tiny_model(nc=3)
    before = copy.deepcopy(dst.state_dict())
    n, total = transfer_weights(dst, make_checkpoint(src))
    detect_out = [k for k in before if k.startswith("model.24.m.")]
    assert len(detect_out) == 6 and n == total - 6
    sd = dst.state_dict()
    assert all(torch.equal(sd[k], before[k]) for k in detect_out)
    assert torch.equal(sd["model.24.anchors"], src.state_dict()["model.24.anchors"])


def test_transfer_excludes_anchors_when_user_anchors_differ():
    src = tiny_model(nc=2)
    yaml_other = tiny_yaml(nc=2)
    yaml_other["anchors"] = [[5, 6, 8, 15, 16, 11], [15, 30, 31, 22, 30, 60], [58, 45, 78, 99, 186, 163]]
    from models.yolo import DetectionModel

    dst = DetectionModel(yaml_other, ch=3, nc=2)
    own = dst.state_dict()["model.24.anchors"].clone()
    n, total = transfer_weights(dst, make_checkpoint(src))
    assert n == total - 1 and torch.equal(dst.state_dict()["model.24.anchors"], own)


def test_transfer_plain_state_dict_by_order_over_compatible_prefix(tmp_path):
    dst = tiny_model(nc=2)
    ref = dst.state_dict()
    keys = list(ref)[:12]  # a "backbone" with foreign names (like torchvision's features.*)
    foreign = OrderedDict((f"features.{i}.w", torch.randn_like(ref[k].float()).to(ref[k].dtype))
                          for i, k in enumerate(keys))
    foreign["classifier.weight"] = torch.randn(1000, 7)  # incompatible tail: stops the prefix
    foreign["features.99.w"] = ref[list(ref)[13]].clone()  # same shape but after the break: not used
    file = tmp_path / "backbone.pth"
    torch.save(foreign, file)
    n, total = transfer_weights(dst, file)
    assert (n, total) == (12, len(ref))
    sd = dst.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in zip(keys, list(foreign.values())[:12]))


def test_transfer_logs_counts(tmp_path, caplog):
    import logging

    from utils.general import LOGGER

    LOGGER.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER.name):
            file = save_checkpoint(make_checkpoint(tiny_model()), tmp_path / "a.pt")
            n, total = transfer_weights(tiny_model(), file)
    finally:
        LOGGER.propagate = False
    assert f"Transferred {n}/{total} items from {file}" in caplog.text


def test_transfer_torchvision_mobilenet_backbone_by_order(tmp_path):
    torchvision = import_torchvision_or_skip()
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_small().state_dict()  # random init: no download needed
    file = tmp_path / "mobilenet_v3_small.pth"
    torch.save(tv, file)
    model = DetectionModel(Path(__file__).resolve().parents[1] / "models" / "mobilenetv3small_yolo5s.yaml", nc=6)
    n, total = transfer_weights(model, file)
    n_features = sum(1 for k in tv if k.startswith("features.") and not k.startswith("features.12."))
    assert n == n_features and total == len(model.state_dict())  # backbone features 0-11, nothing after
    sd, src = list(model.state_dict().values()), list(tv.values())
    assert all(torch.equal(sd[i].flatten(), src[i].flatten().to(sd[i].dtype)) for i in range(n))


def test_load_model_gives_the_ema_weights_of_a_mid_training_checkpoint(tmp_path):
    """val/detect/export and a teacher read last.pt's EMA (what validation measured), not the raw weights."""
    model, ema = tiny_model(nc=2), _perturb_bn(tiny_model(nc=2))
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.5)
    f = save_checkpoint(make_checkpoint(model, ema=ema, updates=3, optimizer={"state": {}}, epoch=4), tmp_path / "l.pt")
    got = load_model(f).state_dict()
    want = ema.state_dict()
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want)
    assert transfer_weights(tiny_model(nc=2), f)[0] > 0  # --weights still starts from the raw model
    raw = save_checkpoint(make_checkpoint(model), tmp_path / "raw.pt")
    got = load_model(raw).state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())

"""The trust boundary: weights files, the YAMLs stored in them and dataset YAMLs are data; none may run code.

Each attack writes a marker file if it ever runs; every test asserts the marker is absent and the error
names the file.
"""

import copy
import io
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel, ModelConfigError, register_block, resolve_block  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint, load_model, make_checkpoint, save_checkpoint  # noqa: E402
from utils.dataset_yaml import DatasetDownloadError, check_dataset  # noqa: E402
from utils.synthetic import MARKER, make_synthetic  # noqa: E402
from test_checkpoint import _global, _unicode as _str  # noqa: E402  (pickle opcode builders)

TINY = {
    "nc": 2, "depth_multiple": 0.33, "width_multiple": 0.125,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
                 [-1, 1, "SPPF", [512, 5]]],
    "head": [[-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 1, "C3", [256, False]],
             [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 2], 1, "Concat", [1]], [-1, 1, "C3", [128, False]],
             [[12, 9, 6], 1, "Detect", ["nc", "anchors"]]],
}


def evil_row(marker, name="os.system"):
    return [-1, 1, name, [f"touch {marker}"]]


def with_evil_row(d, marker, name="os.system"):
    """The model dict with a code-running row inserted after the first layer (indices shift, so use append)."""
    d = copy.deepcopy(d)
    d["backbone"].insert(1, evil_row(marker, name))
    return d


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return DetectionModel(copy.deepcopy(TINY), nc=2)


def save_evil_checkpoint(model, path, marker, name="os.system", resumable=False, opt=None):
    """Our checkpoint format with a stored model YAML whose row names ``name`` (a code-running callable)."""
    ckpt = make_checkpoint(model, epoch=0 if resumable else -1, optimizer={"state": {}, "param_groups": []}
                           if resumable else None, opt={"epochs": 1, **(opt or {})})
    ckpt["model"]["yaml"] = with_evil_row(ckpt["model"]["yaml"], marker, name)
    return save_checkpoint(ckpt, path)


# ----------------------------------------------------------------------------- the model YAML resolver
@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.eval", "pathlib.Path", "torch.load",
                                  "eval", "YamlSpec", "math.floor"])
def test_stored_yaml_never_resolves_a_callable(tiny_model, tmp_path, name):
    marker = tmp_path / "pwned"
    f = save_evil_checkpoint(tiny_model, tmp_path / "evil.pt", marker, name)
    with pytest.raises(CheckpointError) as e:
        load_model(f)
    msg = str(e.value)
    assert str(f) in msg and "layer 1" in msg and name in msg and "--cfg" in msg
    assert not marker.exists()


def test_user_cfg_may_import_only_module_classes(tmp_path):
    with pytest.raises(KeyError, match="not an nn.Module class"):
        resolve_block("os.system", allow_imports=True)
    with pytest.raises(KeyError, match="never imports"):
        resolve_block("torch.nn.modules.conv.Conv2d", allow_imports=False)
    assert resolve_block("torch.nn.modules.conv.Conv2d", allow_imports=True) is torch.nn.Conv2d
    for name in ("nn.Upsample", "torch.nn.Upsample", "Upsample"):
        assert resolve_block(name) is torch.nn.Upsample
    marker = tmp_path / "pwned"
    cfg = tmp_path / "user.yaml"  # even the user's own --cfg cannot call a function by accident
    cfg.write_text(yaml.safe_dump(with_evil_row(TINY, marker)))
    with pytest.raises(ModelConfigError, match="not an nn.Module class"):
        DetectionModel(cfg)
    assert not marker.exists()


def test_registered_block_resolves_in_a_stored_yaml(tmp_path):
    @register_block
    class TrustTestIdentity(torch.nn.Identity):
        pass

    d = copy.deepcopy(TINY)
    d["head"].insert(0, [-1, 1, "TrustTestIdentity", []])
    d["head"][-1][0] = [13, 10, 7]
    m = DetectionModel(d, nc=2)
    f = save_checkpoint(make_checkpoint(m), tmp_path / "reg.pt")
    assert type(load_model(f).model[7]).__name__ == "TrustTestIdentity"


def test_stored_yaml_sizes_are_bounded(tiny_model, tmp_path):
    ckpt = make_checkpoint(tiny_model)
    ckpt["model"]["yaml"]["backbone"][2][1] = 10 ** 9  # a billion C3 repeats
    f = save_checkpoint(ckpt, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="out of bounds"):
        load_model(f)


def test_stored_yaml_larger_than_its_weights_is_refused_before_allocating(tiny_model, tmp_path):
    ckpt = make_checkpoint(tiny_model)
    ckpt["model"]["yaml"]["head"].insert(0, [-1, 1, "nn.Linear", [100_000, 100_000]])  # 10^10 parameters
    ckpt["model"]["yaml"]["head"][-1][0] = [13, 10, 7]
    f = save_checkpoint(ckpt, tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match="more than its weights file holds"):
        load_model(f)


def test_malformed_entries_of_our_format_are_named(tiny_model, tmp_path):
    ckpt = make_checkpoint(tiny_model)
    ckpt["model"]["state_dict"] = {"model.0.conv.weight": "not a tensor"}
    f = save_checkpoint(ckpt, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="model.state_dict"):
        load_model(f)


# ----------------------------------------------------------------------------- upstream-format pickles
def save_upstream_style(model, path):
    """A whole pickled module the way upstream YOLOv5 saves it (globals models.yolo.*, models.common.*)."""
    torch.save({"epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None,
                "optimizer": None, "opt": {}, "date": "2026"}, path)
    return path


def test_upstream_pickle_stored_yaml_never_runs(tiny_model, tmp_path):
    marker = tmp_path / "pwned"
    clean = save_upstream_style(tiny_model, tmp_path / "clean.pt")
    assert load_checkpoint(clean)["source"].startswith("upstream")  # read by the allowlisted importer
    m = copy.deepcopy(tiny_model)
    m.yaml = with_evil_row(m.yaml, marker)
    f = save_upstream_style(m, tmp_path / "evil_upstream.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(f)
    assert str(f) in str(e.value) and "os.system" in str(e.value)
    assert not marker.exists()


def _int(i):
    return b"J" + struct.pack("<i", i)


def _fake_upstream(path, body, storages=None, compress=False):
    """A torch.save-style zip whose data.pkl is {'model': <upstream DetectionModel with yaml {'x': body}>}."""
    state = b"}(" + _str("yaml") + b"}(" + _str("nc") + _int(1) + _str("x") + body + b"uu"
    pkl = b"\x80\x02}(" + _str("model") + _global("models.yolo", "DetectionModel") + b")\x81" + state + b"bu."
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def _tensor(size, stride, offset=0, numel=4, key="0"):
    """Pickle bytes of _rebuild_tensor_v2(storage key (numel floats), offset, size, stride)."""
    tup = lambda xs: b"(" + b"".join(_int(x) for x in xs) + b"t"  # noqa: E731
    pid = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _int(offset) + tup(size) + tup(stride)
            + b"\x89" + _global("collections", "OrderedDict") + b")Rt" + b"R")


FLOATS4 = struct.pack("<4f", 1, 2, 3, 4)


CRAFTED = [
    ("storage larger than the archive", _tensor((4,), (1,), numel=10 ** 9), {"0": FLOATS4}, "claims"),
    ("view out of bounds", _tensor((100,), (1,)), {"0": FLOATS4}, "out of bounds"),
    ("stride 0", _tensor((4,), (0,)), {"0": FLOATS4}, "stride of 0"),
    ("negative offset", _tensor((2,), (1,), offset=-3), {"0": FLOATS4}, "negative"),
    ("BUILD on a shared storage type", _global("torch", "FloatStorage") + b"}" + _str("dtype")
     + _global("torch", "int64") + b"sb", {}, "refused to set state"),
    ("BUILD on a stand-in class", _global("models.common", "Conv") + b"}" + _str("upstream_name") + _str("x")
     + b"sb", {}, "refused to set state"),
    ("deep nesting", b"]" + b"\x85" * 5000, {}, "nested deeper"),
    ("shared sub-lists (exponential)", b"]" + b"q\x00h\x00\x86" * 40, {}, "larger than"),
    ("not a storage", _global("torch._utils", "_rebuild_tensor_v2") + b"(" + _str("s") + _int(0) + b"(t(t\x89)tR",
     {}, "not a storage"),
]


@pytest.mark.parametrize("case,body,storages,match", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_upstream_archives_fail_cleanly(tmp_path, case, body, storages, match):
    f = _fake_upstream(tmp_path / "crafted.pt", body, storages)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(f)
    assert str(f) in str(e.value), case


def test_load_in_one_file_cannot_change_the_next(tiny_model, tmp_path):
    clean = save_upstream_style(tiny_model, tmp_path / "clean.pt")
    before = load_checkpoint(clean)["model"]["state_dict"]
    attack = _global("torch", "FloatStorage") + b"}" + _str("dtype") + _global("torch", "int64") + b"sb"
    with pytest.raises(CheckpointError):
        load_checkpoint(_fake_upstream(tmp_path / "a.pt", attack))
    after = load_checkpoint(clean)["model"]["state_dict"]
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_zip_bomb_is_refused(tmp_path):
    f = _fake_upstream(tmp_path / "bomb.pt", _str("y"), {"1": bytes(30 << 20)}, compress=True)
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_checkpoint(f)


def test_pickle_that_runs_code_through_torch_load_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    f = tmp_path / "evil_torch.pt"
    buf = io.BytesIO()
    torch.save({"model": {"state_dict": {}, "yaml": {}}, "x": Evil()}, buf, pickle_protocol=2)
    f.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=str(f.name)):
        load_checkpoint(f)
    assert not marker.exists()


# ----------------------------------------------------------------------------- dataset YAMLs
def _dataset_yaml(path, download, root):
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["a", "b"], "download": download}))
    return path


@pytest.mark.parametrize("how", ["absolute", "beside the yaml", "dotdot", "other repo script", "shell", "out arg"])
def test_download_runs_only_shipped_generators(tmp_path, how):
    marker = tmp_path / "pwned"
    script = tmp_path / "get_data.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    download = {
        "absolute": str(script),
        "beside the yaml": "get_data.py",
        "dotdot": f"data/scripts/../../{os.path.relpath(script, ROOT)}",
        "other repo script": "data/scripts/split_dataset.py",
        "shell": f"bash -c 'touch {marker}'",
        "out arg": "data/scripts/make_synthetic.py --out /tmp/elsewhere",
    }[how]
    f = _dataset_yaml(tmp_path / "data.yaml", download, tmp_path / "missing")
    with pytest.raises(DatasetDownloadError) as e:
        check_dataset(f)
    assert str(f) in str(e.value) and "yourself" in str(e.value) or "argument" in str(e.value)
    assert not marker.exists() and not (tmp_path / "missing").exists()


def test_generator_overwrites_only_its_own_folders(tmp_path):
    user = tmp_path / "user_data"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not create"):
        make_synthetic(user, 2, 1, overwrite=True)
    assert (user / "precious.txt").read_text() == "keep me"
    ours = make_synthetic(tmp_path / "syn", 2, 1)
    assert (ours / MARKER).is_file()
    (ours / "images" / "val" / "extra.jpg").write_bytes(b"x")
    make_synthetic(ours, 2, 1, overwrite=True)
    assert not (ours / "images" / "val" / "extra.jpg").exists() and (ours / MARKER).is_file()


# ----------------------------------------------------------------------------- every entry point
def error_line(stderr):
    """The one-line user error an entry point printed."""
    return next((line for line in stderr.splitlines() if ": error: " in line), "")


def _run(script, *args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    env.pop("YOLOV5KD_TRACEBACK", None) if "YOLOV5KD_TRACEBACK" not in (env or {}) else None
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def evil_files(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_cli")
    data = make_synthetic(d / "syn", 4, 2)
    data_yaml = d / "syn.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(data), "train": "images/train", "val": "images/val",
                                         "names": ["a", "b", "c", "d", "e", "f"]}))
    marker = d / "pwned"
    evil = save_evil_checkpoint(tiny_model, d / "evil.pt", marker)
    last = save_evil_checkpoint(tiny_model, d / "exp" / "weights" / "last.pt", marker, resumable=True,
                                opt={"data": str(data_yaml), "imgsz": 64, "workers": 0})
    clean = save_checkpoint(make_checkpoint(tiny_model), d / "clean.pt")
    return {"dir": d, "data": data_yaml, "marker": marker, "evil": evil, "last": last, "clean": clean,
            "image": next((data / "images" / "val").glob("*.jpg"))}


ENTRY_POINTS = {
    "val": lambda f: ("val.py", "--weights", f["evil"], "--data", f["data"], "--img", 64, "--project", f["dir"]),
    "detect": lambda f: ("detect.py", "--weights", f["evil"], "--source", f["image"], "--project", f["dir"]),
    "export": lambda f: ("export.py", "--weights", f["evil"], "--img", 64),
    "train --weights": lambda f: ("train.py", "--weights", f["evil"], "--data", f["data"], "--epochs", 1,
                                  "--img", 64, "--project", f["dir"]),
    "train --resume": lambda f: ("train.py", "--resume", f["last"]),
    "train_kd --teacher_weight": lambda f: ("train_kd.py", "--teacher_weight", f["evil"], "--cfg", "yolov5n.yaml",
                                            "--data", f["data"], "--epochs", 1, "--img", 64, "--project", f["dir"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_points_refuse_code_in_weights(evil_files, entry):
    r = _run(*ENTRY_POINTS[entry](evil_files))
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    named = evil_files["last"] if "resume" in entry else evil_files["evil"]
    assert str(named) in error_line(r.stderr) and "os.system" in error_line(r.stderr), r.stderr[-3000:]
    assert not evil_files["marker"].exists()


@pytest.mark.slow
def test_entry_point_refuses_code_in_dataset_yaml_and_traceback_on_request(evil_files, tmp_path):
    marker = tmp_path / "pwned"
    script = tmp_path / "fetch.py"
    script.write_text(f"open({str(marker)!r}, 'w')\n")
    f = _dataset_yaml(tmp_path / "evil_data.yaml", str(script), tmp_path / "missing")
    r = _run("val.py", "--weights", evil_files["clean"], "--data", f)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(f) in error_line(r.stderr)
    assert not marker.exists()
    r = _run("val.py", "--weights", evil_files["clean"], "--data", f, env={"YOLOV5KD_TRACEBACK": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and not marker.exists()


def test_weights_with_a_user_block_load_through_the_users_cfg(tmp_path, monkeypatch):
    (tmp_path / "trust_user_blocks.py").write_text(
        "import torch.nn as nn\n\n\nclass Twice(nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    d = copy.deepcopy(TINY)
    d["head"].insert(0, [-1, 1, "trust_user_blocks.Twice", []])
    d["head"][-1][0] = [13, 10, 7]
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump(d))
    f = save_checkpoint(make_checkpoint(DetectionModel(cfg, nc=2)), tmp_path / "mine.pt")
    with pytest.raises(CheckpointError, match="--cfg"):
        load_model(f)  # the stored YAML names a dotted path: never imported from the weights
    assert type(load_model(f, cfg=cfg).model[7]).__name__ == "Twice"
    import detect
    import export
    import val

    assert val.parse_opt(["--cfg", str(cfg)]).cfg == str(cfg)
    assert detect.parse_opt(["--cfg", str(cfg)]).cfg == export.parse_opt(["--cfg", str(cfg)]).cfg == str(cfg)

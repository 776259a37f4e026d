"""Crafted files we read (weights and every field inside them, last.pt for --resume, dataset YAMLs, artifact
metadata): each is one error naming the file and the field, promptly, from every entry point that reads it."""

import copy
import math
import time

import pytest
import torch

from fuzz_util import assert_clear_error, run_entry, tiny_world
from utils.checkpoint import CheckpointError, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from utils.dataset_yaml import check_dataset
from utils.limits import STRUCTURE_NODES, LimitError, check_names, check_structure
from utils.optim import smart_optimizer


def shared_bomb(levels=40):
    """A list that pickles (or YAML-aliases) into a few hundred bytes and stands for 2**levels nodes."""
    x = [1, 2]
    for _ in range(levels):
        x = [x, x]
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("fuzz_files"))


def crafted(world, name, edit, resumable=False, opt=None):
    """A checkpoint of the tiny model with ``edit(ckpt)`` applied, saved as ``name`` -> path."""
    model = world["model"]
    ckpt = make_checkpoint(model, ema=model if resumable else None, updates=1 if resumable else None,
                           optimizer=smart_optimizer(model) if resumable else None, epoch=0 if resumable else -1,
                           opt={"data": str(world["data"]), "imgsz": 64, "workers": 0, "epochs": 3,
                                "batch_size": 2, **(opt or {})})
    ckpt = copy.deepcopy(ckpt)
    edit(ckpt)
    return save_checkpoint(ckpt, world["dir"] / name)


def _set(path, value):
    def edit(ckpt):
        *parents, last = path
        d = ckpt
        for k in parents:
            d = d[k]
        d[last] = value(d[last]) if callable(value) else value
    return edit


def _poison(name, fill):
    def edit(ckpt):
        t = ckpt["model"]["state_dict"][name].clone()
        t.view(-1)[0] = fill
        ckpt["model"]["state_dict"][name] = t
    return edit


FIELD_CASES = {  # crafted field -> (edit, the field the error must name)
    "names with a non-int key": (_set(("model", "names"), {0: "a", "x": "b", 2: "c", 3: "d", 4: "e", 5: "f"}),
                                 "model.names"),
    "names that are lists": (_set(("model", "names"), [[1, 2]] * 6), "model.names"),
    "names fewer than nc": (_set(("model", "names"), ["a", "b"]), "model.names"),
    "a NaN weight": (_poison("model.0.conv.weight", math.nan), "model.state_dict"),
    "an inf BN statistic": (_poison("model.0.bn.running_var", math.inf), "model.state_dict"),
    "a meta-device tensor": (_set(("model", "state_dict", "model.0.conv.weight"),
                                  lambda t: torch.empty(t.shape, device="meta")), "model.state_dict"),
    "stride 0": (_set(("model", "stride"), [0.0, 16.0, 32.0]), "model.stride"),
    "stride inf": (_set(("model", "stride"), [8.0, math.inf, 32.0]), "model.stride"),
    "epoch as text": (_set(("epoch",), "3"), "epoch"),
    "best_fitness NaN": (_set(("best_fitness",), math.nan), "best_fitness"),
    "updates -5": (_set(("updates",), -5), "updates"),
    "plugin state a string": (_set(("plugin",), "kd"), "plugin"),
    "stored YAML of shared references": (_set(("model", "yaml", "anchors"), shared_bomb()), "model"),
    "opt of shared references": (_set(("opt",), {"evil": shared_bomb()}), "opt"),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_crafted_checkpoint_field_is_one_error_naming_file_and_field(world, case):
    edit, field = FIELD_CASES[case]
    f = crafted(world, f"field_{abs(hash(case))}.pt", edit)
    t = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        load_model(f)
    assert str(f) in str(e.value) and f"'{field}" in str(e.value), str(e.value)
    assert time.perf_counter() - t < 10  # refused by counting, not by expanding


def test_legitimate_checkpoints_still_load(world, upstream_ckpt):
    assert load_model(world["weights"]).names == {i: n for i, n in enumerate("abcdef")}
    assert load_checkpoint(upstream_ckpt)["model"]["names"][0] == "crazing"


def stored_yaml_edit(change):
    def edit(ckpt):
        change(ckpt["model"]["yaml"])
    return edit


def test_stored_yaml_describing_far_more_compute_than_its_weights_is_refused_before_the_dry_run(world):
    def upsample_tower(y):  # parameter-free layers: the weights' size bounds nothing here
        y["head"][1] = [-1, 1, "nn.Upsample", [None, 256, "nearest"]]

    def pooling_tower(y):
        y["depth_multiple"] = 16.0
        y["backbone"][2][1] = 1000  # C3 repeats -> 16000 bottlenecks

    for change, says in ((upsample_tower, "elements in the dry run"), (pooling_tower, "blocks after depth_multiple")):
        f = crafted(world, "compute.pt", stored_yaml_edit(change))
        t = time.perf_counter()
        with pytest.raises(CheckpointError, match=says) as e:
            load_model(f)
        assert str(f) in str(e.value) and time.perf_counter() - t < 20


def test_check_structure_counts_shared_references_and_depth():
    with pytest.raises(LimitError, match="nodes"):
        check_structure({"a": shared_bomb(30)}, "f.yaml")
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(LimitError, match="deeper"):
        check_structure(deep, "f.yaml")
    assert check_structure({"a": [1, 2, {"b": "c"}]}, "f.yaml") == 8  # keys count too
    assert check_structure(list(range(STRUCTURE_NODES - 1)), "f.yaml") == STRUCTURE_NODES


@pytest.mark.parametrize("names, ok", [
    (["a", "b"], {0: "a", 1: "b"}), ({"0": "a", 1: 2}, {0: "a", 1: "2"}), ({0: "a", "x": "b"}, None),
    ({1: "a"}, None), ({0: True}, None), ("ab", None), ([], None), (["a" * 5000], None), ({"٣": "a"}, None)])
def test_class_names_are_ids_0_to_n_with_short_names(names, ok):
    if ok is None:
        with pytest.raises(LimitError, match="f.pt"):
            check_names(names, "f.pt")
    else:
        assert check_names(names, "f.pt") == ok


# ----------------------------------------------------------------------------- dataset YAMLs
def dataset_yaml(world, name, text):
    f = world["dir"] / name
    f.write_text(f"path: {world['data_dir']}\ntrain: images/train\nval: images/val\n{text}")
    return f


def test_dataset_yaml_alias_bomb_and_absurd_nc_are_refused_in_process(world):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    f = dataset_yaml(world, "bomb.yaml", bomb + "names: *j\n")
    t = time.perf_counter()
    with pytest.raises(ValueError, match="bomb.yaml.*nodes"):
        check_dataset(f)
    assert time.perf_counter() - t < 5
    with pytest.raises(ValueError, match="nc="):
        check_dataset(dataset_yaml(world, "nc.yaml", "nc: 1000000000\n"))
    with pytest.raises(ValueError, match="'names'.*not a class id"):
        check_dataset(dataset_yaml(world, "keys.yaml", "names: {0: a, zero: b}\n"))
    assert check_dataset(world["data"])["names"] == dict(enumerate("abcdef"))


# ----------------------------------------------------------------------------- every entry point, as a user runs it
@pytest.fixture(scope="module")
def bad(world):
    nan = crafted(world, "nan.pt", _poison("model.0.conv.weight", math.nan))
    return {
        "nan": nan,
        "names": crafted(world, "names.pt", FIELD_CASES["names with a non-int key"][0]),
        "bomb": crafted(world, "bomb.pt", FIELD_CASES["stored YAML of shared references"][0]),
        "compute": crafted(world, "compute_cli.pt", stored_yaml_edit(
            lambda y: y["head"].__setitem__(1, [-1, 1, "nn.Upsample", [None, 256, "nearest"]]))),
        "seed": crafted(world, "exp_seed/weights/last.pt", lambda c: None, resumable=True, opt={"seed": "abc"}),
        "patience": crafted(world, "exp_pat/weights/last.pt", lambda c: None, resumable=True, opt={"patience": -1}),
        "optimizer": crafted(world, "exp_opt/weights/last.pt", _set(
            ("optimizer", "state"), {0: {"momentum_buffer": torch.zeros(7)}}), resumable=True),
    }


def cli_cases(w, b):
    gen = dataset_yaml(w, "gen.yaml", "names: [a, b]\ndownload: data/scripts/make_synthetic.py --train 1000000000\n")
    gen.write_text(gen.read_text().replace(str(w["data_dir"]), str(w["dir"] / "not_yet")))
    return {
        "val NaN weights": (("val.py", "--weights", b["nan"], "--data", w["data"], "--img", 64), "val.py",
                            (b["nan"], "model.state_dict")),
        "detect names": (("detect.py", "--weights", b["names"], "--source", w["image"], "--img", 64,
                          "--project", w["dir"]), "detect.py", (b["names"], "model.names")),
        "export bomb": (("export.py", "--weights", b["bomb"], "--img", 64), "export.py", (b["bomb"], "nodes")),
        "val compute": (("val.py", "--weights", b["compute"], "--data", w["data"], "--img", 64), "val.py",
                        (b["compute"], "dry run")),
        "resume seed": (("train.py", "--resume", b["seed"]), "train.py", (b["seed"], "'seed'")),
        "resume patience": (("train.py", "--resume", b["patience"]), "train.py", (b["patience"], "--patience")),
        "resume optimizer": (("train.py", "--resume", b["optimizer"]), "train.py", (b["optimizer"], "'optimizer'")),
        "download bounds": (("val.py", "--weights", w["weights"], "--data", gen, "--img", 64), "val.py",
                            (gen, "--train")),
    }


CLI = ["val NaN weights", "detect names", "export bomb", "val compute", "resume seed", "resume patience",
       "resume optimizer", "download bounds"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI)
def test_entry_point_gives_one_line_naming_file_and_field(world, bad, case):
    args, prog, names = cli_cases(world, bad)[case]
    r = run_entry(*args)
    assert_clear_error(r, prog, *names)
    if case == "download bounds":
        assert not (world["dir"] / "not_yet").exists()  # the generator refused before writing anything


@pytest.mark.slow
def test_onnx_metadata_out_of_range_is_named(world):
    onnx_mod = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    r = run_entry("export.py", "--weights", world["weights"], "--include", "onnx", "--img", 64)
    assert r.returncode == 0, r.stderr[-2000:]
    model = onnx_mod.load(str(world["weights"].with_suffix(".onnx")))
    for field, value in (("stride", "inf"), ("names", "{0: [[['a']]]}")):
        m = copy.deepcopy(model)
        for p in m.metadata_props:
            if p.key == field:
                p.value = value
        f = world["dir"] / f"meta_{field}.onnx"
        onnx_mod.save(m, str(f))
        r = run_entry("val.py", "--weights", f, "--data", world["data"], "--img", 64)
        assert_clear_error(r, "val.py", f, f"'{field}'")

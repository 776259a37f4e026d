"""val.py and detect.py end to end on tiny generated data, and val.py against upstream's table."""

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "fixtures" / "upstream_yolov5s_neu224.pt"
NEU_VAL = SHARED / "datasets" / "NEU-DET" / "images" / "val"

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A random-init yolov5n (width 0.25) checkpoint in our format, nc=2."""
    from models.yolo import DetectionModel
    from utils.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = DetectionModel(str(ROOT / "models" / "yolov5n.yaml"), nc=2)
    model.names = {0: "dent", 1: "scratch"}
    f = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(make_checkpoint(model), f)
    return f


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """4 images (64-96 px) with 1-2 boxes each, as a dataset YAML."""
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i, (h, w) in enumerate([(64, 64), (96, 64), (64, 96), (80, 80)]):
        cv2.imwrite(str(root / "images" / "val" / f"{i}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        rows = [f"{i % 2} 0.5 0.5 0.4 0.3"] + ([f"{(i + 1) % 2} 0.25 0.3 0.2 0.2"] if i % 2 else [])
        (root / "labels" / "val" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    yaml = root / "tiny.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n  0: dent\n  1: scratch\n")
    return yaml


def test_val_hybrid_labels_give_top_map_and_outputs(tiny_weights, tiny_dataset, tmp_path):
    import val

    # --save-hybrid adds the labels as conf-1 predictions: every label found exactly, ranked first,
    # so the whole pipeline (letterbox scaling, matching, AP) must reach the protocol's maximum
    (mp, mr, map50, map_, *losses), maps, speed = val.run(
        tiny_dataset, weights=tiny_weights, batch_size=2, imgsz=64, save_hybrid=True, save_txt=True,
        save_json=True, project=tmp_path, name="v", workers=0)
    assert map50 == pytest.approx(0.995, abs=1e-6) and map_ == pytest.approx(0.995, abs=1e-6)
    assert mr == pytest.approx(1.0) and maps.shape == (2,)
    assert len(losses) == 3 and len(speed) == 3
    out = tmp_path / "v"
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "val_batch0_labels.jpg",
              "val_batch0_pred.jpg", "ground_truth.json"):
        assert (out / f).is_file(), f
    rows = (out / "labels" / "1.txt").read_text().split()
    assert len(rows) >= 10  # the two labels at least, 5 numbers each


def test_val_random_model_scores_low(tiny_weights, tiny_dataset, tmp_path):
    import val

    (mp, mr, map50, map_, *_), maps, _ = val.run(tiny_dataset, weights=str(tiny_weights), batch_size=4, imgsz=64,
                                                 project=tmp_path, name="r", workers=0, plots=False)
    assert 0 <= map_ <= map50 < 0.5


def test_in_memory_validate_agrees_with_val_run(tiny_weights, tiny_dataset, tmp_path):
    """The engine's call (a model and a loader) and val.py's (a weights file) score alike."""
    import val
    from utils.checkpoint import load_model
    from utils.dataloaders import create_dataloader
    from utils.evaluation import validate
    from utils.loss import ComputeLoss

    ref, ref_maps, _ = val.run(tiny_dataset, weights=tiny_weights, batch_size=2, imgsz=64, project=tmp_path,
                               name="ref", workers=0, plots=False)
    model = load_model(tiny_weights).train()
    model.hyp = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0, "cls_pw": 1.0, "obj_pw": 1.0, "fl_gamma": 0.0}
    loader = create_dataloader(str(tiny_dataset.parent / "images" / "val"), 64, 2, 32, pad=0.5, rect=True,
                               workers=0)[0]
    res = validate(model, loader, str(tiny_dataset), compute_loss=ComputeLoss(model), plots=True, save_dir=tmp_path)
    assert res.results[:4] == pytest.approx(ref[:4], abs=2e-3) and res.maps == pytest.approx(ref_maps, abs=2e-3)
    assert all(x > 0 for x in res.results[4:6]) and res.profile["images"] == 4 and len(res.speed) == 3
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "val_batch0_pred.jpg").is_file()


def test_val_class_count_mismatch_is_reported(tiny_weights, tmp_path, tiny_dataset):
    import val

    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_dataset.read_text().replace("  1: scratch\n", "  1: scratch\n  2: pit\n"))
    with pytest.raises(ValueError, match="2 classes"):
        val.run(bad, weights=tiny_weights, imgsz=64, project=tmp_path, workers=0)


def test_detect_writes_annotated_images_labels_crops_csv(tiny_weights, tmp_path):
    import detect

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name, shape in (("a.jpg", (64, 80, 3)), ("b.png", (72, 64, 3))):
        cv2.imwrite(str(src / name), rng.integers(0, 255, shape, dtype=np.uint8))
    (src / "broken.jpg").write_bytes(b"not an image")  # reported and skipped
    save_dir = detect.run(weights=tiny_weights, source=src, imgsz=64, conf_thres=0.0, max_det=3, save_txt=True,
                          save_conf=True, save_crop=True, save_csv=True, project=tmp_path, name="d")
    for name in ("a.jpg", "b.png"):
        out = cv2.imread(str(save_dir / name))
        assert out is not None and out.shape == cv2.imread(str(src / name)).shape
        assert not np.array_equal(out, cv2.imread(str(src / name)))  # boxes were drawn
        rows = np.loadtxt(save_dir / "labels" / f"{Path(name).stem}.txt", ndmin=2)
        assert rows.shape == (3, 6)  # max_det rows: cls, xc, yc, w, h, conf
        assert np.all((rows[:, 1:5] >= 0) & (rows[:, 1:5] <= 1)) and set(rows[:, 0]) <= {0, 1}
    assert not (save_dir / "broken.jpg").exists()
    with open(save_dir / "predictions.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["Image Name", "Prediction", "Confidence"] and len(table) == 1 + 6
    assert {r[1] for r in table[1:]} <= {"dent", "scratch"}
    assert any((save_dir / "crops").rglob("*.jpg"))


def test_detect_cli_flags():
    import detect

    opt = detect.parse_opt(["--weights", "x.pt", "--img", "224", "--classes", "0", "2", "--nosave"])
    assert opt.imgsz == [224, 224] and opt.classes == [0, 2] and opt.nosave
    assert opt.conf_thres == 0.25 and opt.iou_thres == 0.45 and opt.max_det == 1000


def _parse_table(text):
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.e-]+)\s+([\d.e-]+)\s*$", line)
        if m:
            rows[m.group(1)] = [float(x) for x in m.groups()[1:]]
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not (FIXTURE.is_file() and NEU_VAL.is_dir()), reason="../shared fixture or NEU-DET absent")
def test_reproduces_upstream_table(tmp_path):
    """Upstream's val.py on the fixture (see ../shared/fixtures/README.md)."""
    import logging
    import shutil

    import val
    from utils.general import LOGGER

    weights = tmp_path / FIXTURE.name
    shutil.copy(FIXTURE, weights)  # read-only source: nothing may be written beside it
    expected = {"all": (360, 843, 0.557, 0.66, 0.608, 0.271), "crazing": (360, 128, 0.38, 0.516, 0.378, 0.0919),
                "inclusion": (360, 248, 0.521, 0.734, 0.658, 0.294), "patches": (360, 147, 0.721, 0.925, 0.892, 0.483),
                "pitted_surface": (360, 85, 0.704, 0.682, 0.702, 0.396),
                "rolled-in_scale": (360, 113, 0.488, 0.439, 0.443, 0.143),
                "scratches": (360, 122, 0.53, 0.664, 0.573, 0.22)}
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        (mp, mr, map50, map_, *_), maps, _ = val.run(ROOT / "data" / "NEU-DET.yaml", weights=weights, batch_size=32,
                                                     imgsz=224, project=tmp_path, workers=2, plots=False)
    finally:
        LOGGER.removeHandler(handler)
    assert map50 == pytest.approx(0.608, abs=0.005) and map_ == pytest.approx(0.271, abs=0.005)
    table = _parse_table("\n".join(lines))
    assert set(table) == set(expected)
    for name, (imgs, inst, p, r, m50, m) in expected.items():
        got = table[name]
        assert got[:2] == [imgs, inst], name
        assert got[4] == pytest.approx(m50, abs=0.006), name
        assert got[5] == pytest.approx(m, abs=0.006), name
        assert got[2] == pytest.approx(p, abs=0.03) and got[3] == pytest.approx(r, abs=0.03), name


def test_val_drops_out_of_range_class_rows_naming_the_file(tiny_weights, tiny_dataset, tmp_path, caplog_yolo):
    """val.py on its own (not only training) drops class ids >= nc per file and still scores the rest."""
    import shutil

    import val

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset.parent, root)
    bad = root / "labels" / "val" / "0.txt"
    bad.write_text(bad.read_text() + "17 0.5 0.5 0.1 0.1\n")
    data = root / "tiny.yaml"
    data.write_text(tiny_dataset.read_text().replace(str(tiny_dataset.parent), str(root)))
    (_, _, map50, _, *_), maps, _ = val.run(data, weights=str(tiny_weights), batch_size=4, imgsz=64,
                                            project=tmp_path, name="oor", workers=0, plots=False, save_hybrid=True)
    assert map50 == pytest.approx(0.995, abs=1e-6) and maps.shape == (2,)
    lines = caplog_yolo.text.splitlines()
    assert sum("0.txt" in line and "[17]" in line for line in lines) == 1, caplog_yolo.text


def test_validate_in_bf16_scores_like_float32(tmp_path):
    """The engine's per-epoch validation of a bf16 run (autocast, boxes decoded in float32): the trained
    fixture scores within 0.01 mAP of float32 on 64 NEU-DET val images, on a fused copy and the unfused model."""
    from utils.checkpoint import load_model
    from utils.dataloaders import create_dataloader
    from utils.evaluation import validate
    from utils.torch_utils import fused_copy

    if not FIXTURE.exists():
        pytest.skip("no ../shared fixture")
    (tmp_path / "val.txt").write_text("\n".join(str(p) for p in sorted(NEU_VAL.glob("*.jpg"))[::6][:64]) + "\n")
    data = {"nc": 6, "names": dict(enumerate("abcdef")), "val": str(tmp_path / "val.txt")}
    loader = create_dataloader(data["val"], 224, 32, 32, pad=0.5, rect=True, workers=0)[0]
    model = load_model(FIXTURE)
    fp32 = validate(model, loader, data).results
    bf16 = validate(fused_copy(model), loader, data, autocast_dtype=torch.bfloat16).results
    assert fp32[2] > 0.3  # a trained model: the comparison means something
    assert bf16[2] == pytest.approx(fp32[2], abs=0.01) and bf16[3] == pytest.approx(fp32[3], abs=0.01)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the copy was fused, not the model


def test_ensemble_runs_each_member_with_test_time_augmentation(tiny_weights):
    """Ensemble(..., augment=True): every PyTorch member's own TTA output (float32), concatenated."""
    from utils.backends import Ensemble
    from utils.checkpoint import load_model

    ensemble = Ensemble([tiny_weights, tiny_weights], torch.device("cpu"), False)
    im = torch.rand(1, 3, 64, 64)
    model = load_model(tiny_weights, fuse=True)
    with torch.no_grad():
        ref = model(im, augment=True)[0]
    out = ensemble(im, augment=True)
    assert out.dtype == torch.float32 and out.shape[1] == 2 * ref.shape[1] > ensemble(im).shape[1]
    assert torch.allclose(out, torch.cat((ref, ref), 1), atol=1e-4)

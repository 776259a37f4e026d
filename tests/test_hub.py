"""hubconf.py / utils.deploy.hub: torch.hub.load(..., source="local") on a .pt or an export, images as they come."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.test_export import tiny_weights  # noqa: F401  (the fixture)
from utils.cli import UserError

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    model = torch.hub.load(str(ROOT), "custom", path=str(path), source="local")
    model.conf = 0.0  # random weights: keep every box, so there is something to check
    model.max_det = 5
    return model


def test_hub_takes_paths_pil_and_arrays_and_scales_boxes(tiny_weights, tmp_path):
    from PIL import Image

    model = load(tiny_weights)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)
    f = tmp_path / "a.jpg"
    cv2.imwrite(str(f), rgb[:, :, ::-1])
    res = model([str(f), Image.fromarray(rgb), rgb], size=64)
    assert len(res) == 3 and [p.shape[1] for p in res.xyxy] == [6, 6, 6]
    for p in res.xyxy:
        assert 0 < len(p) <= 5
        assert (p[:, [0, 2]] >= 0).all() and (p[:, [0, 2]] <= 80).all() and (p[:, [1, 3]] <= 50).all()
    torch.testing.assert_close(res.xyxy[1], res.xyxy[2])  # PIL and its array are the same image
    torch.testing.assert_close(res.xyxyn[2][:, 0], res.xyxy[2][:, 0] / 80)
    torch.testing.assert_close(res.xywh[2][:, 2], res.xyxy[2][:, 2] - res.xyxy[2][:, 0])
    assert str(res).splitlines()[0].startswith("image 1/3: 50x80 ")
    out = res.save(save_dir=tmp_path / "det")
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "image1.jpg", "image2.jpg"]
    assert cv2.imread(str(out / "a.jpg")).shape == (50, 80, 3)


def test_hub_runs_an_onnx_export_like_the_pt(tiny_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    import export

    w = tmp_path / "best.pt"
    w.write_bytes(tiny_weights.read_bytes())
    onnx_file = export.run(weights=w, imgsz=[64], include=["onnx"])[0]
    im = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a, b = load(w)(im, size=64), load(onnx_file)(im, size=64)
    torch.testing.assert_close(a.xyxy[0][:, :5], b.xyxy[0][:, :5], atol=0.05, rtol=1e-3)


def test_hub_refuses_urls_and_bad_arrays(tiny_weights):
    model = load(tiny_weights)
    with pytest.raises(UserError, match="URLs are not fetched"):
        model("https://example.com/a.jpg")
    with pytest.raises(UserError, match="shape"):
        model(np.zeros((4, 4, 7), np.uint8))


def test_pandas_tables_or_a_clear_message(tiny_weights):
    res = load(tiny_weights)(np.zeros((64, 64, 3), np.uint8), size=64)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install pandas"):
            res.pandas()
        return
    df = res.pandas().xyxy[0]
    assert list(df.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(df) == len(res.xyxy[0])

"""ONNX export and the inference backend: outputs equal PyTorch, metadata round trip, static-shape guard."""

import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import export  # noqa: E402
from tests.test_checkpoint import tiny_model  # noqa: E402
from utils.backends import InferenceBackend, parse_onnx_metadata  # noqa: E402
from utils.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402


def assert_close(a, b, im, atol=1e-4):
    """Scores compared as they are, boxes in units of the input size (float32 pixels lose digits at ~1e3)."""
    h, w = im.shape[2:]
    scale = torch.tensor([w, h, w, h] + [1.0] * (a.shape[-1] - 4))
    err = ((a - b) / scale).abs().max().item()
    assert err < atol, f"max normalised difference {err:.2e}"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny trained-looking checkpoint (random weights, perturbed BN) saved in our format."""
    model = tiny_model(nc=3)
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    model.names = {0: "cat", 1: "dog's", 2: "bird"}
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("w") / "best.pt")


def test_onnx_matches_pytorch_static(tiny_weights):
    files = export.run(weights=tiny_weights, imgsz=[96], include=["onnx"])
    assert files == [tiny_weights.with_suffix(".onnx")] and files[0].is_file()
    pt, ox = InferenceBackend(tiny_weights), InferenceBackend(files[0])
    assert (pt.pt, pt.onnx, ox.pt, ox.onnx) == (True, False, False, True)
    assert ox.stride == pt.stride == 32
    assert ox.names == pt.names == {0: "cat", 1: "dog's", 2: "bird"}
    torch.manual_seed(0)
    x = torch.rand(1, 3, 96, 96)
    y_pt, y_ox = pt(x), ox(x)
    assert y_ox.shape == y_pt.shape == (1, 3 * (12 * 12 + 6 * 6 + 3 * 3), 8)
    assert_close(y_ox, y_pt, x)
    with pytest.raises(ValueError, match="static ONNX"):
        ox(torch.rand(1, 3, 64, 64))
    ox.warmup(96)


def test_onnx_dynamic_shapes_match_pytorch(tiny_weights, tmp_path):
    w = tmp_path / "dyn.pt"
    w.write_bytes(tiny_weights.read_bytes())
    export.main(export.parse_opt(["--weights", str(w), "--img", "64", "--dynamic"]))
    pt, ox = InferenceBackend(w), InferenceBackend(w.with_suffix(".onnx"))
    torch.manual_seed(1)
    for shape in [(2, 3, 128, 96), (1, 3, 64, 160)]:
        x = torch.rand(*shape)
        y_pt, y_ox = pt(x), ox(x)
        assert y_ox.shape == y_pt.shape
        assert_close(y_ox, y_pt, x)


def test_export_rejects_half_on_cpu_and_unknown_format(tiny_weights):
    with pytest.raises(ValueError, match="CUDA"):
        export.run(weights=tiny_weights, imgsz=[64], half=True, device="cpu")
    with pytest.raises(ValueError, match="tflite"):
        export.run(weights=tiny_weights, imgsz=[64], include=["tflite"])


def test_metadata_names_are_parsed_not_evaluated():
    stride, names = parse_onnx_metadata({"stride": "32", "names": "{0: 'a', 1: 'b'}"})
    assert (stride, names) == (32, {0: "a", 1: "b"})
    with pytest.raises(ValueError, match="names"):
        parse_onnx_metadata({"names": "__import__('os').system('true')"}, "m.onnx")


def test_backend_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported weights format"):
        InferenceBackend(tmp_path / "model.tflite")


def test_val_gives_same_map_for_pt_and_onnx(tmp_path):
    """The upstream-trained fixture and its ONNX export score the same mAP on 24 NEU-DET val images."""
    import shutil

    import val
    from tests.conftest import NEU_DET, UPSTREAM_CKPT

    if not (UPSTREAM_CKPT.is_file() and (NEU_DET / "images" / "val").is_dir()):
        pytest.skip("../shared fixture or NEU-DET absent")
    weights = tmp_path / "neu.pt"
    shutil.copy(UPSTREAM_CKPT, weights)  # never write next to ../shared
    onnx_file = export.run(weights=str(weights), imgsz=(224, 224), dynamic=True)[0]
    images = sorted((NEU_DET / "images" / "val").glob("*.jpg"))[::15]
    listing = tmp_path / "val.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    data = {"path": str(tmp_path), "train": str(listing), "val": str(listing), "nc": 6,
            "names": {i: n for i, n in enumerate(["crazing", "inclusion", "patches", "pitted_surface",
                                                  "rolled-in_scale", "scratches"])}}
    scores = []
    for w in (weights, onnx_file):
        (mp, mr, map50, map5095, *_), _, _ = val.run(data, weights=str(w), batch_size=8, imgsz=224, device="cpu",
                                                     workers=0, project=tmp_path / "val", plots=False)
        scores.append((map50, map5095))
    assert scores[0][0] > 0.2, "the fixture should detect defects"
    assert scores[0] == pytest.approx(scores[1], abs=2e-3)

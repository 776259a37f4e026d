"""Models: upstream-exact sizes, YAML parsing by name, Detect outputs, fuse, attention blocks, torch utils."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.attention import CA, CBAM, SE  # noqa: E402
from models.common import Conv  # noqa: E402
from models.yolo import Detect, DetectionModel, register_block  # noqa: E402
from utils.general import yaml_load  # noqa: E402
from utils.torch_utils import scale_img, select_device  # noqa: E402

MODELS = ROOT / "models"
SPEC_PARAMS = {  # SPEC.md: upstream parameter counts (unfused)
    80: {"n": 1872157, "s": 7235389, "m": 21190557, "l": 46563709, "x": 86749405},
    20: {"n": 1790977, "s": 7073569, "m": 20948097, "l": 46240609, "x": 86345665},
    6: {"n": 1772035, "s": 7035811, "m": 20891523, "l": 46165219, "x": 86251459},
}
SPEC_KEYS = {"n": 349, "s": 349, "m": 481, "l": 613, "x": 745}
PIXEL_ANCHORS = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                             dtype=torch.float32).view(3, 3, 2)


def meta_model(cfg, nc=None):
    """Build on the meta device: exact shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return DetectionModel(cfg, nc=nc)


def small_dict(cfg, nc=3):
    """The YAML's own wiring at a cheap scale (depth 0.33, width 0.25)."""
    d = yaml_load(MODELS / cfg)
    d.update(nc=nc, depth_multiple=0.33, width_multiple=0.25)
    return d


@pytest.mark.parametrize("nc", [80, 20, 6])
@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_parameter_and_state_dict_counts_match_upstream(size, nc):
    m = meta_model(f"yolov5{size}.yaml", nc=nc)
    assert sum(p.numel() for p in m.parameters()) == SPEC_PARAMS[nc][size]
    sd = m.state_dict()
    assert len(sd) == SPEC_KEYS[size]
    assert sd["model.24.m.0.weight"].shape[0] == 3 * (nc + 5)
    assert sd["model.24.anchors"].shape == (3, 3, 2)
    assert not any("grid" in k or "stride" in k for k in sd)


def test_named_keys_and_shapes_yolov5s():
    sd = meta_model("yolov5s.yaml").state_dict()
    assert sd["model.0.conv.weight"].shape == (32, 3, 6, 6)
    assert sd["model.0.bn.num_batches_tracked"].shape == ()
    assert sd["model.2.m.0.cv1.conv.weight"].shape == (32, 32, 1, 1)
    assert sd["model.9.cv2.conv.weight"].shape == (512, 1024, 1, 1)  # SPPF: 4 x 256 -> 512
    assert sd["model.24.m.2.weight"].shape == (255, 512, 1, 1)
    assert sd["model.24.m.0.bias"].shape == (255,)


def test_mobilenetv3_parameter_count():
    m = meta_model("mobilenetv3small_yolo5s.yaml")
    assert m.nc == 6
    assert sum(p.numel() for p in m.parameters()) == 3561859


@pytest.fixture(scope="module")
def v5n():
    torch.manual_seed(0)
    return DetectionModel("yolov5n.yaml", nc=3)


def test_strides_anchors_and_bias_init(v5n):
    det = v5n.model[-1]
    assert isinstance(det, Detect)
    assert v5n.stride.tolist() == [8.0, 16.0, 32.0]
    assert torch.allclose(det.anchors, PIXEL_ANCHORS / v5n.stride.view(-1, 1, 1))
    assert v5n.names == {0: "0", 1: "1", 2: "2"} and v5n.yaml["nc"] == 3
    b = det.m[0].bias.view(3, -1).detach()  # P3: obj bias log(8 / 80^2) on top of PyTorch's small uniform init
    assert (b[:, 4] < -5).all() and (b[:, 5:] < -0.5).all()


def test_reversed_anchor_order_is_flipped():
    d = yaml_load(MODELS / "yolov5n.yaml")
    d["anchors"] = d["anchors"][::-1]
    m = DetectionModel(d, nc=2)
    assert torch.allclose(m.model[-1].anchors, PIXEL_ANCHORS / m.stride.view(-1, 1, 1))


def test_train_and_eval_outputs_and_decoding(v5n):
    x = torch.rand(2, 3, 96, 64)
    v5n.train()
    out = v5n(x)
    assert [tuple(o.shape) for o in out] == [(2, 3, 12, 8, 8), (2, 3, 6, 4, 8), (2, 3, 3, 2, 8)]
    v5n.eval()
    with torch.no_grad():
        dec, raw = v5n(x)
    assert dec.shape == (2, 3 * (12 * 8 + 6 * 4 + 3 * 2), 8)
    # cell (row 5, col 3) of anchor 1 at P3, decoded by the SPEC formula
    p = raw[0][1, 1, 5, 3].sigmoid()
    cx = (2 * p[0] - 0.5 + 3) * 8
    cy = (2 * p[1] - 0.5 + 5) * 8
    w = (2 * p[2]) ** 2 * PIXEL_ANCHORS[0, 1, 0]
    idx = 1 * 12 * 8 + 5 * 8 + 3
    assert torch.allclose(dec[1, idx, :4], torch.stack([cx, cy, w, dec[1, idx, 3]]), atol=1e-4)
    assert torch.allclose(dec[1, idx, 4:], p[4:], atol=1e-6)
    v5n.train()


def test_tta_output(v5n):
    v5n.eval()
    with torch.no_grad():
        y, none = v5n(torch.rand(1, 3, 64, 64), augment=True)
    v5n.train()
    assert none is None and y.shape[0] == 1 and y.shape[-1] == 8 and torch.isfinite(y).all()


@pytest.mark.parametrize("cfg", sorted(p.name for p in MODELS.glob("*.yaml")))
def test_every_yaml_builds_forward_backward(cfg):
    torch.manual_seed(0)
    m = DetectionModel(small_dict(cfg))
    out = m(torch.rand(2, 3, 64, 64))
    assert len(out) == 3 and out[0].shape == (2, 3, 8, 8, 8)
    sum(o.float().mean() for o in out).backward()
    assert all(p.grad is not None for p in m.parameters())


def _settle_bn(m, steps=3):
    """Give BatchNorm layers non-trivial running statistics."""
    m.train()
    with torch.no_grad():
        for _ in range(steps):
            m(torch.rand(2, 3, 64, 64) * 2)
    m.eval()


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "mobilenetv3small_yolo5s.yaml", "yolov5m-ca.yaml"])
def test_fuse_keeps_outputs(cfg):
    torch.manual_seed(0)
    m = DetectionModel(small_dict(cfg))
    _settle_bn(m)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x)[0]
        n_bn = sum(isinstance(k, nn.BatchNorm2d) for k in m.modules())
        m.fuse()
        after = m(x)[0]
    assert n_bn > 0 and not any(isinstance(k, nn.BatchNorm2d) for k in m.modules())
    assert torch.allclose(before, after, atol=1e-4)


def test_fused_copy_leaves_the_training_model_alone():
    from utils.torch_utils import fused_copy

    torch.manual_seed(0)
    v5n = DetectionModel(small_dict("yolov5n.yaml"))
    _settle_bn(v5n)
    x = torch.rand(2, 3, 64, 64)
    before = {k: v.clone() for k, v in v5n.state_dict().items()}
    copy = fused_copy(v5n)
    with torch.no_grad():
        assert torch.allclose(copy(x)[0], v5n(x)[0], atol=1e-4)
    assert not any(isinstance(k, nn.BatchNorm2d) for k in copy.modules())
    assert any(isinstance(k, nn.BatchNorm2d) for k in v5n.modules())
    assert all(torch.equal(v, before[k]) for k, v in v5n.state_dict().items())
    assert all(p.requires_grad for p in v5n.parameters())


def test_bf16_autocast_decodes_boxes_in_float32(v5n):
    """Under bf16 autocast the convs run in bf16 but box centres/sizes are decoded in float32 (bf16 keeps
    8 bits: a coordinate near 200 px would be rounded to 1 px)."""
    v5n.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dec, raw = v5n(x)
    v5n.train()
    assert raw[0].dtype == torch.bfloat16 and dec.dtype == torch.float32
    p = raw[0][0, 2, 30, 29].float().sigmoid()  # P3 cell (row 30, col 29) of anchor 2
    cx = (2 * p[0] - 0.5 + 29) * 8
    idx = 2 * 32 * 32 + 30 * 32 + 29
    assert dec[0, idx, 0].item() == pytest.approx(cx.item(), abs=1e-3)


def test_gflops_yolov5s():
    _, n_p, _, gflops = DetectionModel("yolov5s.yaml").info(img_size=640)
    assert n_p == 7235389
    assert abs(gflops - 16.5) <= 0.2


def test_layer_metadata_and_roles(v5n):
    assert [m.i for m in v5n.model] == list(range(25))
    assert v5n.model[12].f == [-1, 6] and v5n.model[4].type == "models.common.C3"
    assert v5n.save == [4, 6, 10, 14, 17, 20, 23]
    roles = v5n.layer_roles()
    assert roles[9] == {"i": 9, "type": "SPPF", "section": "backbone", "c_out": 256}
    assert roles[17]["section"] == "head" and roles[17]["c_out"] == 64
    assert roles[12]["c_out"] == 128 + 128  # Concat sums its inputs (layers 11 and 6)


@register_block
class TinyGate(nn.Module):
    """Test-only block known to the parser only through @register_block (channel-preserving torch module)."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x):
        return x * self.scale.sigmoid()


def _insert_after(d, layer, row):
    """Insert a row after backbone layer `layer` of a v5 dict and shift later indices (what a user edits)."""
    nb = len(d["backbone"])
    d["backbone"].insert(layer + 1, row)
    shift = (lambda j: j + 1 if j > layer else j)
    for r in d["head"]:
        if isinstance(r[0], list):
            r[0] = [j if j < 0 else shift(j) for j in r[0]]
    assert len(d["backbone"]) == nb + 1
    return d


@pytest.mark.parametrize("row", [[-1, 1, "SE", [1024, 8]], [-1, 1, "TinyGate", [0.5]]])
def test_inserted_block_builds_without_parser_changes(row):
    d = _insert_after(yaml_load(MODELS / "yolov5n.yaml"), 9, row)
    m = DetectionModel(d, nc=2)
    assert type(m.model[10]).__name__ == row[2] and m.model[-1].f == [18, 21, 24]
    assert m(torch.rand(1, 3, 64, 64))[0].shape == (1, 3, 8, 8, 7)


def test_block_from_dotted_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_blocks.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from models.common import YamlSpec

        class Double(YamlSpec, nn.Module):
            def __init__(self, c1, c2):
                super().__init__()
                self.proj = nn.Conv2d(c1, c2, 1)

            def forward(self, x):
                return self.proj(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    d = _insert_after(yaml_load(MODELS / "yolov5n.yaml"), 9, [-1, 1, "my_blocks.Double", [1024]])
    cfg = tmp_path / "my_model.yaml"  # the user's own --cfg file: it may import its own blocks
    cfg.write_text(yaml.safe_dump(d))
    m = DetectionModel(cfg, nc=2)
    assert m.layer_roles()[10]["c_out"] == 256 and m.model[10].proj.out_channels == 256
    with pytest.raises(ValueError, match="never imports"):  # the same dict as data (e.g. from a weights file)
        DetectionModel(d, nc=2)


def test_bad_from_index_names_layer_and_line(tmp_path):
    text = (MODELS / "yolov5n.yaml").read_text().replace("[[-1, 6], 1, Concat", "[[-1, 30], 1, Concat")
    bad = tmp_path / "bad_from.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError) as e:
        DetectionModel(bad)
    msg = str(e.value)
    assert "bad_from.yaml" in msg and "layer 12" in msg and "30" in msg
    line = next(i + 1 for i, s in enumerate(text.splitlines()) if "[-1, 30]" in s)
    assert f"line {line}" in msg


def test_channel_mismatch_names_layer():
    d = yaml_load(MODELS / "yolov5n.yaml")
    d["head"].insert(0, [-1, 1, "nn.BatchNorm2d", [77]])  # SPPF gives 256 channels, not 77
    d["head"][-1][0] = [18, 21, 24]
    with pytest.raises(ValueError, match=r"layer 10 = head row 0.*BatchNorm2d"):
        DetectionModel(d)


def test_unknown_module_and_missing_yaml():
    d = yaml_load(MODELS / "yolov5n.yaml")
    d["backbone"][3][2] = "NoSuchBlock"
    with pytest.raises(ValueError, match="layer 3.*NoSuchBlock"):
        DetectionModel(d)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        DetectionModel("nope.yaml")


def test_attention_blocks_channels():
    x = torch.rand(2, 16, 8, 6)
    for block in (SE(16, 16, 4), CBAM(16, 16, 4), CA(16, 16, 32)):
        y = block(x)
        assert y.shape == x.shape and not torch.equal(y, x)
    assert SE(16, 32, 4, need11=True)(x).shape == (2, 32, 8, 6)
    rev = CA(16, 32, 8, need11=True, reverse=True)
    assert rev.conv1.in_channels == 16 and rev(x).shape == (2, 32, 8, 6)
    with pytest.raises(ValueError, match="need11"):
        SE(16, 32, 4)


def test_conv_defaults():
    c = Conv(3, 8, 3, 2)
    assert c.conv.bias is None and c.conv.padding == (1, 1)
    assert c.bn.eps == 1e-3 and c.bn.momentum == 0.03 and isinstance(c.act, nn.SiLU)


def test_select_device_and_scale_img():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            select_device("0")
    img = torch.rand(1, 3, 64, 96)
    out = scale_img(img, 0.83, gs=32)
    assert out.shape == (1, 3, 64, 96) and torch.allclose(out[..., -1, -1], torch.tensor(0.447))
    same = scale_img(img, 0.5, same_shape=True)  # pads back to the original size
    assert same.shape == (1, 3, 64, 96) and torch.allclose(same[..., 40:, :], torch.tensor(0.447))

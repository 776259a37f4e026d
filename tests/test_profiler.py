"""Model profiler: per-layer params/FLOPs/bytes/intensity, roofline PNG and JSON, the depthwise mechanism."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel  # noqa: E402
from utils.profiler import explain_puzzle, profile_model  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

IMG = 64
ANCHORS = [[10, 13, 16, 30, 33, 23]]


def fused(cfg):
    model = DetectionModel(cfg)
    with torch.no_grad():
        return model.fuse().eval()


@pytest.fixture(scope="module")
def nano():
    model = fused("yolov5n.yaml")
    return model, profile_model(model, IMG, repeats=2, warmup=1)


def test_layer_params_sum_to_model(nano):
    model, res = nano
    n_model = sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in res["layers"]) == n_model == res["total"]["params"]
    assert len(res["layers"]) == len(model.model)


def test_layer_flops_sum_matches_model_flops(nano):
    model, res = nano
    total = sum(r["gflops"] for r in res["layers"])
    ref = model_flops(model, IMG)
    assert total > 0 and abs(total / ref - 1) < 0.01


def test_conv_bytes_hand_counted(nano):
    _, res = nano
    r = res["layers"][0]  # fused Conv(3, 16, k=6, s=2, p=2) with bias, 64 px in -> 32 px out
    weights = 16 * 3 * 6 * 6 + 16
    act_in, act_out = 3 * 64 * 64, 16 * 32 * 32
    assert r["type"] == "Conv"
    assert r["weight_bytes"] == weights * 4
    assert r["in_bytes"] == act_in * 4 and r["out_bytes"] == act_out * 4
    assert r["bytes"] == (weights + act_in + act_out) * 4
    macs = 16 * 32 * 32 * 3 * 6 * 6  # thop may add one op per output for the bias
    assert 2 * macs <= r["flops"] <= 2 * (macs + 16 * 32 * 32)


def test_intensity_and_latency(nano):
    _, res = nano
    for r in res["layers"]:
        assert r["intensity"] == pytest.approx(r["flops"] / r["bytes"])
        assert r["latency_ms"] > 0
    t = res["total"]
    assert t["intensity"] == pytest.approx(t["flops"] / t["bytes"])
    assert t["latency_ms"] > 0 and t["achieved_gflops"] == pytest.approx(t["flops"] / t["latency_ms"] / 1e6)


def test_bf16_halves_bytes(nano):
    model, res32 = nano
    res16 = profile_model(fused("yolov5n.yaml"), IMG, dtype="bf16", timing=False)
    assert res16["total"]["bytes"] * 2 == res32["total"]["bytes"]
    assert res16["total"]["flops"] == pytest.approx(res32["total"]["flops"])


def test_cli_writes_roofline_and_json(tmp_path):
    from benchmarks.profile_model import main

    js = tmp_path / "prof.json"
    out = main(["--cfg", "models/yolov5n.yaml", "--img", str(IMG), "--repeats", "1", "--warmup", "0", "--quiet",
                "--roofline", "--peak-gflops", "50", "--peak-gbps", "10", "--json", str(js)])
    png = Path(out["roofline_png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    data = json.loads(js.read_text())
    assert data["peak_gflops"] == 50 and data["peaks_measured"] is False
    layers = data["models"][0]["layers"]
    assert len(layers) == len(DetectionModel("yolov5n.yaml").model)
    assert [r["i"] for r in layers] == list(range(len(layers)))
    assert all({"params", "gflops", "bytes", "intensity", "latency_ms"} <= set(r) for r in layers)


def test_depthwise_has_lower_intensity_than_dense():
    cfg = {"nc": 2, "anchors": ANCHORS, "depth_multiple": 1.0, "width_multiple": 1.0,
           "backbone": [[-1, 1, "Conv", [32, 3, 2]],
                        [-1, 1, "DWConv", [32, 3, 1]],  # 1: depth-wise 3x3, 32 -> 32
                        [-1, 1, "Conv", [32, 3, 1]]],  # 2: dense 3x3, 32 -> 32, same input shape
           "head": [[[2], 1, "Detect", ["nc", "anchors"]]]}
    res = profile_model(fused(cfg), IMG, timing=False)
    dw, dense = res["layers"][1], res["layers"][2]
    assert dw["tags"] == "dw" and dense["tags"] == ""
    assert dw["in_shape"] == dense["in_shape"] and dw["out_shape"] == dense["out_shape"]
    assert dw["bytes"] < dense["bytes"] and dw["flops"] < dense["flops"] / 10
    assert dw["intensity"] < dense["intensity"] / 5


def test_explanation_names_the_memory_bound_layers():
    def fake(gflops, ms, dw_share):
        rows = [{"tags": "dw+se", "flops": gflops * 1e9 * dw_share, "bytes": 1e9 * dw_share, "kernel_bytes": 2e9,
                 "latency_ms": ms * 0.6, "kernels": 40},
                {"tags": "", "flops": gflops * 1e9 * (1 - dw_share), "bytes": 1e7, "kernel_bytes": 2e7,
                 "latency_ms": ms * 0.4, "kernels": 10}]
        rows = [r for r in rows if r["flops"]]  # dw_share 0: a dense-only model
        for r in rows:
            r["intensity"] = r["flops"] / r["bytes"]
        f, b = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
        return {"layers": rows, "total": {"gflops": gflops, "flops": f, "bytes": b, "intensity": f / b,
                                          "latency_ms": ms, "achieved_gflops": f / ms / 1e6, "kernels": 50}}

    small, big = fake(2.0, 30.0, 0.2), fake(16.0, 25.0, 0.0)
    lines = explain_puzzle([("mobile", small), ("dense", big)], ridge=10.0)
    assert len(lines) == 1 and lines[0].startswith("mobile has 8.0x fewer GFLOPs than dense")
    assert "depthwise/SE" in lines[0]
    assert explain_puzzle([("mobile", fake(2.0, 2.0, 0.2)), ("dense", big)]) == []  # proportionally faster

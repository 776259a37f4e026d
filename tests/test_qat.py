"""Quantization-aware fine-tuning (--qat): fake quantization that keeps the model's keys, folds BatchNorm
exactly, passes gradients, and trains end to end with and without a teacher."""

import copy

import pytest
import torch

from models.yolo import DetectionModel
from utils.deploy.qat import QATConv, QATConv2d, RangeObserver, fake_quant_weight, prepare_qat, quantized_modules
from utils.general import ROOT, yaml_load
from tests.test_train_kd import common_args, teacher_file, tiny_data  # noqa: F401  (fixtures)


def tiny_model():
    torch.manual_seed(0)
    d = yaml_load(ROOT / "models" / "yolov5n.yaml")
    d["width_multiple"] = 0.25
    m = DetectionModel(d, nc=2)
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_weight_fake_quant_is_on_a_per_channel_grid():
    w = torch.randn(8, 4, 3, 3)
    q = fake_quant_weight(w)
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    levels = q / scale.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # integers
    assert levels.abs().max() <= 127 + 1e-3
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6  # off by at most half a step
    assert not torch.equal(q, w)


def test_observer_spans_zero_and_follows_slowly():
    o = RangeObserver()
    o(torch.tensor([0.5, 2.0]), training=True)
    assert (o.lo, o.hi) == (0.0, 2.0)
    o(torch.tensor([-1.0, 12.0]), training=True)
    assert o.lo == pytest.approx(-0.01) and o.hi == pytest.approx(2.1)
    before = (o.lo, o.hi)
    o(torch.tensor([100.0]), training=False)  # eval: ranges frozen
    assert (o.lo, o.hi) == before
    assert RangeObserver()(torch.tensor([3.0]), training=False).item() == 3.0  # nothing seen: pass-through


def test_prepare_keeps_keys_and_output_close():
    m = tiny_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)[0]
    keys = list(m.state_dict())
    n = prepare_qat(m)
    assert list(m.state_dict()) == keys  # best.pt stays an ordinary checkpoint
    assert n == len(quantized_modules(m)) and n == sum(isinstance(v, torch.nn.Conv2d) for v in m.modules())
    assert any(isinstance(v, QATConv) for v in m.modules()) and any(isinstance(v, QATConv2d) for v in m.modules())
    m.train()
    with torch.no_grad():
        m(x)  # observers see the activations
        m.eval()
        q = m(x)[0]
    assert not torch.equal(q, ref)
    conf_ref, conf_q = ref[..., 4], q[..., 4]
    assert (conf_q - conf_ref).abs().max() < 0.05, "INT8 simulation far from the float model"
    bn_stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    m.train()
    m(x)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in bn_stats.items()), "BatchNorm statistics must stay frozen"


def test_fused_copy_computes_the_same_quantized_output():
    m = tiny_model()
    prepare_qat(m)
    x = torch.rand(1, 3, 64, 64)
    m.train()
    with torch.no_grad():
        m(x)
    m.eval()
    fused = copy.deepcopy(m).fuse(verbose=False)
    with torch.no_grad():
        a, b = m(x)[0], fused(x)[0]
    assert torch.allclose(a, b, atol=2e-3), (a - b).abs().max()


def test_gradients_pass_straight_through():
    m = tiny_model()
    prepare_qat(m)
    m.train()
    out = m(torch.rand(1, 3, 64, 64))
    sum(o.float().square().mean() for o in out).backward()
    conv = next(v for v in m.modules() if isinstance(v, QATConv))
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0
    assert conv.bn.weight.grad is not None and conv.bn.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("with_teacher", [False, True])
def test_qat_trains_end_to_end(tiny_data, teacher_file, tmp_path, with_teacher):  # noqa: F811
    import train
    import train_kd
    from utils.checkpoint import load_checkpoint, load_model

    args = common_args(tiny_data, tmp_path, "qat") + ["--weights", teacher_file, "--qat", "--hyp",
                                                    str(ROOT / "data/hyps/hyp.qat.yaml")]
    args = [a for a in args if a != "models/yolov5n.yaml" and a != "--cfg"]
    if with_teacher:
        train_kd.main(train_kd.parse_opt(args + ["--teacher_weight", teacher_file]))
    else:
        train.main(train.parse_opt(args=args))
    wdir = tmp_path / "qat" / "weights"
    last = load_checkpoint(wdir / "last.pt")
    plugin = last["plugin"]
    ranges = plugin["plugin_states"][-1]["ranges"] if with_teacher else plugin["ranges"]
    assert len(ranges) > 50 and all(lo <= 0 <= hi and hi > lo for lo, hi in ranges.values())
    model = load_model(wdir / "best.pt")  # a plain float model: export.py --int8 takes it as any other
    assert not any(isinstance(v, (QATConv, QATConv2d)) for v in model.modules())


def test_qat_benchmark_harness_runs_and_resumes(tiny_data, teacher_file, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("openvino", reason="openvino not installed")
    pytest.importorskip("nncf", reason="nncf not installed")
    import json

    from benchmarks import qat as bench

    args = ["--student", teacher_file, "--teacher", teacher_file, "--data", str(tiny_data), "--img", "64",
            "--batch-size", "2", "--workers", "0", "--smoke", "--stages", "ptq", "qat_kd", "--lr0", "0.0005",
            "--out", str(tmp_path / "bench")]
    bench.main(args)
    rows = json.loads((tmp_path / "bench" / "qat.json").read_text())["rows"]
    assert set(rows) == {"ptq", "qat_kd"} and rows["qat_kd"]["epochs"] == 1
    assert all(0 <= r["INT8 mAP50"] <= 1 for r in rows.values())
    assert "lr0: 0.0005" in (tmp_path / "bench" / "hyp.yaml").read_text()
    assert (tmp_path / "bench" / "eval" / "qat_kd" / "best_int8_openvino_model").is_dir()
    capsys.readouterr()
    bench.main(args)  # everything recorded: nothing trains or exports again
    assert capsys.readouterr().out.count("done before") == 2

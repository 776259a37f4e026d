"""--precision: auto picks bf16 on a CPU only when its flags claim bf16 and the probe confirms it is faster."""

import pytest
import torch

from utils.cli import OptionError
from utils.precision import choose_precision, cpu_flags, probe_bf16_speedup, requested_precision


def never_probed():
    raise AssertionError("the probe must not run on a CPU without bf16 flags")


def test_auto_is_fp32_without_bf16_flags_and_never_probes():
    p = choose_precision("auto", "cpu", flags={"avx2", "fma"}, probe=never_probed)
    assert p.name == "fp32" and not p.autocast and "avx512_bf16" in p.reason


@pytest.mark.parametrize("speedup,expected", [(2.7, "bf16"), (1.05, "fp32"), (0.004, "fp32")])
def test_auto_follows_the_probe_where_flags_claim_bf16(speedup, expected):
    p = choose_precision("auto", "cpu", flags={"avx512_bf16"}, probe=lambda: speedup)
    assert p.name == expected and f"{speedup:.2f}x" in p.reason
    assert (p.autocast_dtype == torch.bfloat16) == (expected == "bf16") and not p.grad_scaler


def test_explicit_choices_and_shorthands(monkeypatch):
    monkeypatch.delenv("YOLOV5KD_PRECISION", raising=False)
    assert choose_precision("fp32", "cpu", flags={"amx_bf16"}, probe=never_probed).name == "fp32"
    slow = choose_precision("bf16", "cpu", flags=set(), probe=never_probed)
    assert slow.name == "bf16" and "slower" in slow.reason  # the user's choice, with a warning in the log
    cuda = choose_precision("auto", "cuda")
    assert cuda.name == "fp16" and cuda.grad_scaler and cuda.autocast_dtype == torch.float16
    with pytest.raises(OptionError, match="CUDA"):
        choose_precision("fp16", "cpu", flags=set())
    with pytest.raises(OptionError, match="choose one of"):
        choose_precision("int8", "cpu", flags=set())

    class Opt:
        precision, bf16, fp32 = "auto", False, False

    o = Opt()
    assert requested_precision(o) == "auto"
    o.bf16 = True
    assert requested_precision(o) == "bf16"


def test_cpu_flags_and_probe_run_here(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()
    assert probe_bf16_speedup(size=32, repeats=1) > 0


@pytest.mark.parametrize("flag,expected", [("--bf16", "bf16"), ("--fp32", "fp32")])
def test_engine_trains_in_the_chosen_precision_and_logs_it_once(tmp_path, caplog_yolo, flag, expected):
    from test_engine import make_tiny_data, run_train, train_args

    data = make_tiny_data(tmp_path / "d", n_train=4, n_val=2)
    run_train(train_args(data, tmp_path / "runs", flag, "--noval", epochs=1))
    lines = [r.getMessage() for r in caplog_yolo.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith(f"precision: {expected} ")


def test_auto_can_be_pinned_by_the_environment(monkeypatch):
    class Opt:
        precision, bf16, fp32 = "auto", False, False

    monkeypatch.setenv("YOLOV5KD_PRECISION", "fp32")
    assert requested_precision(Opt()) == "fp32"
    Opt.precision = "bf16"  # an explicit choice is never overridden
    assert requested_precision(Opt()) == "bf16"
    monkeypatch.delenv("YOLOV5KD_PRECISION")
    Opt.precision = "auto"
    assert requested_precision(Opt()) == "auto"

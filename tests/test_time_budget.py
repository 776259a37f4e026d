"""--time HOURS (TimeBudget in the engine), the optional hyp key nbs, and quickstart's stage planning."""

from types import SimpleNamespace

import pytest

from tests.test_engine import load_ckpt, make_tiny_data, run_train, train_args
from utils.cli import OptionError
from utils.engine import Plugin
from utils.stage_plan import Costs, calibrate, epochs_for, split_budget
from utils.stopping import TimeBudget


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny_time"), n_train=4, n_val=2)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_budget_plans_what_fits_counting_end_of_epoch_work():
    clock = FakeClock()
    b = TimeBudget(100 / 3600, clock=clock)
    b.start()
    clock.t = 10.0  # first epoch trained in 10 s, no end-of-epoch cost known yet
    assert b.plan(0) == 10
    b.end_work_started()
    clock.t = 12.0  # its validation + checkpoints took 2 s
    b.end_work_finished()
    clock.t = 22.0
    assert b.plan(1) == 8  # (22 + 2 pending) / 2 = 12 s per epoch -> 100 // 12
    clock.t = 95.0  # a slow machine: never fewer than the epochs already trained
    assert b.plan(1) == 2


def test_budget_of_a_resumed_run_counts_from_its_start_epoch():
    clock = FakeClock()
    b = TimeBudget(50 / 3600, start_epoch=5, clock=clock)
    b.start()
    clock.t = 10.0
    assert b.plan(5) == 10  # epochs 5..9 fit in 50 s


class TenSecondSteps(Plugin):
    """The budget's clock advances 10 s per training step (one step per epoch here: 4 images, batch 4) and
    nothing elsewhere; records the engine's epoch total after each epoch."""

    def __init__(self, monkeypatch):
        self.clock, self.totals = FakeClock(), []
        monkeypatch.setattr("utils.stopping.time", SimpleNamespace(monotonic=self.clock))

    def step_loss(self, imgs, targets, preds):
        self.clock.t += 10.0
        return None, {}

    def on_epoch_end(self, engine, epoch):
        self.totals.append(engine.epochs)
        self.engine = engine


def test_time_overrides_epochs_and_the_lr_schedule_spans_the_epochs_run(tiny_data, tmp_path, monkeypatch):
    steps = TenSecondSteps(monkeypatch)
    save = run_train(train_args(tiny_data, tmp_path, "--time", str(35 / 3600), epochs=50), plugin=steps)
    assert steps.totals == [3, 3, 3]  # 35 s at 10 s an epoch: 3 epochs, not 50
    rows = (save / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
    engine = steps.engine
    assert engine.lf(3) == pytest.approx(engine.hyp["lrf"]) and engine.lf(0) == pytest.approx(1.0)
    assert load_ckpt(save / "weights" / "last.pt")["opt"]["epochs"] == 3


def test_time_must_be_positive(tiny_data, tmp_path):
    with pytest.raises(OptionError, match="--time"):
        run_train(train_args(tiny_data, tmp_path, "--time", "0"))


def test_hyp_nbs_sets_the_accumulation(tiny_data, tmp_path):
    import yaml

    from utils.general import ROOT

    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())

    class Probe(Plugin):
        def setup(self, engine):
            self.accumulate, self.decay = engine.accumulate, engine.hyp["weight_decay"]

    for nbs, batch, accumulate in ((4, 4, 1), (64, 4, 16)):
        hyp_file = tmp_path / f"hyp{nbs}.yaml"
        hyp_file.write_text(yaml.safe_dump({**hyp, "nbs": nbs}))
        probe = Probe()
        run_train(train_args(tiny_data, tmp_path, "--hyp", str(hyp_file), epochs=1, batch=batch, name=f"n{nbs}"),
                  plugin=probe)
        assert probe.accumulate == accumulate
        assert probe.decay == pytest.approx(hyp["weight_decay"] * batch * accumulate / nbs)
    hyp_file.write_text(yaml.safe_dump({**hyp, "nbs": 0}))
    with pytest.raises(OptionError, match="nbs"):
        run_train(train_args(tiny_data, tmp_path, "--hyp", str(hyp_file), epochs=1))


def test_budget_split_bounds_the_students_pair_and_epoch_guesses():
    split = split_budget(600, teacher_share=0.4)
    assert split == {"teacher": 240, "kd": 180}  # the baseline's epochs cost at most the KD student's 180 s
    assert split_budget(600, 0.4, train_teacher=False, baseline=False) == {"teacher": 0.0, "kd": 600}
    costs = Costs(teacher_train=0.03, student_train=0.01, teacher_forward=0.01, student_forward=0.004)
    assert costs.epoch_seconds("kd", 100, 50) == pytest.approx(2.2)
    assert costs.epoch_seconds("baseline", 100, 50) < costs.epoch_seconds("kd", 100, 50)
    assert epochs_for(costs, "teacher", 240, 100, 50) == 68  # 3.5 s an epoch
    assert epochs_for(costs, "teacher", 1, 100, 50) == 1
    slower, k = calibrate(costs, 2.0, 3.0)
    assert k == pytest.approx(1.5) and slower.student_train == pytest.approx(0.015)

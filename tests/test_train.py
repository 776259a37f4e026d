"""train.py end to end: every output file, results.csv header, flags/defaults, determinism by --seed."""

import pytest
import torch

from test_engine import load_ckpt, make_tiny_data, run_train, train_args

UPSTREAM_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                    "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                    "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # 12 train images at batch 2 -> 6 batches (train_batch0-2); 12 val images at batch 4 -> 3 val batches
    return make_tiny_data(tmp_path_factory.mktemp("tiny"), n_train=12, n_val=12)


def test_parser_defaults_match_upstream():
    import train

    o = train.parse_opt(args=[])
    assert (o.weights, o.epochs, o.batch_size, o.imgsz, o.optimizer, o.workers, o.patience, o.freeze, o.seed,
            o.save_period, o.label_smoothing, o.name) == ("", 100, 16, 640, "SGD", 8, 100, [0], 0, -1, 0.0, "exp")
    assert o.hyp.endswith("data/hyps/hyp.scratch-low.yaml") and o.data.endswith("data/synthetic.yaml")
    assert o.project.endswith("runs/train") and o.resume is False and o.cache is None
    o = train.parse_opt(args=["--img", "320", "--resume", "--cache", "--freeze", "0", "1", "2"])
    assert o.imgsz == 320 and o.resume is True and o.cache == "ram" and o.freeze == [0, 1, 2]


def test_evolve_flags_as_upstream_and_bad_resume_refused(tmp_path):
    import train
    from utils.cli import OptionError

    assert train.parse_opt(args=["--evolve"]).evolve == 300 and train.parse_opt(args=[]).evolve is None
    with pytest.raises(OptionError, match="no evolve.csv"):
        train.main(train.parse_opt(args=["--evolve", "2", "--resume_evolve", str(tmp_path), "--cfg", "yolov5n.yaml"]))


def test_end_to_end_outputs(tiny_data, tmp_path):
    args = [a for a in train_args(tiny_data, tmp_path, epochs=2, batch=2) if a != "--noplots"]
    save = run_train(args)
    assert save == tmp_path / "exp"
    expected = ["weights/last.pt", "weights/best.pt", "hyp.yaml", "opt.yaml", "results.csv", "results.png",
                "labels.jpg", "labels_correlogram.jpg", "train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg",
                "confusion_matrix.png", "F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png"]
    expected += [f"val_batch{i}_{k}.jpg" for i in range(3) for k in ("labels", "pred")]
    missing = [f for f in expected if not (save / f).is_file()]
    assert not missing, f"missing outputs: {missing}"
    lines = (save / "results.csv").read_text().strip().splitlines()
    assert [c.strip() for c in lines[0].split(",")] == UPSTREAM_COLUMNS
    assert len(lines) == 3
    row = [float(x) for x in lines[-1].split(",")]
    assert all(v == v for v in row) and row[1] > 0  # no NaN, a box loss was logged
    ck = load_ckpt(save / "weights/best.pt")
    assert ck["epoch"] == -1 and ck["model"]["names"] == {0: "box", 1: "blob"} and ck["model"]["nc"] == 2
    # second run goes to exp2
    save2 = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1, batch=2))
    assert save2.name == "exp2"


def _first_losses(save):
    return (save / "results.csv").read_text().strip().splitlines()[1].split(",")[1:4]


def test_determinism_with_seed(tiny_data, tmp_path):
    a = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1, name="a"))
    b = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1, name="b"))
    c = run_train(train_args(tiny_data, tmp_path, "--noval", epochs=1, name="c") + ["--seed", "1"])
    assert _first_losses(a) == _first_losses(b)
    sa, sb, sc = (load_ckpt(x / "weights/last.pt")["model"]["state_dict"] for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())

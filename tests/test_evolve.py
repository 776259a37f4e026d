"""--evolve: upstream's genetic search through the one engine, KD weights as genes, resumable."""

import numpy as np
import pytest

from utils.evolve import HYP_LIMITS, RESULT_COLUMNS, Gene, hyp_genes, mutate, read_population, select_parent
from utils.general import ROOT, yaml_load

HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"


def test_mutations_stay_inside_the_limits_and_always_change_something():
    genes = hyp_genes(yaml_load(HYP))
    assert [g.name for g in genes] == [k for k in HYP_LIMITS if k in yaml_load(HYP)]
    rng = np.random.default_rng(0)
    extremes = [[g.low for g in genes], [g.high for g in genes], [g.high * 10 + 1 for g in genes]]
    for start in extremes + [[yaml_load(HYP)[g.name] for g in genes]] * 50:
        out = mutate(start, genes, rng)
        assert all(g.low <= v <= g.high for g, v in zip(genes, out))
    fixed = [Gene("iou_t", 0, 0.1, 0.7)]  # gain 0: upstream never mutates it
    assert mutate([0.2], fixed, rng) == [0.2]
    moved = sum(mutate([yaml_load(HYP)[g.name] for g in genes], genes, np.random.default_rng(s)) !=
                [round(yaml_load(HYP)[g.name], 5) for g in genes] for s in range(20))
    assert moved == 20


def test_parent_is_drawn_among_the_fittest():
    genes = [Gene("lr0", 1, 1e-5, 0.1)]
    rows = np.zeros((8, len(RESULT_COLUMNS) + 1))
    rows[:, 3] = np.arange(8) / 10  # mAP50-95 rising with the row
    rows[:, -1] = np.arange(8)  # gene value = row index
    picks = {float(select_parent(rows, genes, np.random.default_rng(s))[0]) for s in range(200)}
    assert picks <= {3.0, 4.0, 5.0, 6.0, 7.0} and 7.0 in picks  # the 5 fittest only


def _tiny(tmp_path):
    from test_engine import make_tiny_data

    return make_tiny_data(tmp_path / "d", n_train=4, n_val=2)


@pytest.mark.slow
def test_evolve_two_generations_then_resume_and_train_with_the_result(tmp_path):
    import train
    from test_engine import run_train, train_args

    data = _tiny(tmp_path)
    args = train_args(data, tmp_path / "evo", "--evolve", "1", epochs=1)
    best = train.main(train.parse_opt(args=args))
    folder = best.parent
    assert folder.parent == tmp_path / "evo"
    genes = hyp_genes(yaml_load(HYP))
    assert len(read_population(folder / "evolve.csv", genes)) == 1
    # an interrupted search (1 of 2 generations done) continues in the same folder
    args = train_args(data, tmp_path / "evo", "--evolve", "2", "--resume_evolve", str(folder), epochs=1)
    assert train.main(train.parse_opt(args=args)) == best
    csv = folder / "evolve.csv"
    header = [h.strip() for h in csv.read_text().splitlines()[0].split(",")]
    assert header[:7] == list(RESULT_COLUMNS) and header[7:] == [g.name for g in genes]
    pop = read_population(csv, genes)
    assert len(pop) == 2 and (folder / "evolve.png").is_file()
    assert not (folder / "gen001" / "weights").exists()  # generations keep their logs, not their weights
    hyp = yaml_load(best)
    assert set(hyp) == set(yaml_load(HYP)) and "best of 2 generations" in best.read_text()
    run_train(train_args(data, tmp_path / "after", "--hyp", str(best), epochs=1))  # the result is a --hyp file


@pytest.mark.slow
def test_train_kd_evolves_the_kd_weights_too(tmp_path):
    import train_kd
    from models.yolo import DetectionModel
    from test_engine import train_args
    from utils.checkpoint import make_checkpoint, save_checkpoint

    data = _tiny(tmp_path)
    model = DetectionModel(ROOT / "models" / "yolov5n.yaml", nc=2)
    model.names = {0: "box", 1: "blob"}  # make_tiny_data's classes
    teacher = save_checkpoint(make_checkpoint(model), tmp_path / "teacher.pt")

    args = train_args(data, tmp_path / "kdevo", "--evolve", "1", "--teacher_weight", str(teacher),
                      "--feat", "at", epochs=1)
    best = train_kd.main(train_kd.parse_opt(args))
    header = [h.strip() for h in (best.parent / "evolve.csv").read_text().splitlines()[0].split(",")]
    assert header[-2:] == ["kd_alpha", "kd_beta_at"]
    assert "KD genes of that generation: kd_alpha=1 kd_beta_at=1" in best.read_text()

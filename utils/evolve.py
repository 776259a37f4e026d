"""Hyperparameter evolution (``--evolve [N]``): upstream YOLOv5's genetic search, KD weights as genes too.

Each generation picks a parent among the 5 fittest rows of evolve.csv (fitness = 0.1 mAP50 + 0.9
mAP50-95, chosen at random with weight = fitness - min + 1e-6), mutates every gene with probability 0.8
by a factor (gain * N(0, 1) * U(0, 1) * 0.2 + 1) clipped to [0.3, 3], clamps it to the gene's
[lower, upper] and trains one full run through the engine. Outputs in runs/evolve/expN/: evolve.csv
(upstream's columns: 7 results, then the genes), hyp_evolve.yaml (the best row, a --hyp file),
evolve.png. ``--resume_evolve DIR`` continues a search where it stopped.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import OptionError
from utils.general import LOGGER, yaml_save
from utils.metrics import fitness
from utils.run_dirs import writing

RESULT_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                  "val/box_loss", "val/obj_loss", "val/cls_loss")
# upstream's limits: hyp key -> (mutation gain, lower limit, upper limit); gain 0 = never mutated
HYP_LIMITS = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0), "anchors": (2, 2.0, 10.0),
    "fl_gamma": (0, 0.0, 2.0), "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9),
    "degrees": (1, 0.0, 45.0), "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0),
    "perspective": (0, 0.0, 0.001), "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0),
    "mixup": (1, 0.0, 1.0), "copy_paste": (1, 0.0, 1.0),
}
MUTATION_PROB, SIGMA, PARENTS = 0.8, 0.2, 5


@dataclass(frozen=True)
class Gene:
    """One evolved value: its name (a column of evolve.csv), mutation gain and limits."""

    name: str
    gain: float
    low: float
    high: float

    def clamp(self, v):
        return round(float(min(max(v, self.low), self.high)), 5)


def hyp_genes(hyp):
    """Genes for the hyp keys present in ``hyp`` that upstream evolves, in upstream's order."""
    return [Gene(k, *HYP_LIMITS[k]) for k in HYP_LIMITS if k in hyp]


def select_parent(population, genes, rng):
    """Gene values of a parent drawn from the PARENTS fittest rows, weighted by fitness (upstream 'single')."""
    fit = fitness(population)
    order = np.argsort(-fit)[:PARENTS]
    best, w = population[order], fit[order] - fit[order].min() + 1e-6
    row = best[rng.choice(len(best), p=w / w.sum())]
    return row[len(RESULT_COLUMNS):len(RESULT_COLUMNS) + len(genes)]


def mutate(values, genes, rng):
    """Mutated copy of ``values`` (one per gene), each clamped to its gene's limits; never all unchanged."""
    gains = np.array([g.gain for g in genes], dtype=float)
    factor = np.ones(len(genes))
    while gains.any() and np.all(factor == 1):
        factor = (gains * (rng.random(len(genes)) < MUTATION_PROB) * rng.standard_normal(len(genes))
                  * rng.random() * SIGMA + 1).clip(0.3, 3.0)
    return [g.clamp(v * f) for g, v, f in zip(genes, values, factor)]


def read_population(csv, genes):
    """Rows of evolve.csv as an array (results then genes); refuses a file written for other genes."""
    if not csv.is_file():
        return np.zeros((0, len(RESULT_COLUMNS) + len(genes)))
    header = [h.strip() for h in csv.read_text().splitlines()[0].split(",")]
    expected = [*RESULT_COLUMNS, *(g.name for g in genes)]
    if header != expected:
        raise OptionError(f"{csv}: columns {header[len(RESULT_COLUMNS):]} differ from this search's genes "
                          f"{expected[len(RESULT_COLUMNS):]} (same --hyp and KD flags needed to resume)")
    return np.loadtxt(csv, ndmin=2, delimiter=",", skiprows=1)


def append_row(csv, genes, results, values):
    """One generation's row, upstream's fixed-width format (header first when the file is new)."""
    keys = [*RESULT_COLUMNS, *(g.name for g in genes)]
    text = "" if csv.is_file() else ("%20s," * len(keys) % tuple(keys)).rstrip(",") + "\n"
    text += ("%20.5g," * len(keys) % tuple([*results, *values])).rstrip(",") + "\n"
    with writing(csv), open(csv, "a") as f:
        f.write(text)


def write_best(save_dir, genes, population, base_hyp):
    """hyp_evolve.yaml from the fittest row: base_hyp with its evolved keys replaced (a --hyp file); genes
    that are not hyp keys (the KD options) go in a comment line as flags."""
    fit = fitness(population)
    i = int(np.argmax(fit))
    best = dict(zip((g.name for g in genes), population[i, len(RESULT_COLUMNS):].tolist()))
    hyp = {**base_hyp, **{k: v for k, v in best.items() if k in base_hyp}}
    extra = {k: v for k, v in best.items() if k not in base_hyp}
    path = save_dir / "hyp_evolve.yaml"
    yaml_save(path, hyp)
    head = (f"# yolov5-kd hyperparameter evolution: best of {len(population)} generations = generation {i + 1}, "
            f"fitness {fit[i]:.5f} (mAP50 {population[i, 2]:.4g}, mAP50-95 {population[i, 3]:.4g})\n")
    if extra:
        head += "# KD genes of that generation: " + " ".join(f"{k}={v:g}" for k, v in extra.items()) + "\n"
    with writing(path):
        path.write_text(head + path.read_text())
    return path


def plot_evolve(save_dir, genes, population):
    """evolve.png: each gene's value against fitness, the best generation marked."""
    from utils.plots import _plt

    plt = _plt()
    fit = fitness(population)
    best = int(np.argmax(fit))
    cols = min(5, len(genes))
    rows = (len(genes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), tight_layout=True, squeeze=False)
    for ax, (k, g) in zip(axes.flat, enumerate(genes)):
        v = population[:, len(RESULT_COLUMNS) + k]
        ax.scatter(v, fit, c=fit, cmap="viridis", s=12)
        ax.plot(v[best], fit[best], "k+", markersize=12)
        ax.set_title(f"{g.name} = {v[best]:.3g}", fontsize=8)
    for ax in list(axes.flat)[len(genes):]:
        ax.axis("off")
    fig.savefig(save_dir / "evolve.png", dpi=120)
    plt.close(fig)


def evolve(save_dir, generations, genes, base_values, train_generation, base_hyp, seed=0):
    """Run generations until evolve.csv holds ``generations`` rows; returns the hyp_evolve.yaml path.

    train_generation(values: {gene name: value}, index) -> 7 results (P, R, mAP50, mAP50-95, 3 val losses).
    The first generation of a new search trains base_values as they are; base_hyp is the full hyp dict.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    csv = save_dir / "evolve.csv"
    population = read_population(csv, genes)
    if len(population) >= generations:
        LOGGER.info(f"evolve: {csv} already holds {len(population)} of {generations} generations")
    for index in range(len(population), generations):
        rng = np.random.default_rng([seed, index])
        values = list(base_values) if not len(population) else mutate(select_parent(population, genes, rng), genes, rng)
        LOGGER.info(f"evolve: generation {index + 1}/{generations}")
        results = train_generation(dict(zip((g.name for g in genes), values)), index)
        append_row(csv, genes, list(results)[:len(RESULT_COLUMNS)], values)
        population = read_population(csv, genes)
    best = write_best(save_dir, genes, population, base_hyp)
    plot_evolve(save_dir, genes, population)
    LOGGER.info(f"evolve: {len(population)} generations in {save_dir}; best hyp in {best}")
    return best


DEFAULT_GENERATIONS = 300  # `--evolve` without a number, as upstream


def evolve_dir(opt, default_projects):
    """The search folder: --resume_evolve's (must hold evolve.csv), else project/name incremented, where the
    project is runs/evolve unless the user chose one (other than the trainers' defaults)."""
    from utils.general import ROOT, increment_path

    if opt.resume_evolve:
        d = Path(opt.resume_evolve)
        d = d.parent if d.is_file() else d
        if not (d / "evolve.csv").is_file():
            raise OptionError(f"--resume_evolve {opt.resume_evolve}: no evolve.csv there to resume from")
        return d
    chosen = str(opt.project) not in {str(p) for p in default_projects}
    project = Path(opt.project) if chosen else ROOT / "runs" / "evolve"
    return increment_path(project / opt.name, exist_ok=opt.exist_ok)


def evolve_training(opt, hyp, save_dir, plugin_factory=None, extra_genes=(), apply_extra=None):
    """--evolve through the one engine: each generation is a full training run (validated and saved at its
    last epoch only, as upstream) in save_dir/genNNN, whose weights are then removed.

    extra_genes: [(Gene, base value)] beyond the hyp keys (e.g. the KD weights); apply_extra(opt, values)
    writes a generation's values of them into its options; plugin_factory(opt) -> that run's plugins.
    """
    import argparse
    import shutil

    from utils.engine import Trainer

    if opt.resume:
        raise OptionError("--evolve and --resume cannot be combined (use --resume_evolve DIR for a search)")
    own = hyp_genes(hyp)
    genes = own + [g for g, _ in extra_genes]
    base = [hyp[g.name] for g in own] + [v for _, v in extra_genes]

    def train_generation(values, index):
        o = argparse.Namespace(**vars(opt))
        o.evolve = o.resume_evolve = None
        o.noval = o.nosave = o.exist_ok = True
        o.save_dir = str(Path(save_dir) / f"gen{index + 1:03d}")
        if apply_extra:
            apply_extra(o, values)
        gen_hyp = {**hyp, **{k: v for k, v in values.items() if k in hyp}}
        results = Trainer(o, gen_hyp, plugins=plugin_factory(o) if plugin_factory else ()).run()
        shutil.rmtree(Path(o.save_dir) / "weights", ignore_errors=True)
        return results

    return evolve(save_dir, opt.evolve or DEFAULT_GENERATIONS, genes, base, train_generation, hyp, seed=opt.seed)

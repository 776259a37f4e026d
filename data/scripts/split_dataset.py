"""Split a YOLO dataset into train/val, stratified by class, reproducibly (seeded).

Each image is put in the stratum of its most frequent class (ties: lowest id; no labels: background),
and every stratum is split with the same val fraction, so each class keeps its share in val.
Images are symlinked (default) or copied into OUT/images/{train,val}, labels into OUT/labels/{train,val},
and a dataset YAML is written to OUT/<name>.yaml.

Usage: python data/scripts/split_dataset.py --images IMAGES --labels LABELS --out OUT
       [--val 0.2] [--seed 0] [--copy] [--names a b c | --data data.yaml] [--name data]

Semi-supervised split (train_kd.py --unlabeled): --labeled FRACTION keeps that share of each class's images
labeled and the rest as unlabeled images, written as two lists of absolute image paths (nothing copied; the
labels stay beside the images, images/ -> labels/), plus OUT/<name>.yaml with train: labeled.txt,
unlabeled: unlabeled.txt and --data's val split and names:
       python data/scripts/split_dataset.py --images NEU/images/train --labeled 0.25 --data data/NEU-DET.yaml --out OUT
"""

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.cli import UserError  # noqa: E402
from utils.general import LOGGER, yaml_load, yaml_save  # noqa: E402
from utils.image_io import IMG_FORMATS  # noqa: E402
from utils.label_files import img2label_paths, list_image_files  # noqa: E402


def stratum_of(label_file):
    """Most frequent class id in a label file (ties: lowest id); -1 for a missing/empty file."""
    if not label_file.is_file():
        return -1
    classes = []
    for line in label_file.read_text(errors="replace").splitlines():
        parts = line.split()
        if parts:
            try:
                classes.append(int(float(parts[0])))
            except ValueError:
                continue
    if not classes:
        return -1
    counts = Counter(classes)
    return min(counts, key=lambda c: (-counts[c], c))


def split_indices(strata, val_fraction, seed=0):
    """-> sorted list of val indices: round(val_fraction * n) of each stratum, chosen with a seeded RNG."""
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    val = []
    for s in sorted(set(strata.tolist())):
        members = np.flatnonzero(strata == s)
        rng.shuffle(members)
        val.extend(members[:int(round(val_fraction * len(members)))].tolist())
    return sorted(val)


def place(src, dst, copy=False):
    """Symlink (or copy) src to dst, replacing what is there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def split_dataset(images, labels, out, val_fraction=0.2, seed=0, copy=False, names=None, name="data"):
    """Split and write the dataset; returns (path of the YAML, train count, val count)."""
    images, labels, out = Path(images), Path(labels), Path(out)
    files = sorted(p for p in images.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    if not files:
        raise FileNotFoundError(f"no images in {images}")
    label_of = [labels / p.relative_to(images).with_suffix(".txt") for p in files]
    strata = [stratum_of(lf) for lf in label_of]
    val = set(split_indices(strata, val_fraction, seed))
    for i, (im, lb) in enumerate(zip(files, label_of)):
        split = "val" if i in val else "train"
        place(im, out / "images" / split / im.name, copy)
        if lb.is_file():
            place(lb, out / "labels" / split / lb.name, copy)
    if names is None:
        n = max(strata) + 1
        names = [str(i) for i in range(n)]
    yaml_file = out / f"{name}.yaml"
    yaml_save(yaml_file, {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
                          "names": {i: n for i, n in enumerate(names)}})
    return yaml_file, len(files) - len(val), len(val)


def split_labeled(files, out, fraction, val, names, seed=0, name="semi"):
    """Keep `fraction` of each stratum's images labeled, the rest unlabeled (split_indices' strata, labels read
    at images/ -> labels/): OUT/labeled.txt, OUT/unlabeled.txt (absolute paths) and OUT/<name>.yaml with
    train, unlabeled, val (path or list) and names. -> (yaml path, n labeled, n unlabeled)"""
    files = sorted(str(Path(f).resolve()) for f in files)
    if not files:
        raise UserError("split_labeled: no images to split")
    if not 0 < fraction < 1:
        raise UserError(f"--labeled must be between 0 and 1, got {fraction}")
    strata = [stratum_of(Path(lb)) for lb in img2label_paths(files)]
    labeled = set(split_indices(strata, fraction, seed))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lists = {"labeled": [f for i, f in enumerate(files) if i in labeled],
             "unlabeled": [f for i, f in enumerate(files) if i not in labeled]}
    for key, items in lists.items():
        (out / f"{key}.txt").write_text("".join(f"{f}\n" for f in items))
    yaml_file = out / f"{name}.yaml"
    yaml_save(yaml_file, {"path": str(out.resolve()), "train": "labeled.txt", "unlabeled": "unlabeled.txt",
                          "val": val, "names": dict(names)})
    return yaml_file, len(lists["labeled"]), len(lists["unlabeled"])


def _labeled_split(opt):
    """--labeled: the semi-supervised lists; val and names from --data."""
    from utils.dataset_yaml import check_dataset

    if not opt.data:
        raise UserError("--labeled needs --data (the dataset YAML whose val split and names the new YAML uses)")
    d = check_dataset(opt.data, autodownload=False)
    files = list_image_files(opt.images)
    yaml_file, n_lab, n_unl = split_labeled(files, opt.out, opt.labeled, d["val"], d["names"], opt.seed, opt.name)
    LOGGER.info(f"{n_lab} labeled / {n_unl} unlabeled images in {opt.out}; dataset YAML {yaml_file}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="stratified, seeded train/val split of a YOLO dataset")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--labels", type=Path, help="folder of YOLO .txt labels (same layout); not with --labeled")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--val", type=float, default=0.2, help="val fraction of each class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy", action="store_true", help="copy files instead of symlinking")
    parser.add_argument("--names", nargs="+", help="class names in id order")
    parser.add_argument("--data", type=Path, help="dataset YAML whose names to use")
    parser.add_argument("--name", default="data", help="file name (without .yaml) of the written dataset YAML")
    parser.add_argument("--labeled", type=float, help="semi-supervised split: this fraction of each class labeled, "
                        "the rest unlabeled (image lists; needs --data)")
    opt = parser.parse_args(argv)
    if opt.labeled is not None:
        return _labeled_split(opt)
    if opt.labels is None:
        parser.error("--labels is required (unless --labeled)")
    if not 0 < opt.val < 1:
        parser.error("--val must be between 0 and 1")
    names = opt.names
    if opt.data:
        raw = yaml_load(opt.data).get("names")
        names = list(raw.values()) if isinstance(raw, dict) else raw
    yaml_file, n_train, n_val = split_dataset(opt.images, opt.labels, opt.out, opt.val, opt.seed, opt.copy,
                                              names, opt.name)
    LOGGER.info(f"{n_train} train / {n_val} val images in {opt.out}; dataset YAML {yaml_file}")


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, lambda argv: argv, "split_dataset.py")

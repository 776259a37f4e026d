"""Offline pseudo-labels: a teacher's detections on unlabeled images -> a labeled YOLO dataset.

Run the teacher with detect.py first; it writes one OUT/labels/<image stem>.txt per image with a detection,
rows `class xc yc w h conf` (normalised to the original image) with --save-conf:
    python detect.py --weights teacher.pt --source unlabeled.txt --img 224 --conf-thres 0.25 --save-txt --save-conf --nosave
Then keep the rows with conf >= --conf, link each image with a kept row into OUT/images/ and write its rows
(without conf) to OUT/labels/; OUT/<name>.yaml trains on --data's train split plus OUT/images, with
--data's val split and names:
    python data/scripts/pseudo_labels.py --detections runs/detect/exp/labels --images unlabeled.txt \\
        --conf 0.5 --data semi.yaml --out runs/pseudo

Images without a kept row are left out (a missed object would become background) unless --keep-empty.
The detections are data: rows that are not numbers, have the wrong width, or name a class outside
--data's names are skipped and counted, the file named once.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _dir in (ROOT, Path(__file__).resolve().parent):  # the repo, and split_dataset.py beside this script
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from split_dataset import place  # noqa: E402

from utils.cli import UserError  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.general import LOGGER, warn_each, yaml_save  # noqa: E402
from utils.label_files import list_image_files  # noqa: E402

MAX_MESSAGES = 20


def read_detections(file, conf, nc):
    """Rows `class xc yc w h conf` of one detect.py label file -> (kept rows `class xc yc w h` as text,
    problem or ''). Raises UserError when the rows carry no confidence (detect.py ran without --save-conf)."""
    kept, bad = [], 0
    for k, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 5:
            raise UserError(f"{file}: line {k} has no confidence column; run detect.py with --save-txt --save-conf")
        try:
            values = [float(x) for x in parts]
        except ValueError:
            bad += 1
            continue
        if len(values) != 6 or values[0] != int(values[0]) or not 0 <= values[0] < nc \
                or not all(0 <= v <= 1 for v in values[1:]):
            bad += 1
            continue
        if values[5] >= conf:
            kept.append(f"{int(values[0])} " + " ".join(f"{v:.6f}" for v in values[1:5]))
    return kept, f"{file}: {bad} unreadable row(s) skipped" if bad else ""


def _prepare(out, exist_ok):
    """OUT/images and OUT/labels, empty; with exist_ok a previous output's links and .txt files are removed."""
    dirs = [out / "images", out / "labels"]
    old = [f for d in dirs if d.is_dir() for f in d.iterdir()]
    if old and not exist_ok:
        raise UserError(f"{out} already holds a pseudo-labelled set; pass --exist-ok to replace it")
    for f in old:
        if f.is_symlink() or f.is_file():
            f.unlink()
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def pseudo_label(detections, images, data, out, conf=0.25, keep_empty=False, copy=False, name="pseudo",
                 exist_ok=False):
    """Write the pseudo-labelled set and its dataset YAML -> (yaml path, images kept, boxes kept)."""
    detections, out = Path(detections), Path(out)
    if not detections.is_dir():
        raise UserError(f"--detections {detections}: not a folder (detect.py --save-txt writes <run>/labels)")
    d = check_dataset(data, autodownload=False)
    nc = len(d["names"])
    files = list_image_files(images)
    by_stem = {}
    for f in files:
        other = by_stem.setdefault(Path(f).stem, f)
        if other != f:
            raise UserError(f"--images: {other} and {f} share the name stem {Path(f).stem!r}, which detect.py "
                            "writes to one label file; give images with distinct names")
    im_dir, lb_dir = _prepare(out, exist_ok)
    n_images = n_boxes = 0
    problems = []
    for stem, im in by_stem.items():
        det = detections / f"{stem}.txt"
        rows, problem = read_detections(det, conf, nc) if det.is_file() else ([], "")
        if problem:
            problems.append(problem)
        if not rows and not keep_empty:
            continue
        place(Path(im), im_dir / Path(im).name, copy)
        (lb_dir / f"{stem}.txt").write_text("".join(f"{r}\n" for r in rows))
        n_images, n_boxes = n_images + 1, n_boxes + len(rows)
    warn_each(problems, limit=MAX_MESSAGES, what="detection file(s) with problems")
    train = d["train"] if isinstance(d["train"], list) else [d["train"]]
    yaml_file = out / f"{name}.yaml"
    yaml_save(yaml_file, {"path": str(out.resolve()), "train": [*train, str(im_dir.resolve())], "val": d["val"],
                          "names": dict(d["names"])})
    LOGGER.info(f"pseudo-labels at conf >= {conf:g}: {n_boxes} boxes on {n_images}/{len(files)} images in {out}; "
                f"dataset YAML {yaml_file} (train = {', '.join(map(str, train))} + {im_dir})")
    return yaml_file, n_images, n_boxes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detections", required=True, type=Path, help="detect.py --save-txt --save-conf labels folder")
    p.add_argument("--images", required=True, help="the images detect.py ran on: folder, .txt list or glob")
    p.add_argument("--data", required=True, help="dataset YAML of the labeled set (train, val, names)")
    p.add_argument("--out", required=True, type=Path, help="output folder (images/, labels/, <name>.yaml)")
    p.add_argument("--conf", type=float, default=0.25, help="keep detections with confidence >= this")
    p.add_argument("--keep-empty", action="store_true", help="keep images without a kept detection, as background")
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking")
    p.add_argument("--name", default="pseudo", help="file name (without .yaml) of the written dataset YAML")
    p.add_argument("--exist-ok", action="store_true", help="replace an earlier output in --out")
    opt = p.parse_args(argv)
    if not 0 <= opt.conf <= 1:
        p.error("--conf must be between 0 and 1")
    return pseudo_label(opt.detections, opt.images, opt.data, opt.out, opt.conf, opt.keep_empty, opt.copy,
                        opt.name, opt.exist_ok)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, lambda argv: argv, "pseudo_labels.py")

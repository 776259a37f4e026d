"""Convert Pascal-VOC XML annotations to YOLO label files (class xc yc w h, normalised).

xc = (xmin + xmax) / 2 / W, w = (xmax - xmin) / W (likewise for y), W and H from <size>, or from the
image in --images when <size> is missing or zero. Class ids follow --names (or a dataset YAML's names);
without either, the names found in the XML files are sorted alphabetically (and printed).

Usage: python data/scripts/voc2yolo.py --xml ANNOTATIONS --out labels [--names a b c | --data data.yaml]
       [--images IMAGES] [--skip-difficult]
"""

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.general import LOGGER  # noqa: E402


def _text(node, tag, xml_file):
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{xml_file}: <{tag}> missing")
    return child.text.strip()


def read_voc(xml_file, images_dir=None):
    """-> (width, height, [(name, xmin, ymin, xmax, ymax, difficult)]) for one XML file."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_file}: not valid XML ({e})") from e
    size = root.find("size")
    w = float(_text(size, "width", xml_file)) if size is not None else 0.0
    h = float(_text(size, "height", xml_file)) if size is not None else 0.0
    if (w <= 0 or h <= 0) and images_dir:
        from utils.image_io import imread
        name = root.findtext("filename") or Path(xml_file).stem + ".jpg"
        im = imread(Path(images_dir) / name)
        if im is None:
            raise ValueError(f"{xml_file}: <size> missing and image {Path(images_dir) / name} unreadable")
        h, w = im.shape[:2]
    if w <= 0 or h <= 0:
        raise ValueError(f"{xml_file}: image size missing (give --images to read it from the image)")
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_file}: <object> without <bndbox>")
        coords = [float(_text(box, k, xml_file)) for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = int(obj.findtext("difficult", "0").strip() or 0)
        objects.append((_text(obj, "name", xml_file), *coords, difficult))
    return w, h, objects


def voc_box_to_yolo(w, h, xmin, ymin, xmax, ymax):
    """Pixel VOC corners -> normalised (xc, yc, bw, bh)."""
    return (xmin + xmax) / 2 / w, (ymin + ymax) / 2 / h, (xmax - xmin) / w, (ymax - ymin) / h


def discover_names(xml_files):
    names = set()
    for f in xml_files:
        names.update(o[0] for o in read_voc(f)[2])
    return sorted(names)


def convert(xml_dir, out_dir, names=None, images_dir=None, skip_difficult=False):
    """Write one .txt per XML into out_dir. Returns (names list, files written, boxes written)."""
    xml_files = sorted(Path(xml_dir).glob("*.xml"))
    if not xml_files:
        raise FileNotFoundError(f"no .xml files in {xml_dir}")
    names = list(names) if names else discover_names(xml_files)
    index = {n: i for i, n in enumerate(names)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for f in xml_files:
        w, h, objects = read_voc(f, images_dir)
        rows = []
        for name, xmin, ymin, xmax, ymax, difficult in objects:
            if skip_difficult and difficult:
                continue
            if name not in index:
                raise ValueError(f"{f}: class '{name}' is not in the class list {names}")
            xc, yc, bw, bh = voc_box_to_yolo(w, h, xmin, ymin, xmax, ymax)
            rows.append(f"{index[name]} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}\n")
        (out_dir / f"{f.stem}.txt").write_text("".join(rows))
        n_boxes += len(rows)
    return names, len(xml_files), n_boxes


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pascal-VOC XML -> YOLO labels")
    parser.add_argument("--xml", required=True, type=Path, help="folder of VOC .xml files")
    parser.add_argument("--out", required=True, type=Path, help="output folder for .txt labels")
    parser.add_argument("--names", nargs="+", help="class names in id order")
    parser.add_argument("--data", type=Path, help="dataset YAML whose names give the class order")
    parser.add_argument("--images", type=Path, help="image folder, to read sizes missing from the XML")
    parser.add_argument("--skip-difficult", action="store_true", help="drop objects marked difficult")
    opt = parser.parse_args(argv)
    names = opt.names
    if opt.data:
        from utils.dataset_yaml import _normalise_names
        from utils.general import yaml_load
        names = list(_normalise_names(yaml_load(opt.data).get("names", []), opt.data).values())
    names, n_files, n_boxes = convert(opt.xml, opt.out, names, opt.images, opt.skip_difficult)
    LOGGER.info(f"{n_files} label files, {n_boxes} boxes written to {opt.out}; classes: {names}")


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, lambda argv: argv, "voc2yolo.py")

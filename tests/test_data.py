"""Dataset YAMLs, label paths and boxes, the loader's batch format, caches, seeding, EXIF, detect sources,
the VOC converter, the stratified split and the synthetic generator."""

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from utils import label_cache
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.dataloaders import LoadImages, create_dataloader, img2label_paths
from utils.dataset_yaml import check_dataset
from utils.image_io import imread
from utils.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
NEU = SHARED / "datasets" / "NEU-DET"
NEU_VOC = SHARED / "datasets" / "NEU-DET-VOC" / "ANNOTATIONS"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_yaml(path, d):
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", n_train=12, n_val=4, seed=0)


# ---------------------------------------------------------------- dataset YAML
def test_check_dataset_resolves_paths_and_names(tmp_path):
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "val").mkdir(parents=True)
    f = write_yaml(tmp_path / "d.yaml", {"path": "ds", "train": "images/train", "val": ["images/val"],
                                         "names": ["a", "b"]})
    d = check_dataset(f)
    assert d["path"] == str((tmp_path / "ds").resolve()) and d["nc"] == 2 and d["names"] == {0: "a", 1: "b"}
    assert d["train"] == str((tmp_path / "ds/images/train").resolve()) and d["val"] == [str((tmp_path / "ds/images/val").resolve())]
    assert "test" not in d
    d = check_dataset({"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/val",
                       "names": {1: "y", 0: "x"}})
    assert d["names"] == {0: "x", 1: "y"}


def test_check_dataset_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        check_dataset(tmp_path / "nope.yaml")
    f = write_yaml(tmp_path / "nonames.yaml", {"path": str(tmp_path), "train": "a", "val": "b"})
    with pytest.raises(ValueError, match="nonames.yaml.*names"):
        check_dataset(f)
    f = write_yaml(tmp_path / "noval.yaml", {"path": str(tmp_path), "train": ".", "val": "missing_val", "names": ["a"]})
    with pytest.raises(FileNotFoundError, match="noval.yaml.*missing_val"):
        check_dataset(f)
    f = write_yaml(tmp_path / "url.yaml", {"path": str(tmp_path / "x"), "train": "a", "val": "b", "names": ["a"],
                                           "download": "https://example.com/data.zip"})
    with pytest.raises(FileNotFoundError, match="never does"):
        check_dataset(f)
    f = write_yaml(tmp_path / "nc.yaml", {"path": str(tmp_path), "train": ".", "val": ".", "nc": 3, "names": ["a"]})
    with pytest.raises(ValueError, match="nc=3"):
        check_dataset(f)


def test_check_dataset_download_runs_local_generator(tmp_path):
    f = write_yaml(tmp_path / "syn.yaml", {"path": str(tmp_path / "gen"), "train": "images/train",
                                           "val": "images/val", "names": list("abcdef"),
                                           "download": "data/scripts/make_synthetic.py --train 3 --val 2"})
    d = check_dataset(f)
    assert len(os.listdir(d["val"])) == 2 and len(os.listdir(d["train"])) == 3


def test_repo_yamls():
    syn = yaml.safe_load((ROOT / "data" / "synthetic.yaml").read_text())
    assert "make_synthetic.py" in syn["download"] and len(syn["names"]) == 6
    if not (NEU / "images" / "val").is_dir():
        pytest.skip("../shared/datasets/NEU-DET not present")
    d = check_dataset(ROOT / "data" / "NEU-DET.yaml")
    assert Path(d["val"]).resolve() == (NEU / "images" / "val").resolve()
    assert list(d["names"].values()) == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale",
                                         "scratches"]


# ---------------------------------------------------------------- labels and boxes
def test_img2label_paths_uses_last_images_folder():
    p = os.path.join(os.sep, "data", "images", "set", "images", "a.b.jpg")
    assert img2label_paths([p]) == [os.path.join(os.sep, "data", "images", "set", "labels", "a.b.txt")]


def test_box_round_trip():
    rng = np.random.default_rng(0)
    xywhn = np.concatenate([rng.uniform(0.3, 0.7, (20, 2)), rng.uniform(0.05, 0.3, (20, 2))], 1)
    xyxy = xywhn2xyxy(xywhn, w=320, h=200, padw=7, padh=3)
    xyxy[:, [0, 2]] -= 7
    xyxy[:, [1, 3]] -= 3
    np.testing.assert_allclose(xyxy2xywhn(xyxy, w=320, h=200), xywhn, atol=1e-9)


def test_labels_match_pixels_after_letterbox(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    im = np.zeros((90, 150, 3), np.uint8)
    im[20:50, 30:90] = 255
    cv2.imwrite(str(tmp_path / "images" / "a.png"), im)
    (tmp_path / "labels" / "a.txt").write_text(f"2 {60 / 150} {35 / 90} {60 / 150} {30 / 90}\n")
    loader, ds = create_dataloader(tmp_path / "images", 96, 1, 32, workers=0)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.dtype == torch.uint8 and imgs.shape == (1, 3, 96, 96)
    (h0, w0), ((rh, rw), (padw, padh)) = shapes[0]
    assert (h0, w0) == (90, 150) and padw == 0 and padh > 0
    c, xc, yc, w, h = targets[0, 1:].tolist()
    x1, y1, x2, y2 = (xc - w / 2) * 96, (yc - h / 2) * 96, (xc + w / 2) * 96, (yc + h / 2) * 96
    bright = np.argwhere(imgs[0, 0].numpy() > 128)
    assert c == 2 and abs(bright[:, 1].min() - x1) <= 1 and abs(bright[:, 1].max() + 1 - x2) <= 1
    assert abs(bright[:, 0].min() - y1) <= 1 and abs(bright[:, 0].max() + 1 - y2) <= 1


# ---------------------------------------------------------------- loader
def test_batch_format_rect_and_single_cls(tiny_synthetic):
    loader, ds = create_dataloader(tiny_synthetic / "images" / "val", 128, 2, 32, rect=True, pad=0.5, workers=0,
                                   single_cls=True)
    assert len(ds.labels) == len(ds.im_files) == len(ds.shapes) == len(ds.segments) == 4
    for imgs, targets, paths, shapes in loader:
        assert imgs.shape[2] % 32 == 0 and imgs.shape[3] % 32 == 0
        assert targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0.0, 1.0} and (targets[:, 1] == 0).all()
        assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and len(shapes) == len(paths)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio


def test_seeded_shuffle_is_reproducible(tiny_synthetic):
    def order(seed):
        loader, _ = create_dataloader(tiny_synthetic / "images" / "train", 64, 4, 32, workers=0, shuffle=True,
                                      seed=seed)
        return [p for _, _, paths, _ in loader for p in paths]
    assert order(1) == order(1) and order(1) != order(2)


def test_workers_and_cache_modes_give_same_images(tiny_synthetic):
    src = tiny_synthetic / "images" / "val"
    ref = [b[0] for b in create_dataloader(src, 64, 2, 32, workers=0)[0]]
    for cache, workers in (("ram", 0), ("disk", 2)):
        loader, ds = create_dataloader(src, 64, 2, 32, workers=workers, cache=cache)
        got = [b[0] for b in loader]
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), cache
    assert all(f.exists() for f in ds.npy_files)


def _worker_niceness(init_fn, queue):
    init_fn(0)
    queue.put(os.nice(0))


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities here")
def test_background_workers_run_at_the_lowest_priority(tiny_synthetic):
    """A CPU run's loader workers start (their worker_init_fn) at nice 19, so torch's threads keep the cores;
    other loaders keep the caller's priority and their seeding."""
    import multiprocessing

    ctx, base = multiprocessing.get_context("fork"), os.nice(0)
    got = {}
    for background in (True, False):
        loader = create_dataloader(tiny_synthetic / "images" / "val", 64, 2, 32, workers=1,
                                   background_workers=background)[0]
        queue = ctx.Queue()
        worker = ctx.Process(target=_worker_niceness, args=(loader.worker_init_fn, queue))
        worker.start()
        got[background] = queue.get(timeout=60)
        worker.join(60)
    assert got == {True: min(base + 19, 19), False: base}


def test_label_cache_never_written_into_read_only_folder(tmp_path, monkeypatch):
    data = make_synthetic(tmp_path / "shared" / "syn", n_train=4, n_val=1)
    monkeypatch.setattr(label_cache, "SHARED_DIR", (tmp_path / "shared").resolve())  # pretend it is ../shared
    monkeypatch.setattr(label_cache, "ROOT", tmp_path / "repo")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for _ in range(2):  # second time from the redirected cache
        create_dataloader(data / "images" / "train", 64, 2, 32, workers=0, cache="disk")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert len(list((tmp_path / "repo" / "runs" / "cache" / "labels").rglob("*.cache"))) == 1
    assert len(list((tmp_path / "repo" / "runs" / "cache" / "npy").rglob("*.npy"))) == 4


def test_label_cache_respects_missing_write_bits_even_as_root(tmp_path, monkeypatch):
    """A copy of ../shared elsewhere (or behind a symlink) has no write bits: root must not write there either."""
    data = make_synthetic(tmp_path / "copy" / "syn", n_train=4, n_val=1)
    monkeypatch.setattr(label_cache, "ROOT", tmp_path / "repo")
    folders = [p for p in [data, *data.rglob("*")] if p.is_dir()]
    for p in folders:
        p.chmod(0o555)
    try:
        before = sorted(p.relative_to(data) for p in data.rglob("*"))
        create_dataloader(data / "images" / "train", 64, 2, 32, workers=0)
        assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
        assert len(list((tmp_path / "repo" / "runs" / "cache" / "labels").rglob("*.cache"))) == 1
    finally:
        for p in folders:
            p.chmod(0o755)


def test_exif_orientation_respected(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    im = np.zeros((20, 40, 3), np.uint8)
    im[:5, :10] = 255
    for orientation, shape in ((1, (20, 40)), (6, (40, 20)), (8, (40, 20)), (3, (20, 40))):
        for ext in ("jpg", "png"):
            p = pil.fromarray(im)
            exif = p.getexif()
            exif[0x0112] = orientation
            f = tmp_path / f"o{orientation}.{ext}"
            p.save(f, exif=exif)
            out = imread(f)
            assert out.shape[:2] == shape
            corner = {1: out[:5, :10], 3: out[-5:, -10:], 6: out[:10, -5:], 8: out[-10:, :5]}[orientation]
            assert corner.mean() > 200, (orientation, ext)


def test_load_images_sources(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"im{i}.jpg"), np.full((60, 100, 3), 50 * i, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"junk")
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for k in range(6):
        writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    writer.release()
    items = list(LoadImages(str(tmp_path), img_size=64, stride=32, vid_stride=2))
    stills = [x for x in items if x[0].endswith(".jpg")]
    assert len(stills) == 2 and stills[0][1].shape == (3, 64, 64) and stills[0][2].shape == (60, 100, 3)
    frames = [x for x in items if x[0].endswith(".avi")]
    if (tmp_path / "clip.avi").stat().st_size > 0 and frames:
        assert len(frames) == 3 and frames[0][3] is not None
    (tmp_path / "list.txt").write_text("im0.jpg\nim1.jpg\n")
    assert len(list(LoadImages(str(tmp_path / "list.txt"), img_size=64))) == 2
    with pytest.raises(FileNotFoundError):
        LoadImages(str(tmp_path / "missing.jpg"))


# ---------------------------------------------------------------- scripts
def test_voc2yolo_reproduces_shared_labels(tmp_path):
    if not NEU_VOC.is_dir() or not (NEU / "labels").is_dir():
        pytest.skip("../shared/datasets/NEU-DET(-VOC) not present")
    voc2yolo = load_script("voc2yolo")
    names = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    _, n_files, n_boxes = voc2yolo.convert(NEU_VOC, tmp_path, names)
    ref = sorted((NEU / "labels").glob("*/*.txt"))
    assert n_files == len(ref) == 1800 and n_boxes == 4189
    for f in ref:
        a, b = np.loadtxt(f, ndmin=2), np.loadtxt(tmp_path / f.name, ndmin=2)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6, f.name


def test_voc2yolo_discovers_names(tmp_path):
    xml = ("<annotation><size><width>100</width><height>50</height></size>"
           "<object><name>zeta</name><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>30</xmax><ymax>25</ymax></bndbox>"
           "</object><object><name>alpha</name><difficult>1</difficult><bndbox><xmin>0</xmin><ymin>0</ymin>"
           "<xmax>100</xmax><ymax>50</ymax></bndbox></object></annotation>")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.xml").write_text(xml)
    names, _, _ = load_script("voc2yolo").convert(tmp_path / "x", tmp_path / "out")
    assert names == ["alpha", "zeta"]
    rows = np.loadtxt(tmp_path / "out" / "a.txt", ndmin=2)
    np.testing.assert_allclose(rows, [[1, 0.2, 0.3, 0.2, 0.4], [0, 0.5, 0.5, 1, 1]])


def test_split_is_stratified_and_seeded(tiny_synthetic, tmp_path):
    split = load_script("split_dataset")
    strata = [0] * 50 + [1] * 30 + [2] * 10 + [-1] * 10
    val = split.split_indices(strata, 0.2, seed=3)
    counts = {s: sum(strata[i] == s for i in val) for s in (0, 1, 2, -1)}
    assert counts == {0: 10, 1: 6, 2: 2, -1: 2}
    assert val == split.split_indices(strata, 0.2, seed=3) and val != split.split_indices(strata, 0.2, seed=4)
    images = tiny_synthetic / "images" / "train"
    yaml_file, n_train, n_val = split.split_dataset(images, tiny_synthetic / "labels" / "train", tmp_path / "s",
                                                    0.25, names=list("abcdef"))
    d = check_dataset(yaml_file)
    assert n_train + n_val == 12 and len(os.listdir(d["val"])) == n_val > 0
    assert len(os.listdir(Path(d["path"]) / "labels" / "val")) == n_val


def test_synthetic_generator_is_deterministic_and_tight(tmp_path):
    a = make_synthetic(tmp_path / "a", n_train=5, n_val=2, seed=7)
    b = make_synthetic(tmp_path / "b", n_train=5, n_val=2, seed=7)
    c = make_synthetic(tmp_path / "c", n_train=5, n_val=2, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*.*"))
    assert len(files) == 14 and files == sorted(p.relative_to(b) for p in b.rglob("*.*"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())
    classes = set()
    for lb in (a / "labels").rglob("*.txt"):
        im = imread(str(lb).replace("labels", "images").replace(".txt", ".jpg")).astype(np.float32)[..., 0]
        h, w = im.shape
        assert 128 <= h <= 200 and 128 <= w <= 200
        for c_, xc, yc, bw, bh in np.loadtxt(lb, ndmin=2):
            classes.add(int(c_))
            x1, y1, x2, y2 = int(round((xc - bw / 2) * w)), int(round((yc - bh / 2) * h)), \
                int(round((xc + bw / 2) * w)), int(round((yc + bh / 2) * h))
            # tight: the defect differs from the background on the box's border rows/columns
            inner = im[y1:y2, x1:x2]
            med = np.median(im)
            assert np.abs(inner[0] - med).max() > 15 and np.abs(inner[-1] - med).max() > 15
            assert np.abs(inner[:, 0] - med).max() > 15 and np.abs(inner[:, -1] - med).max() > 15
    assert len(classes) >= 3

"""Crafted images, image folders, label files and label caches (issue 28): the bad item is skipped with one
warning naming the file and the run goes on, or, when nothing usable is left, one line `prog: error: ...`;
never a traceback, a hang (a FIFO) or a decode of what a header merely claims (a decompression bomb).

The header reader and the cache checks run in-process (fast); each entry point meets the crafted data in a
real subprocess (tests/fuzz_util.py), all on one tiny synthetic world per module.
"""

import json
import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
import yaml

from fuzz_util import assert_clear_error, assert_ran_cleanly, run_entry, tiny_world
from utils import label_cache, label_files
from utils.image_io import decode_checked, image_size, read_image
from utils.label_files import list_image_files, load_cache, load_labels
from utils.limits import MAX_IMAGE_PIXELS, MAX_LABEL_ROWS

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symlinks need a POSIX system")


# ----------------------------------------------------------------------------- crafted files
def png_claiming(w, h):
    """A valid PNG signature and IHDR (CRCs right) claiming w x h pixels, with an empty IDAT: ~60 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def jpeg_claiming(w, h):
    """SOI, a JFIF APP0, a baseline SOF0 claiming w x h, then EOI (no scan)."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def encoded(ext, w=37, h=23, params=()):
    im = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    ok, buf = cv2.imencode(ext, im, list(params))
    assert ok, ext
    return buf.tobytes()


# ----------------------------------------------------------------------------- header reader, in-process
@pytest.mark.parametrize("ext, params", [(".png", ()), (".jpg", ()), (".bmp", ()), (".tiff", ()), (".ppm", ()),
                                         (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101))],
                         ids=["png", "jpeg", "bmp", "tiff", "ppm", "webp-vp8", "webp-vp8l"])
def test_header_size_of_real_encodes(ext, params):
    data = encoded(ext, params=params)
    assert image_size(data) == (37, 23)
    if ext == ".webp":
        assert data[12:16] == (b"VP8L" if params[1] > 100 else b"VP8 ")  # lossless above quality 100
    im, problem = decode_checked(np.frombuffer(data, np.uint8))
    assert problem is None and im.shape == (23, 37, 3)


def test_header_size_of_hand_made_headers():
    gif = b"GIF89a" + struct.pack("<HH", 321, 123) + b"\x00\x00\x00"
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" \
        + (59999).to_bytes(3, "little") + (1).to_bytes(3, "little")
    bmp_top_down = b"BM" + bytes(12) + struct.pack("<Iii", 40, 640, -480) + bytes(20)
    tiff_mm = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) \
        + struct.pack(">HHII", 256, 4, 1, 70000) + struct.pack(">HHIHH", 257, 3, 1, 9, 0)
    jpeg_after_app = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", 5000) + bytes(4998) + jpeg_claiming(50, 40)[2:]
    assert image_size(gif) == (321, 123)
    assert image_size(vp8x) == (60000, 2)
    assert image_size(bmp_top_down) == (640, 480)
    assert image_size(tiff_mm) == (70000, 9)
    assert image_size(jpeg_after_app) == (50, 40)
    assert image_size(png_claiming(60000, 60000)) == (60000, 60000)


@pytest.mark.parametrize("data", [
    b"", b"\x89PNG\r\n\x1a\n", png_claiming(5, 5)[:20], b"\xff\xd8\xff", jpeg_claiming(9, 9)[:22],
    b"\xff\xd8\xff\xda\x00\x02", b"BM\x00", b"GIF89a\x01", b"II*\x00\xff\xff\xff\x7f", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P6\n# only a comment", b"\x00" * 64, bytes(range(256)),
], ids=["empty", "png-sig", "png-cut", "jpeg-soi", "jpeg-cut", "jpeg-sos-first", "bmp-cut", "gif-cut",
        "tiff-ifd-far", "webp-cut", "pnm-cut", "zeros", "garbage"])
def test_header_reader_gives_none_for_truncated_or_garbage(data):
    assert image_size(data) is None
    im, problem = decode_checked(np.frombuffer(data, np.uint8))
    assert im is None and problem


@pytest.mark.parametrize("data", [png_claiming(60000, 60000), png_claiming(20000, 20000), png_claiming(70000, 10),
                                  jpeg_claiming(65535, 65535), jpeg_claiming(12000, 8000)],
                         ids=["png-60k", "png-20k", "png-side", "jpeg-64k", "jpeg-96mp"])
def test_bombs_are_refused_by_their_header(data):
    w, h = image_size(data)
    assert w * h > MAX_IMAGE_PIXELS or max(w, h) > 65_500
    im, problem = decode_checked(np.frombuffer(data, np.uint8))
    assert im is None and f"{w}x{h}" in problem and "claims" in problem


def test_unknown_format_bomb_never_raises():
    """A Sun raster header claiming 60000x60000 (a format we leave to OpenCV): refused, no cv2.error."""
    ras = struct.pack(">8I", 0x59A66A95, 60000, 60000, 24, 60000 * 60000 * 3 & 0xFFFFFFFF, 1, 0, 0)
    im, problem = decode_checked(np.frombuffer(ras + bytes(64), np.uint8))
    assert im is None and problem


def test_imread_never_opens_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    im, problem = read_image(fifo)  # would block forever if opened for reading without O_NONBLOCK
    assert im is None and "FIFO" in problem


# ----------------------------------------------------------------------------- listing and cache, in-process
def test_listing_skips_fifos_and_visits_each_folder_once(tmp_path):
    images = tmp_path / "data" / "images"
    (images / "sub").mkdir(parents=True)
    for f in ("a.jpg", "sub/b.jpg"):
        (images / f).write_bytes(b"x")
    os.mkfifo(images / "pipe.jpg")
    (images / "sub" / "loop").symlink_to("..")  # images/sub/loop/sub/loop/... forever
    (images / "self").symlink_to(".")
    (images / "z.jpg").symlink_to("a.jpg")
    (tmp_path / "linked").symlink_to(images)  # a top-level symlinked folder keeps working
    want = [str(images / "a.jpg"), str(images / "sub" / "b.jpg")]
    assert list_image_files(images) == want
    assert list_image_files(str(images / "**" / "*.jpg")) == want
    assert list_image_files(tmp_path / "linked") == [str(tmp_path / "linked" / "a.jpg"),
                                                     str(tmp_path / "linked" / "sub" / "b.jpg")]
    (tmp_path / "list.txt").write_text("data/images/a.jpg\ndata/images/pipe.jpg\ndata/images/z.jpg\n")
    assert list_image_files(tmp_path / "list.txt") == [str(images / "a.jpg")]


@pytest.fixture()
def small_set(tmp_path, monkeypatch):
    """A 4-image dataset with a fresh cache, the cache key kept under tmp_path."""
    from utils.synthetic import make_synthetic

    monkeypatch.setattr(label_cache, "ROOT", tmp_path / "repo")
    data = make_synthetic(tmp_path / "syn", 4, 1)
    files = list_image_files(data / "images" / "train")
    load_labels(files)
    return files, data / "labels" / "train.cache"


def _resign(cache, edit):
    """Apply edit to the cache's records and sign it again with the checkout's key (a forger who holds it)."""
    head, _, payload = cache.read_bytes().partition(b"\n")
    raw = json.loads(payload)
    edit(raw)
    payload = json.dumps(raw).encode()
    header = {"version": label_cache.CACHE_VERSION, "mac": label_cache._mac(label_cache._cache_secret(), payload)}
    cache.write_bytes(json.dumps(header).encode() + b"\n" + payload)


def _set_label(raw, i, col, value):
    raw["labels"][5 * i + col] = value


FORGERIES = {
    "nan": lambda raw: _set_label(raw, 0, 1, float("nan")),
    "class-1e12": lambda raw: _set_label(raw, 0, 0, 1e12),
    "class-str": lambda raw: _set_label(raw, 0, 0, "0"),
    "box-outside": lambda raw: _set_label(raw, 0, 1, 7.5),
    "rows-count": lambda raw: raw["records"][0].update(rows=raw["records"][0]["rows"] + 1),
    "shape-huge": lambda raw: raw["records"][0].update(shape=[60000, 60000]),
    "extra-field": lambda raw: raw["records"][0].update(evil=1),
    "not-a-dict": lambda raw: raw.update(records="x"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_cache_failing_the_label_checks_is_ignored(small_set, caplog_yolo, name):
    files, cache = small_set
    good = [r["labels"] for r in load_labels(files)[0]]
    _resign(cache, FORGERIES[name])
    caplog_yolo.clear()
    records, _ = load_labels(files)
    assert f"label cache {cache}:" in caplog_yolo.text and "ignored" in caplog_yolo.text
    assert "(cache)" not in caplog_yolo.text  # all verified afresh
    assert all(np.array_equal(a, r["labels"]) for a, r in zip(good, records))


def test_unsigned_or_pickled_cache_is_never_trusted_nor_unpickled(small_set, caplog_yolo, tmp_path):
    files, cache = small_set
    good = [r["labels"] for r in load_labels(files)[0]]
    head, _, payload = cache.read_bytes().partition(b"\n")
    raw = json.loads(payload)
    raw["labels"][1] = 0.125  # labels not in the .txt files, the header (and its signature) left as it was
    cache.write_bytes(head + b"\n" + json.dumps(raw).encode())
    caplog_yolo.clear()
    records, counts = load_labels(files)
    assert "signature does not match" in caplog_yolo.text and "(cache)" not in caplog_yolo.text
    assert counts["found"] == len(files)
    assert all(np.array_equal(a, r["labels"]) for a, r in zip(good, records))

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(tmp_path / "evil.npy", np.array([Evil()], dtype=object), allow_pickle=True)  # upstream's cache format
    shutil.copy(tmp_path / "evil.npy", cache)
    caplog_yolo.clear()
    assert load_cache(cache) == {} and not marker.exists()
    assert f"label cache {cache}: not a label cache of ours" in caplog_yolo.text


def test_label_files_that_cannot_be_labels_skip_their_image(tmp_path):
    from utils.limits import MAX_LABEL_BYTES

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (labels / "dir.txt").mkdir()
    os.mkfifo(labels / "fifo.txt")
    with open(labels / "bytes.txt", "wb") as f:
        f.truncate(MAX_LABEL_BYTES + 1)  # sparse: costs no disk
    (labels / "rows.txt").write_text("0 0.5 0.5 0.2 0.2\n" * (MAX_LABEL_ROWS + 1))
    (labels / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n" * MAX_LABEL_ROWS)
    (labels / "cls.txt").write_text("123456789 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    jpg = encoded(".jpg", 32, 32)
    for stem, why in (("dir", "is a directory, not a label file"), ("fifo", "FIFO"), ("bytes", "MAX_LABEL_BYTES"),
                      ("rows", "MAX_LABEL_ROWS")):
        (images / f"{stem}.jpg").write_bytes(jpg)
        r = label_files.verify_image_label(str(images / f"{stem}.jpg"), str(labels / f"{stem}.txt"))
        assert r["status"] == "corrupt" and r["shape"] is None, stem
        assert str(labels / f"{stem}.txt") in r["msg"] and why in r["msg"] and "image skipped" in r["msg"], r["msg"]
    (images / "ok.jpg").write_bytes(jpg)
    r = label_files.verify_image_label(str(images / "ok.jpg"), str(labels / "ok.txt"))
    assert r["status"] == "found" and len(r["labels"]) == 1  # the duplicates collapse, the file is within bounds
    r = label_files.verify_image_label(str(images / "ok.jpg"), str(labels / "cls.txt"))
    assert r["labels"][:, 0].tolist() == [1.0] and "class id 123456789" in r["msg"]


# ----------------------------------------------------------------------------- entry points, subprocesses
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("fuzz_images"))


@pytest.fixture(scope="module")
def bad(world):
    """A copy of the tiny dataset where every class of bad input sits beside good images -> dict of paths.

    train and val: bomb PNGs (60000x60000 and 20000x20000, claimed by 60-byte headers), a FIFO named
    like an image, a symlink loop in the folder; labels: a folder, a FIFO and a file over MAX_LABEL_ROWS
    in place of three train images' label files."""
    root = world["dir"] / "bad"
    shutil.copytree(world["data_dir"], root)
    out = {"root": root}
    for split in ("train", "val"):
        images, labels = root / "images" / split, root / "labels" / split
        (images / "bomb.png").write_bytes(png_claiming(60000, 60000))
        (labels / "bomb.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (images / "huge.png").write_bytes(png_claiming(20000, 20000))
        os.mkfifo(images / "pipe.jpg")
        (images / "loop").symlink_to(".")
        (images / "deeper").mkdir()
        (images / "deeper" / "back").symlink_to("..")
    train = sorted((root / "labels" / "train").glob("*.txt"))
    train = [f for f in train if f.stem != "bomb"]
    train[0].unlink()
    train[0].mkdir()
    train[1].unlink()
    os.mkfifo(train[1])
    train[2].write_text("0 0.5 0.5 0.2 0.2\n" * (MAX_LABEL_ROWS + 1))
    out["label_dir"], out["label_fifo"], out["label_rows"] = train[:3]
    out["yaml"] = world["dir"] / "bad.yaml"
    out["yaml"].write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                           "names": ["a", "b", "c", "d", "e", "f"]}))
    return out


def _text(r):
    return r.stdout + r.stderr


def _assert_bad_images_named(text, images):
    for name, why in (("bomb.png", "60000x60000"), ("huge.png", "20000x20000"), ("pipe.jpg", "FIFO")):
        lines = [x for x in text.splitlines() if str(images / name) in x]
        assert lines and why in lines[0] and "WARNING" in lines[0], (name, text[-3000:])


def test_val_skips_bombs_fifos_and_loops(world, bad, tmp_path):
    r = run_entry("val.py", "--weights", world["weights"], "--data", bad["yaml"], "--img", "64",
                  "--project", tmp_path)
    assert_ran_cleanly(r)
    text = _text(r)
    _assert_bad_images_named(text, bad["root"] / "images" / "val")
    assert "2 found, 0 missing, 0 empty, 2 corrupt" in text  # the 2 real images once each, loops add nothing


def test_train_skips_bad_images_and_bad_label_files(world, bad, tmp_path):
    r = run_entry("train.py", "--data", bad["yaml"], "--weights", world["weights"], "--img", "64", "--epochs", "1",
                  "--batch-size", "2", "--workers", "0", "--noplots", "--project", tmp_path)
    assert_ran_cleanly(r)
    text = _text(r)
    _assert_bad_images_named(text, bad["root"] / "images" / "train")
    for key, why in (("label_dir", "is a directory, not a label file"), ("label_fifo", "FIFO"),
                     ("label_rows", f"over the limit of {MAX_LABEL_ROWS:,}")):
        lines = [x for x in text.splitlines() if str(bad[key]) in x]
        assert lines and why in lines[0], (key, text[-3000:])
    assert "1 found, 0 missing, 0 empty, 5 corrupt" in text  # 4 real images, 3 with unusable label files
    assert (tmp_path / "exp" / "weights" / "last.pt").is_file()


def test_every_image_bad_is_one_clear_error(world, bad, tmp_path):
    only_bad = world["dir"] / "only_bad" / "images" / "val"
    only_bad.mkdir(parents=True)
    shutil.copy(bad["root"] / "images" / "val" / "bomb.png", only_bad)
    (only_bad / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)))
    data = world["dir"] / "only_bad.yaml"
    data.write_text(yaml.safe_dump({"path": str(only_bad.parents[1]), "train": "images/val", "val": "images/val",
                                    "names": ["a", "b", "c", "d", "e", "f"]}))
    r = run_entry("val.py", "--weights", world["weights"], "--data", data, "--img", "64", "--project", tmp_path)
    assert_clear_error(r, "val.py", "no usable images", str(only_bad))


def test_detect_skips_bombs_fifos_and_unreadable_videos(world, bad, tmp_path):
    src = world["dir"] / "detect_src"
    src.mkdir()
    shutil.copy(world["image"], src / "good.jpg")
    shutil.copy(bad["root"] / "images" / "val" / "bomb.png", src)
    os.mkfifo(src / "pipe.jpg")
    os.mkfifo(src / "stream.mp4")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    r = run_entry("detect.py", "--weights", world["weights"], "--source", src, "--img", "64", "--project", tmp_path)
    assert_ran_cleanly(r)
    text = _text(r)
    for name, why in (("bomb.png", "60000x60000"), ("pipe.jpg", "FIFO"), ("stream.mp4", "FIFO"),
                      ("broken.mp4", "video")):
        lines = [x for x in text.splitlines() if str(src / name) in x and "WARNING" in x]
        assert lines and why in lines[0], (name, text[-3000:])
    assert (tmp_path / "exp" / "good.jpg").is_file()

    r = run_entry("detect.py", "--weights", world["weights"], "--source", src / "bomb.png", "--img", "64",
                  "--project", tmp_path)
    assert_clear_error(r, "detect.py", "bomb.png")


def test_forged_cache_is_ignored_by_val(world, tmp_path):
    data_dir = world["dir"] / "cached"
    shutil.copytree(world["data_dir"], data_dir)
    data = world["dir"] / "cached.yaml"
    data.write_text(yaml.safe_dump({"path": str(data_dir), "train": "images/val", "val": "images/val",
                                    "names": ["a", "b", "c", "d", "e", "f"]}))
    cache = data_dir / "labels" / "val.cache"
    args = ("--weights", world["weights"], "--data", data, "--img", "64", "--project", tmp_path)
    assert_ran_cleanly(run_entry("val.py", *args))
    head, _, payload = cache.read_bytes().partition(b"\n")
    raw = json.loads(payload)
    raw["labels"] = [float("nan")] * len(raw["labels"])  # and the signature no longer matches
    cache.write_bytes(head + b"\n" + json.dumps(raw).encode())
    r = run_entry("val.py", *args)
    assert_ran_cleanly(r)
    text = _text(r)
    assert f"label cache {cache}: not written by this checkout" in text and "(cache)" not in text
    assert "2 found, 0 missing, 0 empty, 0 corrupt" in text

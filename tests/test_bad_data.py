"""A fuzzed dataset folder with every kind of bad data: no crash, one message per file, a summary."""


import cv2
import numpy as np
import pytest

from utils.dataloaders import LoadImagesAndLabels, create_dataloader


def _jpeg_bytes(seed=0, size=(48, 64)):
    im = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", im)[1].tobytes()


def make_bad_folder(root):
    """Every bad-data case of the issue, one per file. Returns {stem: expected status}."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    good = _jpeg_bytes()
    cases = {}

    def add(stem, image_bytes, label_text=None, status="found", ext="jpg"):
        (images / f"{stem}.{ext}").write_bytes(image_bytes)
        if label_text is not None:
            (labels / f"{stem}.txt").write_text(label_text)
        cases[stem] = status

    add("good", good, "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    truncated = good[:-200]  # OpenCV 5 refuses it, older versions decode the top part
    decodable = cv2.imdecode(np.frombuffer(truncated, np.uint8), cv2.IMREAD_COLOR) is not None
    add("truncated", truncated, "0 0.5 0.5 0.2 0.2\n", status="found" if decodable else "corrupt")
    add("garbage", b"\xff\xd8\xff" + bytes(range(256)) * 4, "0 0.5 0.5 0.2 0.2\n", status="corrupt")
    add("zero_bytes", b"", "0 0.5 0.5 0.2 0.2\n", status="corrupt")
    add("text_as_jpg", b"this is not an image\n", "0 0.5 0.5 0.2 0.2\n", status="corrupt")
    add("png_named_jpg", cv2.imencode(".png", np.full((40, 40, 3), 90, np.uint8))[1].tobytes(), "2 0.5 0.5 0.5 0.5\n")
    add("gray_png", cv2.imencode(".png", np.full((40, 30), 200, np.uint8))[1].tobytes(), "1 0.5 0.5 0.5 0.5\n",
        ext="png")
    add("missing_label", good, None, status="missing")
    add("empty_label", good, "", status="empty")
    add("slightly_outside", good, "0 0.5 0.5 1.004 0.2\n")  # clipped
    add("far_outside", good, "0 1.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")  # first row dropped
    add("zero_wh", good, "0 0.5 0.5 0 0.2\n0 0.5 0.5 -0.1 0.2\n", status="empty")
    add("bad_class", good, "-1 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n1.5 0.5 0.5 0.2 0.2\n0 0.4 0.4 0.2 0.2\n")
    add("nan_inf", good, "0 nan 0.5 0.2 0.2\n0 0.5 inf 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    add("wrong_columns", good, "0 0.5 0.5 0.2\n0 0.5 0.5 0.2 0.2 0.1\nhello world\n0 0.5 0.5 0.2 0.2\n")
    add("duplicates", good, "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n")
    add("polygon", good, "3 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3\n")
    add("tiny", cv2.imencode(".jpg", np.zeros((5, 5, 3), np.uint8))[1].tobytes(), "0 0.5 0.5 0.2 0.2\n",
        status="corrupt")
    (images / "notes.txt").write_text("not an image")  # non-image file in the image folder
    (images / "data.csv").write_text("a,b\n")
    return images, cases


def test_fuzzed_folder_summary_and_messages(tmp_path, caplog_yolo):
    images, cases = make_bad_folder(tmp_path / "bad")
    ds = LoadImagesAndLabels(images, img_size=64, batch_size=4, nc=6)
    text = caplog_yolo.text
    stems = {__import__("os").path.basename(f).rsplit(".", 1)[0]: i for i, f in enumerate(ds.im_files)}
    # corrupt images are excluded, everything else kept
    for stem, status in cases.items():
        if status == "corrupt":
            assert stem not in stems, stem
            assert f"{stem}." in text, f"no message for {stem}"
        else:
            assert stem in stems, stem
    # each problem reported once, naming the file
    for stem in ("png_named_jpg", "slightly_outside", "far_outside", "zero_wh", "nan_inf", "truncated",
                 "wrong_columns", "duplicates", "zero_bytes", "text_as_jpg", "garbage", "tiny"):
        assert text.count(f"{stem}.") == 1, (stem, text.count(f"{stem}."))
    assert text.count("bad_class.") == 1  # invalid ids and ids >= nc in one message
    assert "class id -1" in text and "[9] >= nc=6" in text
    assert "notes.txt" in text and "data.csv" in text
    # summary line with the counts
    c = ds.counts
    assert c["missing"] == 1 and c["empty"] == 2 and c["corrupt"] >= 4
    assert f"{c['found']} found, {c['missing']} missing, {c['empty']} empty, {c['corrupt']} corrupt" in text
    # label contents after cleaning
    lab = {s: ds.labels[i] for s, i in stems.items()}
    assert len(lab["good"]) == 2 and len(lab["duplicates"]) == 2 and len(lab["missing_label"]) == 0
    assert len(lab["far_outside"]) == 1 and len(lab["nan_inf"]) == 1 and len(lab["wrong_columns"]) == 1
    assert lab["bad_class"][:, 0].tolist() == [0.0]  # negative, >= nc and non-integer ids dropped
    xc, _, w, _ = lab["slightly_outside"][0, 1:]
    assert xc - w / 2 >= 0 and xc + w / 2 <= 1 + 1e-6
    np.testing.assert_allclose(lab["polygon"][0], [3, 0.25, 0.2, 0.3, 0.2], atol=1e-6)
    assert len(ds.segments[stems["polygon"]]) == 1
    shape_png = ds.shapes[stems["gray_png"]]
    assert tuple(shape_png) == (30, 40)  # (w, h)


def test_fuzzed_folder_loads_batches(tmp_path):
    images, _ = make_bad_folder(tmp_path / "bad")
    loader, ds = create_dataloader(images, 64, 4, 32, augment=True, workers=0, shuffle=True)
    n = 0
    for imgs, targets, paths, _ in loader:
        assert imgs.dtype.is_floating_point is False and imgs.shape[1:] == (3, 64, 64)
        assert targets.shape[1] == 6 and np.isfinite(targets.numpy()).all()
        n += len(paths)
    assert n == len(ds)


def test_cache_reuse_repeats_messages_once(tmp_path, caplog_yolo):
    images, _ = make_bad_folder(tmp_path / "bad")
    LoadImagesAndLabels(images, img_size=64)
    assert (tmp_path / "bad" / "labels.cache").is_file()
    caplog_yolo.clear()
    LoadImagesAndLabels(images, img_size=64)
    text = caplog_yolo.text
    assert "(cache)" in text and text.count("duplicates.") == 1


def test_every_image_bad_gives_one_clear_error(tmp_path):
    images = tmp_path / "allbad" / "images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"")
    (images / "b.jpg").write_bytes(b"nope")
    with pytest.raises(RuntimeError, match="no usable images"):
        LoadImagesAndLabels(images, img_size=64)


def test_empty_folder_error_names_path(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        LoadImagesAndLabels(tmp_path / "images", img_size=64)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        LoadImagesAndLabels(tmp_path / "does_not_exist", img_size=64)

"""Image lists, YOLO label files, their verification and the label cache.

Every problem is turned into one message naming the file; nothing here raises on bad data except
when no usable image is left.
"""

import glob
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from utils.boxes import segments2boxes, xywh2xyxy, xyxy2xywh
from utils.general import LOGGER, NUM_THREADS, ROOT, warn_each
from utils.image_io import IMG_FORMATS, decode_image, sniff_format

CACHE_VERSION = "yolov5-kd-labels/2"
COORD_TOLERANCE = 0.01  # normalised coords up to this far outside [0, 1] are clipped, beyond it dropped
SHARED_DIR = (ROOT.parent / "shared").resolve()  # read-only data beside the checkout: never write caches there


def img2label_paths(img_paths):
    """/a/images/b/c.jpg -> /a/labels/b/c.txt (the last /images/ becomes /labels/)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(x).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def list_image_files(path, prefix=""):
    """Image files from a folder, a glob, a .txt list (relative entries resolve against its folder),
    or a list of those. Non-image files are reported in one line per folder and skipped."""
    files, skipped = [], {}
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if "*" in str(p):
            found = sorted(glob.glob(str(p), recursive=True))
        elif p.is_dir():
            found = sorted(glob.glob(str(p / "**" / "*.*"), recursive=True))
        elif p.is_file() and p.suffix == ".txt":
            parent = p.parent
            lines = [x.strip() for x in p.read_text(errors="replace").splitlines() if x.strip()]
            found = [str(parent / x[2:]) if x.startswith("./") else (x if os.path.isabs(x) else str(parent / x))
                     for x in lines]
        elif p.is_file():
            found = [str(p)]
        else:
            raise FileNotFoundError(f"{prefix}{p} does not exist")
        for f in found:
            if f.split(".")[-1].lower() in IMG_FORMATS:
                files.append(str(Path(f)))
            elif os.path.isfile(f) and not os.path.basename(f).startswith(".") and not f.endswith((".npy", ".cache")):
                skipped.setdefault(str(Path(f).parent), []).append(os.path.basename(f))
    for folder, names in skipped.items():
        LOGGER.warning(f"{prefix}WARNING: {folder}: ignored {len(names)} non-image file(s): "
                       f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    return sorted(set(files))


def check_image(im_file):
    """-> (shape (w, h) or None, message or '')."""
    try:
        data = np.fromfile(im_file, np.uint8)
    except OSError as e:
        return None, f"{im_file}: unreadable ({e})"
    if data.size == 0:
        return None, f"{im_file}: empty file (0 bytes), ignored"
    fmt = sniff_format(data[:16].tobytes())
    im = decode_image(data)
    if im is None:
        return None, f"{im_file}: not a decodable image, ignored"
    h, w = im.shape[:2]
    if h < 10 or w < 10:
        return None, f"{im_file}: image size {w}x{h} < 10 pixels, ignored"
    ext = Path(im_file).suffix[1:].lower()
    notes = []
    if fmt and ext in ("jpg", "jpeg") and fmt != "jpeg":
        notes.append(f"{fmt.upper()} data with a .{ext} name (read fine)")
    if fmt == "jpeg" and not data[-2:].tobytes() == b"\xff\xd9":
        notes.append("truncated JPEG (no end marker), lower part may be grey")
    return (w, h), (f"{im_file}: " + "; ".join(notes)) if notes else ""


def _parse_rows(lb_file, text):
    """Label text -> (boxes (n, 5) float32, segments list, problems list)."""
    boxes, segments, problems, has_box_rows = [], [], [], False
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = np.array([float(x) for x in parts], dtype=np.float64)
        except ValueError:
            problems.append(f"line {k}: not numbers")
            continue
        if len(values) == 5:
            has_box_rows = True
            row, seg = values, None
        elif len(values) >= 7 and len(values) % 2 == 1:  # class + polygon x, y pairs
            seg = values[1:].reshape(-1, 2)
            if not np.isfinite(seg).all():
                problems.append(f"line {k}: NaN/inf")
                continue
            row = np.concatenate([values[:1], segments2boxes([seg])[0]])
        else:
            problems.append(f"line {k}: {len(values)} columns (want 5, or class + polygon)")
            continue
        if not np.isfinite(row).all():
            problems.append(f"line {k}: NaN/inf")
            continue
        cls = row[0]
        if cls < 0 or cls != int(cls):
            problems.append(f"line {k}: class id {parts[0]} is not a non-negative integer")
            continue
        xyxy = xywh2xyxy(row[None, 1:5])[0]
        if row[3] <= 0 or row[4] <= 0:
            problems.append(f"line {k}: width/height <= 0")
            continue
        if (xyxy < -COORD_TOLERANCE).any() or (xyxy > 1 + COORD_TOLERANCE).any():
            problems.append(f"line {k}: box outside the image")
            continue
        if (xyxy < 0).any() or (xyxy > 1).any():
            row[1:5] = xyxy2xywh(xyxy.clip(0, 1)[None])[0]
            problems.append(f"line {k}: clipped to the image")
            if row[3] <= 0 or row[4] <= 0:
                continue
        boxes.append(row)
        segments.append(None if seg is None else seg.clip(0, 1).astype(np.float32))
    lb = np.array(boxes, dtype=np.float32).reshape(-1, 5)
    if has_box_rows or any(s is None for s in segments):
        segments = []  # mixed files: boxes only
    if len(lb):
        _, first = np.unique(lb, axis=0, return_index=True)
        if len(first) < len(lb):
            problems.append(f"{len(lb) - len(first)} duplicate row(s) removed")
            keep = np.sort(first)
            lb = lb[keep]
            segments = [segments[i] for i in keep] if segments else []
    return lb, segments, problems


def verify_image_label(im_file, lb_file):
    """Check one image and its label file.

    Returns dict(im_file, labels (n, 5), shape (w, h), segments, status, msg) where status is one of
    'found', 'missing', 'empty', 'corrupt'. Corrupt images carry shape None.
    """
    shape, msg = check_image(im_file)
    out = {"im_file": im_file, "labels": np.zeros((0, 5), np.float32), "shape": shape, "segments": [],
           "status": "corrupt", "msg": msg}
    if shape is None:
        return out
    if not os.path.isfile(lb_file):
        out["status"] = "missing"
        return out
    try:
        text = Path(lb_file).read_text(errors="replace")
    except OSError as e:
        out["msg"] = f"{lb_file}: unreadable label file ({e}), image used as background"
        out["status"] = "missing"
        return out
    lb, segments, problems = _parse_rows(lb_file, text)
    if problems:
        note = f"{lb_file}: " + "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        out["msg"] = f"{msg}\n{note}" if msg else note
    out.update(labels=lb, segments=segments, status="found" if len(lb) else "empty")
    return out


def file_key(im_file, lb_file):
    """What a cached record depends on: the image's size and mtime_ns, the label file's content (MD5).

    Labels are hashed, not stat-ed, so an edit that keeps the byte count and the timestamp still counts."""
    try:
        st = os.stat(im_file)
        im_key = [st.st_size, st.st_mtime_ns]
    except OSError:
        im_key = None
    try:
        lb_key = hashlib.md5(Path(lb_file).read_bytes()).hexdigest()
    except OSError:
        lb_key = None
    return [im_key, lb_key]


def cache_path_for(label_files):
    """labels/train.cache beside the labels, or ROOT/runs/cache/... when that place is read-only."""
    preferred = Path(label_files[0]).parent.with_suffix(".cache")
    if writable(preferred.parent):
        return preferred
    return fallback_cache_dir("labels", preferred.parent) / preferred.name


def fallback_cache_dir(kind, original_folder):
    """ROOT/runs/cache/<kind>/<key of the original folder>: where caches go when the data is read-only."""
    key = hashlib.md5(str(Path(original_folder).resolve()).encode()).hexdigest()[:12]
    return ROOT / "runs" / "cache" / kind / key


def writable(folder):
    """True for an existing folder we may write into: never ../shared, and never a folder without
    write bits (root passes os.access everywhere, so the bits are checked too)."""
    folder = Path(folder).resolve()
    if folder == SHARED_DIR or SHARED_DIR in folder.parents:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def save_cache(path, records):
    """Write the verified labels with their per-file keys as JSON (no pickle). Failure is a one-line note."""
    data = {"version": CACHE_VERSION, "records": [
        {"im_file": r["im_file"], "key": r["key"], "labels": r["labels"].tolist(), "shape": r["shape"],
         "segments": [s.tolist() for s in r["segments"]], "status": r["status"], "msg": r["msg"]}
        for r in records]}
    path = Path(path)
    if not writable(path.parent):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    if not writable(path.parent):
        LOGGER.info(f"Note: cache directory {path.parent} is not writable, labels not cached")
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        return True
    except OSError as e:
        LOGGER.info(f"Note: could not write label cache {path} ({e}), labels not cached")
        tmp.unlink(missing_ok=True)
        return False


def load_cache(path):
    """{im_file: record} from a cache file of ours ({} when absent, foreign or damaged)."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        out = {}
        for r in data["records"]:
            r["labels"] = np.array(r["labels"], dtype=np.float32).reshape(-1, 5)
            r["segments"] = [np.array(s, dtype=np.float32).reshape(-1, 2) for s in r["segments"]]
            r["shape"] = tuple(r["shape"]) if r["shape"] else None
            out[r["im_file"]] = r
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def verify_all(im_files, label_files, prefix=""):
    """Verify every image/label pair in a thread pool (OpenCV releases the GIL)."""
    with ThreadPoolExecutor(NUM_THREADS) as pool:
        return list(pool.map(verify_image_label, im_files, label_files))


def cached_or_verified(im_files, label_files, cache_file):
    """Records for the images: from the cache where a file's key still matches, else verified now.

    Returns (records, number re-verified); the cache is rewritten when anything changed."""
    cached = load_cache(cache_file)
    keys = [file_key(f, lb) for f, lb in zip(im_files, label_files)]
    records = [cached.get(f) if cached.get(f, {}).get("key") == k else None for f, k in zip(im_files, keys)]
    stale = [i for i, r in enumerate(records) if r is None]
    fresh = verify_all([im_files[i] for i in stale], [label_files[i] for i in stale])
    for i, r in zip(stale, fresh):
        r["key"] = keys[i]
        records[i] = r
    if stale or len(cached) != len(records):
        save_cache(cache_file, records)
    return records, len(stale)


def drop_classes(record, nc):
    """Drop rows with class id >= nc from one record (in place), adding the problem to its message."""
    lb = record["labels"]
    bad = lb[:, 0] >= nc
    if not bad.any():
        return
    ids = sorted({int(c) for c in lb[bad, 0]})
    note = f"class id(s) {ids} >= nc={nc}, {int(bad.sum())} row(s) dropped"
    lb_file = img2label_paths([record["im_file"]])[0]
    lines = record["msg"].split("\n") if record["msg"] else []
    mine = [k for k, line in enumerate(lines) if line.startswith(f"{lb_file}: ")]
    if mine:  # one message per file: join the label file's line
        lines[mine[0]] += f"; {note}"
    else:
        lines.append(f"{lb_file}: {note}")
    msg = "\n".join(lines)
    segments = [s for s, b in zip(record["segments"], bad) if not b] if record["segments"] else []
    record.update(labels=lb[~bad], segments=segments, msg=msg,
                  status=record["status"] if len(lb[~bad]) else "empty")


def summarize(records):
    """'N found, M missing, E empty, C corrupt' counts as a dict."""
    counts = {"found": 0, "missing": 0, "empty": 0, "corrupt": 0}
    for r in records:
        counts[r["status"]] += 1
    return counts


def load_labels(im_files, prefix="", max_messages=100, nc=None):
    """Verified records for the images (from the cache where still valid), one message per file.

    Rows with class id >= nc are dropped when nc is given. Raises with one clear message when no
    usable image is left.
    """
    label_files = img2label_paths(im_files)
    records, n_checked = cached_or_verified(im_files, label_files, cache_path_for(label_files))
    records = [dict(r) for r in records]  # the class filter below must not reach the cache
    if nc is not None:
        for r in records:
            if r["shape"] is not None:
                drop_classes(r, nc)
    from_cache = "" if n_checked == len(records) else " (cache)" if not n_checked else f" (cache, {n_checked} re-checked)"
    msgs = [r["msg"] for r in records if r["msg"]]
    warn_each(msgs, prefix, max_messages)
    c = summarize(records)
    where = Path(label_files[0]).parent if label_files else ""
    LOGGER.info(f"{prefix}Scanning {where}{from_cache}: {c['found']} found, "
                f"{c['missing']} missing, {c['empty']} empty, {c['corrupt']} corrupt")
    good = [r for r in records if r["status"] != "corrupt"]
    if not good:
        raise RuntimeError(f"{prefix}no usable images in {Path(im_files[0]).parent if im_files else '?'}: "
                           f"all {len(records)} image(s) are corrupt or unreadable (see the warnings above)")
    return good, c

"""YOLO label files and their verification (image lists: utils.file_listing; the cache: utils.label_cache).

Every problem is turned into one message naming the file; nothing here raises on bad data except
when no usable image is left.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from utils.boxes import segments2boxes, xywh2xyxy, xyxy2xywh
from utils.cli import UserError
from utils.file_listing import list_image_files  # noqa: F401  (re-exported: where callers look for it)
from utils.general import LOGGER, NUM_THREADS, warn_each
from utils.image_io import decode_checked, read_image_bytes, read_regular, sniff_format
from utils.label_cache import (CACHE_BASE_BYTES, CACHE_BYTES_PER_IMAGE, CACHE_BYTES_PER_LABEL_BYTE, MAX_CACHE_BYTES,
                               cache_path_for, load_cache, save_cache)
from utils.limits import MAX_LABEL_BYTES, MAX_LABEL_ROWS, MAX_NAMES

COORD_TOLERANCE = 0.01  # normalised coords up to this far outside [0, 1] are clipped, beyond it dropped


class NoUsableImages(UserError, RuntimeError):
    """Every image of a split is corrupt or unreadable (a user error: one line naming the folder)."""


def img2label_paths(img_paths):
    """/a/images/b/c.jpg -> /a/labels/b/c.txt (the last /images/ becomes /labels/)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(x).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]



def check_image(im_file):
    """-> (shape (w, h) or None, message or ''). The header's claimed size is checked before decoding
    (utils.image_io.decode_checked); a FIFO or device is never opened for reading."""
    data, problem = read_image_bytes(im_file)
    if data is None:
        return None, f"{im_file}: {problem}, ignored"
    im, problem = decode_checked(data)
    if im is None:
        return None, f"{im_file}: {problem}, ignored"
    fmt = sniff_format(data[:16].tobytes())
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


def read_label_file(lb_file):
    """-> (bytes, None) for a usable label file; (None, 'missing') when there is none; else (None, problem).

    Only a regular file of at most MAX_LABEL_BYTES is read (opened without blocking: a FIFO never hangs)."""
    data, _, problem = read_regular(lb_file, MAX_LABEL_BYTES)
    if problem == "is a directory":
        return None, "is a directory, not a label file"
    if problem and problem.startswith("file of"):
        return None, f"{problem} for one label file (MAX_LABEL_BYTES)"
    return data, problem


def _count_rows(data):
    """Non-blank lines of label bytes, counted only when there may be more than MAX_LABEL_ROWS."""
    if data.count(b"\n") < MAX_LABEL_ROWS:
        return 0
    return sum(1 for line in data.splitlines() if line.strip())


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
        if cls < 0 or cls != int(cls) or cls >= MAX_NAMES:
            problems.append(f"line {k}: class id {parts[0][:20]} is not a non-negative integer"
                            + (f" below {MAX_NAMES:,}" if cls >= MAX_NAMES else ""))
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
    'found', 'missing', 'empty', 'corrupt'. Corrupt images carry shape None. A label path that is there
    but cannot be a label file (a folder, a FIFO or device, over MAX_LABEL_BYTES or MAX_LABEL_ROWS) makes
    the image corrupt: its labels are unknown, so it is neither trained on nor scored as background."""
    shape, msg = check_image(im_file)
    out = {"im_file": im_file, "labels": np.zeros((0, 5), np.float32), "shape": shape, "segments": [],
           "status": "corrupt", "msg": msg}
    if shape is None:
        return out
    data, problem = read_label_file(lb_file)
    if problem == "missing":
        out["status"] = "missing"
        return out
    rows = _count_rows(data) if problem is None else 0
    refused = rows > MAX_LABEL_ROWS
    if refused:
        problem = f"{rows:,} rows, over the limit of {MAX_LABEL_ROWS:,} for one label file (MAX_LABEL_ROWS)"
    if problem and (refused or not problem.startswith("unreadable")):
        note = f"{lb_file}: {problem}, image skipped"
        out.update(shape=None, msg=f"{msg}\n{note}" if msg else note)
        return out
    if problem:
        note = f"{lb_file}: {problem.replace('unreadable', 'unreadable label file', 1)}, image used as background"
        out.update(status="missing", msg=f"{msg}\n{note}" if msg else note)
        return out
    lb, segments, problems = _parse_rows(lb_file, data.decode(errors="replace"))
    if problems:
        note = f"{lb_file}: " + "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        out["msg"] = f"{msg}\n{note}" if msg else note
    out.update(labels=lb, segments=segments, status="found" if len(lb) else "empty")
    return out


def file_key(im_file, lb_file):
    """What a cached record depends on: the image's size and mtime_ns, the label file's content (MD5).

    Labels are hashed, not stat-ed, so an edit that keeps the byte count and the timestamp still counts.
    A label path that cannot be read as a label file is keyed by what it is (its problem). Returns
    (key, bytes of the label file read)."""
    try:
        st = os.stat(im_file)
        im_key = [st.st_size, st.st_mtime_ns]
    except OSError:
        im_key = None
    data, problem = read_label_file(lb_file)
    if data is not None:
        return [im_key, hashlib.md5(data).hexdigest()], len(data)
    return [im_key, None if problem == "missing" else f"!{problem}"], 0



def verify_all(im_files, label_files, prefix=""):
    """Verify every image/label pair in a thread pool (OpenCV releases the GIL)."""
    with ThreadPoolExecutor(NUM_THREADS) as pool:
        return list(pool.map(verify_image_label, im_files, label_files))


def cached_or_verified(im_files, label_files, cache_file, prefix=""):
    """Records for the images: from the cache where a file's key still matches, else verified now.

    Returns (records, number re-verified); the cache is rewritten when anything changed."""
    keys, label_bytes = [], 0
    for f, lb in zip(im_files, label_files):
        key, n = file_key(f, lb)
        keys.append(key)
        label_bytes += n
    max_bytes = CACHE_BASE_BYTES + CACHE_BYTES_PER_IMAGE * len(im_files) + CACHE_BYTES_PER_LABEL_BYTE * label_bytes
    cached = load_cache(cache_file, min(max_bytes, MAX_CACHE_BYTES), prefix)
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
    records, n_checked = cached_or_verified(im_files, label_files, cache_path_for(label_files), prefix)
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
        raise NoUsableImages(f"{prefix}no usable images in {Path(im_files[0]).parent if im_files else '?'}: "
                             f"all {len(records)} image(s) are corrupt or unreadable (see the warnings above)")
    return good, c

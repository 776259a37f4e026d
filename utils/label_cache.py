"""The label cache: verified labels with per-file keys as signed JSON (never pickle), re-checked on load.

A cache is used only when it carries this checkout's signature (HMAC-SHA256 with a key kept under
ROOT/runs/cache) and its content passes the same checks fresh labels pass (check_records); anything
else is ignored with one warning naming it, and the labels are verified afresh.
"""

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import numpy as np

from utils.general import LOGGER, ROOT
from utils.image_io import read_regular, size_problem
from utils.limits import MAX_LABEL_BYTES, MAX_LABEL_ROWS, MAX_NAMES

CACHE_VERSION = "yolov5-kd-labels/3"  # /3: a signed header line, then the records (/2 was unsigned)
CACHE_KEY_NAME = "label-cache.key"  # under ROOT/runs/cache: the key our caches are signed with
MAX_CACHE_BYTES = 4 << 30  # one label cache file, whatever its dataset
CACHE_BASE_BYTES, CACHE_BYTES_PER_IMAGE, CACHE_BYTES_PER_LABEL_BYTE = 1 << 20, 8 << 10, 16  # a cache's bound
MAX_MESSAGE_CHARS = 20_000  # one cached problem message
MAX_POLYGON_POINTS = MAX_LABEL_BYTES // 4  # one polygon (a label file holds at most that many "x y " pairs)
SHARED_DIR = (ROOT.parent / "shared").resolve()  # read-only data beside the checkout: never write caches there
_SECRETS = {}  # key file -> key (or None), read once per process


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


def _cache_secret():
    """This checkout's key for label caches (ROOT/runs/cache/label-cache.key, made once, mode 0600), or None
    when it cannot be kept (then caches are neither written nor read)."""
    f = ROOT / "runs" / "cache" / CACHE_KEY_NAME
    if f in _SECRETS:
        return _SECRETS[f]
    key = None
    try:
        if not f.is_file():
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            try:
                os.link(tmp, f)  # atomic: a process that got there first keeps its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        data, _, problem = read_regular(f, 1024)
        text = data.decode("ascii", "replace").strip() if data else ""
        if problem is None and len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            key = bytes.fromhex(text)
    except OSError:
        key = None
    if key is None:
        LOGGER.info(f"Note: no key for label caches at {f} (not writable), labels are verified without a cache")
    _SECRETS[f] = key
    return key


def _mac(key, payload):
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def save_cache(path, records):
    """Write the verified labels with their per-file keys as JSON (no pickle), signed with this checkout's
    key (_cache_secret): a header line {version, mac}, then {records, labels, points}, where labels and
    points are the rows of all records as one flat list each (fast to read back and to check as one
    array), and each record says how many rows and polygon points are its own. Failure is a one-line note."""
    secret = _cache_secret()
    if secret is None:
        return False
    labels = [r["labels"].reshape(-1) for r in records]
    points = [seg.reshape(-1) for r in records for seg in r["segments"]]
    payload = json.dumps({
        "records": [{"im_file": r["im_file"], "key": r["key"], "shape": r["shape"], "status": r["status"],
                     "msg": r["msg"], "rows": len(r["labels"]), "polygons": [len(seg) for seg in r["segments"]]}
                    for r in records],
        "labels": np.concatenate(labels).tolist() if labels else [],
        "points": np.concatenate(points).tolist() if points else []}).encode()
    header = json.dumps({"version": CACHE_VERSION, "mac": _mac(secret, payload)}).encode()
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
        tmp.write_bytes(header + b"\n" + payload)
        os.replace(tmp, path)
        return True
    except OSError as e:
        LOGGER.info(f"Note: could not write label cache {path} ({e}), labels not cached")
        tmp.unlink(missing_ok=True)
        return False


class _BadCache(ValueError):
    """A label cache that is not one we wrote, or whose content fails the label checks."""


_RECORD_FIELDS = frozenset(("im_file", "key", "shape", "status", "msg", "rows", "polygons"))
_STATUSES = frozenset(("found", "missing", "empty", "corrupt"))


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _flat_numbers(values, n, what):
    """A flat list of n numbers -> float64 array; _BadCache for anything else (strings, lists, bools, NaN)."""
    if not isinstance(values, list) or len(values) != n:
        raise _BadCache(f"{what}: {len(values) if isinstance(values, list) else 'no'} values where the records "
                        f"account for {n}")
    try:
        a = np.array(values) if values else np.zeros(0)
    except (ValueError, TypeError, OverflowError):
        raise _BadCache(f"{what} are not numbers") from None
    if a.ndim != 1 or a.dtype.kind not in "iuf":
        raise _BadCache(f"{what} are not numbers (dtype {a.dtype})")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise _BadCache(f"{what} hold NaN/inf")
    return a


def check_records(raw):
    """The parsed JSON of a cache -> {im_file: record} with numpy labels and segments, after the checks a
    fresh verification passes: field names and types, rows of 5 finite numbers, class ids integer in
    [0, MAX_NAMES), boxes of positive size inside the image, polygons of >= 3 points inside it (one per
    box), at most MAX_LABEL_ROWS rows, an image size within utils.limits, a status that fits the labels.
    _BadCache names the first failure. The numeric checks run once over all rows (vectorised)."""
    if not isinstance(raw, dict) or set(raw) != {"records", "labels", "points"} or not isinstance(raw["records"], list):
        raise _BadCache("not the layout we write")
    out, n_rows, n_points = {}, [], []
    for r in raw["records"]:
        if not isinstance(r, dict) or set(r) != _RECORD_FIELDS:
            raise _BadCache("a record without the fields we write")
        f, rows, polygons, shape, status, msg = (r[k] for k in ("im_file", "rows", "polygons", "shape", "status", "msg"))
        if not isinstance(f, str) or f in out:
            raise _BadCache(f"record for {str(f)[:80]!r}: not a file name, or a second record for it")
        where = f"record for {f[:200]}"
        if status not in _STATUSES or not isinstance(msg, str) or len(msg) > MAX_MESSAGE_CHARS:
            raise _BadCache(f"{where}: bad status or message")
        if not _is_int(rows) or not 0 <= rows <= MAX_LABEL_ROWS:
            raise _BadCache(f"{where}: {str(rows)[:20]} label rows (0..{MAX_LABEL_ROWS:,})")
        if (status == "corrupt") != (shape is None):
            raise _BadCache(f"{where}: status {status!r} with image size {str(shape)[:40]}")
        if shape is not None:
            if not (isinstance(shape, list) and len(shape) == 2 and all(map(_is_int, shape))) \
                    or min(shape) < 10 or size_problem(*shape):
                raise _BadCache(f"{where}: image size {str(shape)[:40]} is not one a check can pass")
        if (status == "found") != (rows > 0):
            raise _BadCache(f"{where}: status {status!r} with {rows} label row(s)")
        if not isinstance(polygons, list) or (polygons and len(polygons) != rows) \
                or not all(_is_int(k) and 3 <= k <= MAX_POLYGON_POINTS for k in polygons):
            raise _BadCache(f"{where}: polygons that are not one of 3..{MAX_POLYGON_POINTS:,} points per box")
        n_rows.append(rows)
        n_points.extend(polygons)
        out[f] = r
    labels = _flat_numbers(raw["labels"], 5 * sum(n_rows), "labels").reshape(-1, 5)
    cls, (xc, yc, w, h) = labels[:, 0], labels[:, 1:].T
    tol = 1e-5  # float32 rounding of boxes clipped to [0, 1]
    if ((cls < 0) | (cls >= MAX_NAMES) | (cls != np.floor(cls))).any():
        raise _BadCache(f"class ids that are not integers in [0, {MAX_NAMES:,})")
    if ((w <= 0) | (h <= 0) | (xc - w / 2 < -tol) | (yc - h / 2 < -tol) | (xc + w / 2 > 1 + tol)
            | (yc + h / 2 > 1 + tol)).any():
        raise _BadCache("boxes of no size or outside the image")
    points = _flat_numbers(raw["points"], 2 * sum(n_points), "polygon points").reshape(-1, 2)
    if ((points < 0) | (points > 1)).any():
        raise _BadCache("polygon points outside the image")
    labels = np.split(labels.astype(np.float32), np.cumsum(n_rows)[:-1]) if n_rows else []
    points = np.split(points.astype(np.float32), np.cumsum(n_points)[:-1]) if n_points else []
    k = 0
    for r, lb in zip(out.values(), labels):
        n = len(r.pop("polygons"))
        del r["rows"]
        r["labels"], r["segments"] = lb, points[k:k + n]
        r["shape"] = tuple(r["shape"]) if r["shape"] else None
        k += n
    return out


def load_cache(path, max_bytes=None, prefix=""):
    """{im_file: record} from a cache file of ours ({} when absent). A cache that is not ours (a foreign
    format or version, no valid signature of this checkout, over max_bytes) or that fails the label checks
    (check_records) is ignored with one warning naming it, and the labels are verified afresh."""
    data, _, problem = read_regular(path, MAX_CACHE_BYTES if max_bytes is None else max_bytes)
    if problem == "missing":
        return {}
    try:
        if problem:
            raise _BadCache(problem)
        head, _, payload = data.partition(b"\n")
        try:
            header = json.loads(head)
        except (ValueError, RecursionError):
            raise _BadCache("not a label cache of ours (no JSON header line)") from None
        version = header.get("version") if isinstance(header, dict) else None
        if version != CACHE_VERSION:
            raise _BadCache(f"not a label cache of this version (version {str(version)[:40]!r}, "
                            f"this one writes {CACHE_VERSION!r})")
        secret = _cache_secret()
        if secret is None:
            return {}
        mac = header.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(secret, payload)):
            raise _BadCache("not written by this checkout (its signature does not match)")
        try:
            raw = json.loads(payload)
        except (ValueError, RecursionError):
            raise _BadCache("records are not valid JSON") from None
        return check_records(raw)
    except _BadCache as e:
        LOGGER.warning(f"{prefix}WARNING: label cache {path}: {e}; ignored, labels verified afresh")
        return {}

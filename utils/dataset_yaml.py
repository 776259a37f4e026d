"""Dataset YAML -> resolved dict (absolute paths, names as {int: str}, nc), generating local data on demand.

`download:` may only name a generator shipped in this repo's data/scripts/ (GENERATORS, by relative path),
run as `python SCRIPT [its options] --out <dataset path>` when the val split is missing. A dataset YAML is
data, not code: URLs, other scripts and shell commands are refused, never run.
"""

import re
import subprocess
import sys
from pathlib import Path

from utils.cli import UserError
from utils.general import LOGGER, ROOT, yaml_load
from utils.limits import GENERATOR_TIMEOUT_S, MAX_NAMES, check_names

SPLITS = ("train", "val", "test")
SCRIPTS_DIR = "data/scripts"
GENERATORS = ("make_synthetic.py",)  # the only scripts a dataset YAML's `download:` may run
SAFE_ARG = re.compile(r"--?[A-Za-z][\w-]*|[\w.+-]+")  # option names and plain values, nothing else


class DatasetDownloadError(UserError, FileNotFoundError):
    """A dataset that is missing and that its YAML's `download:` may not (or could not) create."""


def _resolve_root(path_value, yaml_dir):
    """`path:` relative to the YAML's folder when that exists, else relative to the repo root."""
    p = Path(path_value).expanduser()
    if p.is_absolute():
        return p
    candidates = ([(yaml_dir / p).resolve()] if yaml_dir else []) + [(ROOT / p).resolve()]
    for c in candidates:
        if c.exists():
            return c
    return candidates[-1]


def _split_paths(value, root):
    """One entry (str or list) -> absolute path string(s)."""
    def one(x):
        p = Path(str(x)).expanduser()
        return str(p if p.is_absolute() else (root / p).resolve())
    return [one(x) for x in value] if isinstance(value, (list, tuple)) else one(value)


def _missing(paths):
    return [p for p in (paths if isinstance(paths, list) else [paths]) if not Path(p).exists()]


def generator_command(download, root, source):
    """The command for a ``download:`` entry: only a generator shipped in data/scripts/, by relative path.

    A dataset YAML is data from someone else: it may name one of GENERATORS (with its own options),
    never a URL, an absolute path, another script or a shell command. Raises DatasetDownloadError.
    """
    text = str(download).strip()
    shipped = ", ".join(f"{SCRIPTS_DIR}/{g}" for g in GENERATORS)
    fetch = f"fetch or generate the dataset yourself into {root}"
    if "://" in text:
        raise DatasetDownloadError(f"{source}: dataset not found at {root}; this YAML wants to download {text}, "
                                   f"which yolov5-kd never does by itself: {fetch}")
    parts = text.split()
    if parts and parts[0] in ("python", "python3"):
        parts = parts[1:]
    script = parts[0] if parts else ""
    if script not in {f"{SCRIPTS_DIR}/{g}" for g in GENERATORS} or not (ROOT / script).is_file():
        raise DatasetDownloadError(f"{source}: 'download: {text}' is not allowed: a dataset YAML may only name a "
                                   f"generator shipped with yolov5-kd ({shipped}); {fetch}")
    bad = [a for a in parts[1:] if not SAFE_ARG.fullmatch(a)]
    if bad:
        raise DatasetDownloadError(f"{source}: 'download: {text}': argument {bad[0]!r} is not a plain option")
    return [sys.executable, str(ROOT / script), *parts[1:], "--out", str(root)]


def _die_with_parent():
    """In the generator child (Linux): receive SIGKILL when the parent dies, so a killed run leaves nothing behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run_download(download, root, source):
    """Generate a missing dataset with a shipped generator (see generator_command); nothing else runs.

    The generator bounds its own options (utils.limits.GENERATOR_IMAGES); it runs in its own process group,
    for at most GENERATOR_TIMEOUT_S, and is killed with this process (interrupt, timeout or kill)."""
    cmd = generator_command(download, root, source)
    LOGGER.info(f"Dataset not found, generating it: {' '.join(cmd)}")
    linux = sys.platform.startswith("linux")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent if linux else None)
    try:
        _, err = proc.communicate(timeout=GENERATOR_TIMEOUT_S)
    except BaseException as e:  # timeout, Ctrl-C, SystemExit: the generator goes with us
        proc.kill()
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            raise DatasetDownloadError(f"{source}: generator {cmd[1]} ran past {GENERATOR_TIMEOUT_S} s and was "
                                       f"stopped") from None
        raise
    if proc.returncode != 0:
        lines = [line for line in err.splitlines() if ": error: " in line] or err.strip().splitlines()[-1:]
        raise DatasetDownloadError(f"{source}: generator {cmd[1]} failed: {lines[0] if lines else proc.returncode}")


def check_dataset(data, autodownload=True):
    """Parse and check a dataset YAML (path or dict). Returns a dict with absolute 'path', 'train', 'val',
    optional 'test' and 'unlabeled', 'names' {int: str}, 'nc', and any other keys of the YAML."""
    yaml_dir = None
    if isinstance(data, (str, Path)):
        source = Path(data)
        if not source.is_file() and not source.is_absolute() and (ROOT / source).is_file():
            source = ROOT / source
        if not source.is_file():
            raise FileNotFoundError(f"dataset YAML {data} not found")
        d = yaml_load(source)
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a dataset YAML must be a mapping with train/val/names keys")
        yaml_dir = source.resolve().parent
        d["yaml_file"] = str(source)
    elif isinstance(data, dict):
        d, source = dict(data), "dataset dict"
    else:
        raise TypeError(f"check_dataset expects a YAML path or a dict, not {type(data).__name__}")

    for k in ("train", "val"):
        if k not in d:
            raise ValueError(f"{source}: '{k}:' key missing (a dataset YAML needs train, val and names)")
    nc = d.get("nc")
    if nc is not None and not (isinstance(nc, int) and not isinstance(nc, bool) and 0 < nc <= MAX_NAMES):
        raise ValueError(f"{source}: nc={str(nc)[:40]!r} must be a whole number of classes in 1..{MAX_NAMES:,}")
    if "names" not in d:
        if nc is None:
            raise ValueError(f"{source}: 'names:' missing (list the class names, in class-id order)")
        d["names"] = [f"class{i}" for i in range(nc)]
        LOGGER.warning(f"WARNING: {source}: no 'names', using class0..class{nc - 1}")
    d["names"] = check_names(d["names"], f"{source}: 'names'", error=ValueError)
    if nc is not None and nc != len(d["names"]):
        raise ValueError(f"{source}: nc={nc} but {len(d['names'])} names are given")
    d["nc"] = len(d["names"])

    root = _resolve_root(d.get("path") or ".", yaml_dir)
    d["path"] = str(root)
    for k in SPLITS:
        if d.get(k):
            d[k] = _split_paths(d[k], root)
        elif k == "test":
            d.pop(k, None)
    if d.get("unlabeled"):  # images without labels (train_kd.py --unlabeled), resolved like the splits
        d["unlabeled"] = _split_paths(d["unlabeled"], root)

    missing = _missing(d["val"])
    if missing and d.get("download") and autodownload:
        run_download(d["download"], root, source)
        missing = _missing(d["val"])
    if missing:
        hint = "" if d.get("download") else " (and the YAML has no 'download:' to create it)"
        raise FileNotFoundError(f"{source}: val path(s) not found: {', '.join(missing)}{hint}")
    missing_train = _missing(d["train"])
    if missing_train:  # validation alone still works; training fails later naming the path
        LOGGER.warning(f"WARNING: {source}: train path(s) not found: {', '.join(missing_train)}")
    return d

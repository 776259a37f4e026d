"""Our output folders and files: finding earlier runs on disk (for --resume without a path), and writing
outputs so that any failure (read-only or full disk, a file where a folder should be, no encoder) is one
OutputError naming the path: "cannot write runs/x/weights/last.pt: [Errno 28] No space left on device".

utils.cli.run_cli shows an OutputError as one line (it is a UserError and an OSError with .filename).
"""

import glob
import os
from contextlib import contextmanager
from pathlib import Path

from utils.cli import UserError


class OutputError(UserError, OSError):
    """An output of ours (folder or file) that could not be written; str() names the path and the reason."""

    def __init__(self, path, reason, errno=None):
        OSError.__init__(self, errno, reason)
        self.filename, self.reason = str(path), reason

    def __str__(self):
        return f"cannot write {self.filename}: {self.reason}"

    def __reduce__(self):
        return type(self), (self.filename, self.reason, self.errno)


def _reason(e, path):
    """'[Errno 28] No space left on device' (plus the path the OS named, when it is another one)."""
    if not isinstance(e, OSError) or e.errno is None:
        return str(e).strip().split("\n")[0] or type(e).__name__
    other = e.filename if e.filename is not None and str(e.filename) != str(path) else None
    return f"[Errno {e.errno}] {e.strerror}" + (f": {other}" if other is not None else "")


@contextmanager
def writing(path):
    """Around the write of ``path``: an OSError inside (opening, writing, closing, renaming) becomes an
    OutputError naming ``path``; an OutputError from a nested write passes unchanged."""
    try:
        yield Path(path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(path, _reason(e, path), e.errno) from e


def make_dir(path):
    """mkdir -p ``path`` (OutputError naming it when that fails) -> Path."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def imwrite(path, im):
    """cv2.imwrite ``im`` to ``path``; cv2 answers a failed write with False (or cv2.error for an extension it
    cannot encode) instead of raising: OutputError naming the path then. -> Path."""
    import cv2

    path = Path(path)
    try:
        ok = cv2.imwrite(str(path), im)
    except cv2.error as e:
        raise OutputError(path, f"OpenCV cannot encode it ({_reason(e, path)})") from None
    if not ok:
        why = ("its folder does not exist" if not path.parent.is_dir() else
               "it is a folder" if path.is_dir() else
               f"cv2.imwrite failed (read-only folder, full disk, or no encoder for '{path.suffix}')")
        raise OutputError(path, why)
    return path


def refuse_folder_in_the_way(path):
    """Before a long job that ends by writing the file ``path``: OutputError when a folder has that name."""
    if Path(path).is_dir():
        raise OutputError(path, "a folder of that name is in the way")


def latest_run(search_dir="."):
    """The most recently created last*.pt below search_dir; FileNotFoundError when there is none."""
    runs = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {search_dir}; pass the checkpoint path")
    return max(runs, key=os.path.getctime)

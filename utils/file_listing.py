"""Listing image files from folders, globs and .txt lists: regular files only, each real folder once.

A FIFO, socket or device named like an image is skipped with a warning (reading it would block); a
symlink loop adds nothing; a file reached by two paths is listed once.
"""

import glob
import os
import re
import stat
from pathlib import Path

from utils.general import LOGGER
from utils.image_io import IMG_FORMATS, file_kind, read_regular

MAX_LIST_BYTES = 256 << 20  # one .txt list of image paths (COCO train2017's list: 5 MB)


def _glob_regex(parts):
    """Glob components after the literal base (``**`` = any folders) -> compiled regex over '/'-joined paths."""
    rx = []
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            rx.append(".*" if last else "(?:[^/]*/)*")
            continue
        i, out = 0, []
        while i < len(part):
            c = part[i]
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[" and part.find("]", i + 2) > 0:  # a class; a ']' right after '[' (or '[!') is a member
                j = part.find("]", i + 2 if part[i + 1:i + 2] != "!" else i + 3)
                if j < 0:
                    out.append(re.escape(c))
                else:
                    body = part[i + 1:j]
                    body = ("^" + body[1:]) if body.startswith("!") else body
                    out.append("[" + body.replace("\\", "\\\\") + "]")
                    i = j
            else:
                out.append(re.escape(c))
            i += 1
        rx.append("".join(out) + ("" if last else "/"))
    return re.compile("".join(rx), re.S)


def walk_files(top, skipped_special=None):
    """Every file under the folder ``top`` as (path, identity), each real folder visited once.

    A symlink to a folder already visited (a loop, or a second link to the same place) is not entered
    again; hidden entries (a leading '.', as glob's ``**``) are skipped. identity: (st_dev, st_ino) of the
    file, to list a file reached twice once. Non-regular files (FIFO, socket, device) are not yielded; their
    paths go to ``skipped_special`` as (path, kind) when given."""
    try:
        st = os.stat(top)
    except OSError:
        return
    seen, stack = {(st.st_dev, st.st_ino)}, [(str(top), st.st_dev)]
    while stack:
        folder, dev = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_file(follow_symlinks=False):  # the common case: no stat call
                    yield e.path, (dev, e.inode())
                    continue
                st = e.stat()  # what a symlink points at
            except OSError:
                if e.is_symlink():  # a dangling link: listed, the image check names it
                    yield e.path, ("dangling", e.path)
                continue
            mode, ident = st.st_mode, (st.st_dev, st.st_ino)
            if stat.S_ISDIR(mode):
                if ident not in seen:
                    seen.add(ident)
                    subdirs.append((e.path, ident[0]))
            elif stat.S_ISREG(mode):
                yield e.path, ident
            elif skipped_special is not None:
                skipped_special.append((e.path, file_kind(mode)))
        stack.extend(reversed(subdirs))  # depth first, in name order


def glob_files(pattern, skipped_special):
    """(path, identity) of the files a glob matches; ``**`` walks real folders once (walk_files)."""
    parts = Path(pattern).parts
    if "**" not in parts:  # no recursion: glob itself stays within a fixed depth
        for f in sorted(glob.glob(pattern)):
            yield f, None
        return
    k = next(i for i, x in enumerate(parts) if any(c in x for c in "*?["))
    base = Path(*parts[:k]) if k else Path(".")
    rx = _glob_regex([x if x == "**" else x.replace("**", "*") for x in parts[k:]])
    special = []
    for f, ident in walk_files(base, special):
        rel = os.path.relpath(f, base).replace(os.sep, "/")
        if rx.fullmatch(rel):
            yield (f if k else rel), ident
    skipped_special.extend((f, kind) for f, kind in special
                           if rx.fullmatch(os.path.relpath(f, base).replace(os.sep, "/")))


def list_image_files(path, prefix=""):
    """Image files from a folder, a glob, a .txt list (relative entries resolve against its folder),
    or a list of those. Non-image files are reported in one line per folder and skipped.

    Only regular files are listed: a FIFO, socket or device named like an image is skipped with a
    warning (reading it would block). Folders (and ``**`` globs) visit each real folder once, so a
    symlink loop adds nothing; a file reached by two paths (symlinks, hard links) is listed once, under
    the path met first (its labels are looked up from that path)."""
    files, skipped, special, idents = [], {}, [], set()
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if "*" in str(p):
            found = glob_files(str(p), special)
        elif p.is_dir():
            found = ((f, i) for f, i in walk_files(p, special) if "." in os.path.basename(f))
        elif p.is_file() and p.suffix == ".txt":
            found = ((f, None) for f in list_file_entries(p))
        elif p.is_file():
            found = [(str(p), None)]
        elif p.exists() or p.is_symlink():
            raise FileNotFoundError(f"{prefix}{p} is not a folder, image, glob or .txt list "
                                    f"({file_kind(os.stat(p).st_mode) if p.exists() else 'a dangling link'})")
        else:
            raise FileNotFoundError(f"{prefix}{p} does not exist")
        for f, ident in found:
            is_image = f.split(".")[-1].lower() in IMG_FORMATS
            if ident is None:  # from a glob or a list: one stat (a missing entry stays, the check names it)
                try:
                    st = os.stat(f)
                    if stat.S_ISDIR(st.st_mode):
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        special.append((f, file_kind(st.st_mode)))
                        continue
                    ident = (st.st_dev, st.st_ino)
                except OSError:
                    ident = ("unreadable", os.path.abspath(f))
            if is_image:
                if ident not in idents:
                    idents.add(ident)
                    files.append(str(Path(f)))
            elif not os.path.basename(f).startswith(".") and not f.endswith((".npy", ".cache")):
                skipped.setdefault(str(Path(f).parent), []).append(os.path.basename(f))
    for folder, names in skipped.items():
        LOGGER.warning(f"{prefix}WARNING: {folder}: ignored {len(names)} non-image file(s): "
                       f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    for f, kind in special:
        if f.split(".")[-1].lower() in IMG_FORMATS:
            LOGGER.warning(f"{prefix}WARNING: {f}: is not a regular file ({kind}), skipped")
    return sorted(set(files))


def list_file_entries(p):
    """Entries of a .txt list of image paths, relative ones resolved against its folder (read safely:
    a regular file of at most MAX_LIST_BYTES)."""
    data, _, problem = read_regular(p, MAX_LIST_BYTES)
    if problem:
        raise FileNotFoundError(f"{p}: {problem}" if problem != "missing" else f"{p} does not exist")
    parent = p.parent
    lines = [x.strip() for x in data.decode(errors="replace").splitlines() if x.strip()]
    return [str(parent / x[2:]) if x.startswith("./") else (x if os.path.isabs(x) else str(parent / x))
            for x in lines]

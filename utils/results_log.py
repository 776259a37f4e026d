"""results.csv: one row per epoch, upstream column layout; on resume, rows of epochs that will be
trained again are dropped first, so a crash between the row and last.pt never duplicates an epoch."""

import os
from pathlib import Path

from utils.run_dirs import writing


def append_row(file, keys, epoch, values):
    """Append one epoch row (header first when the file is new)."""
    file = Path(file)
    n = len(keys) + 1
    header = "" if file.exists() else (("%20s," * n % ("epoch", *keys)).rstrip(",") + "\n")
    with writing(file), open(file, "a") as f:
        f.write(header + ("%20.5g," * n % (epoch, *values)).rstrip(",") + "\n")


def _row_epoch(line):
    try:
        return int(float(line.split(",", 1)[0]))
    except ValueError:
        return None


def drop_rows_from(file, epoch):
    """Remove the rows of `epoch` and later (all columns, plug-in ones too); returns how many went."""
    file = Path(file)
    if not file.is_file():
        return 0
    lines = file.read_text().splitlines(keepends=True)
    if not lines:
        return 0
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.strip() and (_row_epoch(ln) is None or _row_epoch(ln) < epoch)]
    dropped = len([ln for ln in lines[1:] if ln.strip()]) - (len(keep) - 1)
    if dropped:
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        with writing(file):
            tmp.write_text("".join(keep))
            os.replace(tmp, file)
    return dropped

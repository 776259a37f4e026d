"""Finding earlier runs on disk (for --resume without a path)."""

import glob
import os


def latest_run(search_dir="."):
    """The most recently created last*.pt below search_dir; FileNotFoundError when there is none."""
    runs = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {search_dir}; pass the checkpoint path")
    return max(runs, key=os.path.getctime)

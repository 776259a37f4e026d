"""Generate the synthetic defect dataset (see utils/synthetic.py).

Usage: python data/scripts/make_synthetic.py [--out datasets/synthetic] [--train 200] [--val 50] [--seed 0] [--overwrite]
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.cli import OptionError  # noqa: E402
from utils.limits import GENERATOR_IMAGES  # noqa: E402
from utils.synthetic import make_synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "datasets" / "synthetic", help="dataset folder")
    parser.add_argument("--train", type=int, default=200, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    opt = parser.parse_args(argv)
    for name, n, low in (("--train", opt.train, 0), ("--val", opt.val, 1)):
        if not low <= n <= GENERATOR_IMAGES:
            raise OptionError(f"{name} {n}: must be {low}..{GENERATOR_IMAGES:,} images")
    t = time.time()
    out = make_synthetic(opt.out, opt.train, opt.val, opt.seed, overwrite=opt.overwrite)
    print(f"synthetic dataset in {out} ({opt.train} train / {opt.val} val, seed {opt.seed}, {time.time() - t:.1f}s)")
    return out


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, lambda argv: argv, "make_synthetic.py")

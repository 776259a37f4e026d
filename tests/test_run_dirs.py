"""utils.run_dirs.latest_run: the checkpoint --resume picks when given no path."""

import time

import pytest

from utils.run_dirs import latest_run


def test_latest_run_is_the_newest_last_pt(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        latest_run(tmp_path)
    for name in ("exp", "exp2"):
        (tmp_path / name / "weights").mkdir(parents=True)
        (tmp_path / name / "weights" / "best.pt").write_bytes(b"")
        (tmp_path / name / "weights" / "last.pt").write_bytes(b"")
        time.sleep(0.02)
    assert latest_run(tmp_path) == str(tmp_path / "exp2" / "weights" / "last.pt")

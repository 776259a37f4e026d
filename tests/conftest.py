"""Shared pytest fixtures: repo paths, the shared data folder, small thread counts."""

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NEU_DET = SHARED / "datasets" / "NEU-DET"
UPSTREAM_CKPT = SHARED / "fixtures" / "upstream_yolov5s_neu224.pt"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)
os.environ["YOLOV5KD_PRECISION"] = "fp32"  # --precision auto must not make results depend on this CPU's probe

from utils.general import LOGGER  # noqa: E402


@pytest.fixture(scope="session")
def neu_det():
    """Path to the real NEU-DET dataset, or skip when ../shared is absent."""
    if not (NEU_DET / "images" / "val").is_dir():
        pytest.skip("../shared/datasets/NEU-DET not present")
    return NEU_DET


@pytest.fixture(scope="session")
def upstream_ckpt():
    """Path to the upstream YOLOv5 fixture checkpoint, or skip when absent."""
    if not UPSTREAM_CKPT.is_file():
        pytest.skip("../shared/fixtures/upstream_yolov5s_neu224.pt not present")
    return UPSTREAM_CKPT


def import_torchvision_or_skip():
    """torchvision, or skip: it may be absent, or installed against another torch and fail to load
    (RuntimeError 'operator torchvision::nms does not exist'), which importorskip does not catch."""
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - any failure to load means: no torchvision here
        pytest.skip(f"torchvision not importable ({type(e).__name__}: {e})")
    return torchvision


@pytest.fixture()
def caplog_yolo(caplog):
    """Capture our logger (it does not propagate to the root logger)."""
    LOGGER.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    yield caplog
    LOGGER.removeHandler(caplog.handler)

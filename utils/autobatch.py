"""AutoBatch (--batch-size -1): the largest batch that fits a fraction of the CUDA memory."""

from copy import deepcopy

import numpy as np
import torch

from utils.general import LOGGER


def autobatch(model, imgsz, device, fraction=0.6, default=16):
    """Largest batch size using about `fraction` of the CUDA memory (linear fit of a few probes)."""
    if device.type != "cuda":
        LOGGER.info(f"AutoBatch: CUDA not used, using default --batch-size {default}")
        return default
    total = torch.cuda.get_device_properties(device).total_memory
    model = deepcopy(model).train()  # probing must not move the real model's BatchNorm statistics
    sizes, mems = [1, 2, 4, 8, 16], []
    for b in sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.zeros(b, 3, imgsz, imgsz, device=device)
        with torch.autocast("cuda"):
            out = model(x)
        sum(o.float().sum() for o in out).backward()
        mems.append(torch.cuda.max_memory_allocated(device))
    del model
    torch.cuda.empty_cache()
    slope, intercept = np.polyfit(sizes, mems, 1)
    b = int((total * fraction - intercept) / max(slope, 1))
    b = max(1, min(b, 1024))
    LOGGER.info(f"AutoBatch: using batch-size {b} ({fraction:.0%} of {total / 2 ** 30:.1f} GiB)")
    return b

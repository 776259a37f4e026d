"""Gradient accumulation as upstream counts it: an optimiser step at iteration ni when
ni - last_step >= accumulate(ni), from last_step = -1 at the start of training. The window runs
across epochs (gradients left at an epoch's end are dropped by the next epoch's zero_grad)."""

import numpy as np


def accumulate_at(ni, nw, nbs, batch_size):
    """Batches per optimiser step at iteration ni: ramps 1 -> nbs / batch_size over the nw warmup iterations."""
    target = max(round(nbs / batch_size), 1)
    if ni > nw:
        return target
    return max(1, int(np.interp(ni, [0, nw], [1, nbs / batch_size]).round()))


def last_step_before(ni, nw, nbs, batch_size):
    """Iteration of the last optimiser step before iteration ni (-1 when none): where a resumed run
    starting at ni continues the uninterrupted run's schedule."""
    last = -1
    for k in range(ni):
        if k - last >= accumulate_at(k, nw, nbs, batch_size):
            last = k
    return last

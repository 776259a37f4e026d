"""Keep modules that live outside the DDP wrapper (plugins' trainable parts) in step across ranks."""

import torch.distributed as dist


def broadcast_modules(modules, src=0):
    """Copy rank `src`'s parameters and buffers of every module to all ranks (in place)."""
    for m in modules:
        for t in m.state_dict().values():
            dist.broadcast(t, src)


def average_grads(params, world_size):
    """All-reduce and average the gradients of `params` (those without a gradient are skipped)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size

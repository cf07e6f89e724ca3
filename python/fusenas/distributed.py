"""Data parallelism for the drivers: torchrun-launched processes, gradients averaged by hand.

Launched with ``torchrun --nproc_per_node=P``, every process runs the same
driver on its shard of each batch; after each backward the gradients of the
parameters about to be stepped are all-reduced (averaged). Starting from the
same seed, every rank then applies the same update, so weights and
architecture parameters stay identical on every rank (checked by the tests).
Averaging explicitly, instead of wrapping the model in DDP, fits the bilevel
search: two optimisers step different parameter sets on different batches.
gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduces (mean) the gradients of ``params`` across ranks; no-op on one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    # One flat buffer: one collective instead of one per tensor.
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (a copy; the input is untouched)."""
    out = values.clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
    return out


def max_deviation_from_rank0(params: Iterable[torch.Tensor]) -> float:
    """Largest |p - p on rank 0| over ``params`` and ranks (0.0 on one process).

    The drivers log it every epoch: it must stay exactly 0 for parameters that
    every rank updates with the same averaged gradients.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in params])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    dev = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(dev, op=dist.ReduceOp.MAX)
    return float(dev)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

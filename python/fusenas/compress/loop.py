"""One training epoch, shared by the compression drivers (TRP, incremental quantization).

Cross-entropy with SGD on the training split, data order and augmentation
from a generator seeded by (seed, epoch) (so resumed runs repeat the same
batches), gradients averaged across torchrun ranks, and three hooks for
what a method does around each step: ``before_forward(iteration)``,
``after_backward()``, ``after_step()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fusenas import distributed
from fusenas.data.batches import make_batch
from fusenas.data.datasets import ImageDataset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_epoch(
    model: nn.Module,
    train: ImageDataset,
    opt: torch.optim.Optimizer,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
    first_iteration: int = 0,
    before_forward: Callable[[int], object] | None = None,
    after_backward: Callable[[], object] | None = None,
    after_step: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """One pass over ``train``; returns (mean loss, accuracy %) over all ranks."""
    rank, world = distributed.rank_and_world()
    per_rank = batch_size // world
    augment = train.x.shape[-1] >= 32
    steps = max(1, len(train) // batch_size)
    perm = torch.randperm(len(train), generator=gen)
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress or rank != 0, leave=False)
    for s in bar:
        idx = perm[s * batch_size : (s + 1) * batch_size]
        x, y = make_batch(train, idx, augment, gen, device, False)
        x, y = (
            x[rank * per_rank : (rank + 1) * per_rank],
            y[rank * per_rank : (rank + 1) * per_rank],
        )
        if before_forward is not None:
            before_forward(first_iteration + s)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        distributed.average_gradients(model.parameters())
        opt.step()
        if after_step is not None:
            after_step()
        totals += torch.tensor(
            [float(loss.detach()) * y.numel(), float((logits.argmax(1) == y).sum()), y.numel()],
            dtype=torch.float64,
        )
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    totals = distributed.all_reduce_sum(totals)
    return float(totals[0] / totals[2]), float(100 * totals[1] / totals[2])

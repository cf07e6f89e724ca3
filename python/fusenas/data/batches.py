"""Batches from in-memory uint8 datasets, and scoring a model on one (search and compression).

Images stay uint8 until a batch is cut: augmentation (random crop + flip)
runs on the uint8 batch, then it is moved to the device and scaled to
[0, 1] float32, optionally in channels_last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.data.augment import random_crop_flip
from fusenas.data.datasets import ImageDataset


def make_batch(
    ds: ImageDataset,
    idx: torch.Tensor,
    augment: bool,
    gen: torch.Generator,
    device: torch.device,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (B, C, H, W) in [0, 1] on ``device``, labels int64 (B,)) at ``idx``."""
    x = ds.x[idx]
    if augment:
        x = random_crop_flip(x, gen, pad=4)
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, ds.y[idx].to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds: ImageDataset,
    device: torch.device,
    batch_size: int = 256,
    channels_last: bool = False,
) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy %) of ``model`` on ``ds`` in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(ds), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(ds)))
        x, y = make_batch(ds, idx, False, torch.Generator(), device, channels_last)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return loss / len(ds), 100.0 * correct / len(ds)

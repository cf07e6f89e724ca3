"""Batch augmentation on uint8 image tensors (no PIL, no DataLoader workers).

The standard CIFAR recipe, vectorised over the batch: zero-pad by ``pad``,
take a random ``H x W`` crop per image, flip half the images horizontally.
Everything stays uint8 until the model converts, so a batch costs a few
hundred microseconds on one core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops after zero padding, and random horizontal flips, per image.

    Args:
        x: (B, C, H, W) images (any dtype).
        gen: the generator that draws offsets and flips (seeded by the caller).
        pad: pixels of zero padding on every side (0 disables the crop).
    Returns: (B, C, H, W), same dtype.
    """
    b, _, h, w = x.shape
    out = x
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b)[:, None, None, None]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)

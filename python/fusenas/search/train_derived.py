"""Training a searched architecture from scratch (DARTS-style evaluation).

SGD with momentum and a cosine schedule, label cross-entropy plus the
auxiliary head's loss (weight ``auxiliary_weight``) when the network has one,
drop-path probability ramped linearly over the epochs, random crop + flip and
optional cutout on 32x32 images. The test split is scored at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fusenas.data.augment import random_crop_flip
from fusenas.data.datasets import ImageDataset
from fusenas.training import accuracy


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zeroes one random size x size square per image (clipped at the borders)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen)
    cx = torch.randint(0, w, (b,), generator=gen)
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    half = size // 2
    inside = ((ys - cy[:, None, None]).abs() <= half - (size % 2 == 0)) & (
        (xs - cx[:, None, None]).abs() <= half - (size % 2 == 0)
    )
    return x.masked_fill(inside[:, None], 0)


@dataclass
class TrainResult:
    train_loss: list[float]
    test_accuracy: float


def train_from_scratch(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    epochs: int = 10,
    batch_size: int = 96,
    lr: float = 0.025,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    grad_clip: float = 5.0,
    auxiliary_weight: float = 0.4,
    drop_path_prob: float = 0.0,
    cutout_size: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Trains ``model`` in place as DARTS trains its evaluation networks; returns test accuracy."""
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    big = train.x.shape[-1] >= 32
    steps = max(1, len(train) // batch_size)
    history = []
    for epoch in range(epochs):
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = drop_path_prob * epoch / epochs
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        bar = tqdm(range(steps), desc=f"train {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)  # fmt: skip
        for s in bar:
            idx = perm[s * batch_size : (s + 1) * batch_size]
            x = train.x[idx]
            if big:
                x = random_crop_flip(x, gen)
            if cutout_size:
                x = cutout(x, cutout_size, gen)
            y = train.y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            aux = getattr(model, "aux_logits", None)
            if aux is not None:
                loss = loss + auxiliary_weight * F.cross_entropy(aux, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        sched.step()
        history.append(total / steps)
    model.eval()
    return TrainResult(history, accuracy(model, test))

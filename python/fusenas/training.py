"""Train, evaluate and time classifiers on in-memory datasets (demo, CLI, tests).

The datasets are small uint8 tensors in memory, so batches are plain index
slices: no DataLoader workers to start on a 2-core machine, and a fixed seed
gives the same model on every run.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from fusenas.data.datasets import ImageDataset


def fit(
    model: nn.Module,
    train: ImageDataset,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> list[float]:
    """Trains ``model`` (in place) with AdamW and a one-cycle schedule on cross-entropy.

    Args:
        model: takes uint8 (B, C, H, W) images, returns (B, classes) logits.
        train: the training images.
        epochs, batch_size, lr, weight_decay: the usual.
        seed: shuffling (and augmentation) seed.
        augment: random horizontal flips and 2-pixel shifts (for CIFAR-10).
        progress: show a tqdm bar (loss in the postfix).
        threads: torch threads while training (restored afterwards); None keeps the
            current setting. Tiny models train fastest on 1 thread: their ops are too
            small to split, and a busy machine makes OpenMP barriers expensive.
    Returns:
        The mean training loss of each epoch.
    """
    if not isinstance(train, ImageDataset):
        raise TypeError(f"train: expected an ImageDataset, got {type(train).__name__}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
            raise ValueError(f"threads: expected a positive integer or None, got {threads!r}")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fit(model, train, epochs, batch_size, lr, weight_decay, seed, augment, progress)
        finally:
            torch.set_num_threads(before)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    steps = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    history = []
    with tqdm(total=epochs * steps, disable=not progress, desc="train", unit="step") as bar:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(steps):
                idx = perm[s * batch_size : (s + 1) * batch_size]
                x, y = train.x[idx], train.y[idx]
                if augment:
                    x = _augment(x, gen)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
                bar.update(1)
            history.append(total / n)
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    model.eval()
    return history


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels, int64 (N,), for images x (N, C, H, W)."""
    model.eval()
    out = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, ds: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``ds``, in percent."""
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds: expected an ImageDataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError("ds: empty dataset")
    pred = predict(model, ds.x, batch_size)
    return 100.0 * float((pred == ds.y).to(torch.float64).mean())


@torch.inference_mode()
def measure_latency(model: nn.Module, x: torch.Tensor, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time in seconds of ``model(x)`` over ``repeats`` runs (after ``warmup``)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    model.eval()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def state_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model.state_dict()`` (the size of a checkpoint's data)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())

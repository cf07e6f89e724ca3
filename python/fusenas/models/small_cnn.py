"""A small CNN for the demo and the tests, rebuildable from a JSON-able spec.

``SmallCNN`` has every layer kind the k-bit modules cover: 3 x 3 convs (stride 1
and 2, im2col path), a 1 x 1 conv (direct GEMM path) and a two-layer linear
head. It works for 1 x 8 x 8 digits, 1 x 28 x 28 Fashion-MNIST and 3 x 32 x 32
CIFAR-10: an adaptive average pool fixes the head's input size. ``model.spec``
is a plain dict that :func:`fusenas.models.build_model` turns back into the same
architecture; ``fusenas.quant.io`` stores it in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Per-dataset defaults: input channels, widths, and the normalisation applied inside the model.
DATASET_SPECS: dict[str, dict[str, Any]] = {
    "digits": {"in_channels": 1, "channels": [16, 32], "hidden": 64, "mean": [0.3], "std": [0.4]},
    "fashion-mnist": {
        "in_channels": 1,
        "channels": [16, 32, 64],
        "hidden": 128,
        "mean": [0.29],
        "std": [0.35],
    },
    "cifar10": {
        "in_channels": 3,
        "channels": [32, 64, 128],
        "hidden": 128,
        "mean": [0.49, 0.48, 0.45],
        "std": [0.25, 0.24, 0.26],
    },
}


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU stages (stride 2 after the first), a 1x1 conv, pool, 2-layer MLP.

    Args:
        in_channels: C of the (B, C, H, W) input.
        num_classes: logits per image.
        channels: output channels of the 3 x 3 stages (at least one).
        hidden: width of the hidden linear layer.
        pool: side of the adaptive average pool before the head.
        mean, std: per-channel normalisation applied to inputs in [0, 1].

    Input: (B, C, H, W) uint8 (0..255) or float in [0, 1]. Output: (B, num_classes) float.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: list[int] | tuple[int, ...] = (16, 32),
        hidden: int = 64,
        pool: int = 2,
        mean: list[float] | tuple[float, ...] | None = None,
        std: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("hidden", hidden),
            ("pool", pool),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if (
            not isinstance(channels, (list, tuple))
            or not channels
            or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in channels)
        ):
            raise ValueError(
                f"channels: expected a non-empty list of positive ints, got {channels!r}"
            )
        mean = [0.5] * in_channels if mean is None else [float(m) for m in mean]
        std = [0.5] * in_channels if std is None else [float(s) for s in std]
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"mean, std: expected {in_channels} values each (std > 0)")
        self.spec: dict[str, Any] = {
            "name": "SmallCNN",
            "kwargs": {
                "in_channels": in_channels,
                "num_classes": num_classes,
                "channels": list(channels),
                "hidden": hidden,
                "pool": pool,
                "mean": mean,
                "std": std,
            },
        }
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(prev, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            prev = c
        layers += [nn.Conv2d(prev, prev, 1, bias=False), nn.BatchNorm2d(prev), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * pool * pool, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(self.mean.dtype) / 255.0
        x = (x - self.mean) / self.std
        return self.head(self.pool(self.features(x)))


def small_cnn_for(dataset: str, num_classes: int = 10, **overrides: Any) -> SmallCNN:
    """The demo CNN with ``dataset``'s defaults ("digits", "fashion-mnist", "cifar10")."""
    if dataset not in DATASET_SPECS:
        raise ValueError(f"dataset: expected one of {sorted(DATASET_SPECS)}, got {dataset!r}")
    kwargs = {**DATASET_SPECS[dataset], "num_classes": num_classes, **overrides}
    return SmallCNN(**kwargs)

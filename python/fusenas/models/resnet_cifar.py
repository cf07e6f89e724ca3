"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/56/110, depth = 6n + 2.

A 3x3 stem to 16 channels, three stages of n basic blocks at 16/32/64 channels
(stride 2 entering stages 2 and 3), global average pool, linear head. The
shortcut across a stride/width change is option A of the paper (subsample and
zero-pad channels: no parameters, what most CIFAR ResNet-20 results use) or
option B (1x1 conv + BN). These are the models TRP reports on; every 3x3 conv
but the stem is a candidate for decomposition.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pad_channels = 0
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.pad_channels = out_channels - in_channels
                self.shortcut = _SubsampleShortcut(stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = self.shortcut(x)
        if self.pad_channels:
            half = self.pad_channels // 2
            short = F.pad(short, (0, 0, 0, 0, half, self.pad_channels - half))
        return F.relu(out + short)


class _SubsampleShortcut(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images.

    Args:
        depth: 20, 32, 44, 56, 110, ... (6n + 2).
        num_classes: logits per image.
        in_channels: image channels (3 for CIFAR-10).
        width: channels of the first stage (16 in the paper; stages use 1x/2x/4x).
        shortcut: "A" (parameter-free, the paper's CIFAR choice) or "B" (1x1 conv + BN).
        mean, std: per-channel normalisation applied to inputs in [0, 1].

    Input: (B, C, H, W) uint8 (0..255) or float in [0, 1]. Output: (B, num_classes) float.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        shortcut: str = "A",
        mean: list[float] | tuple[float, ...] | None = None,
        std: list[float] | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth: expected 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth!r}")
        for name, v in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("width", width),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut: expected 'A' or 'B', got {shortcut!r}")
        if mean is None:
            mean = list(CIFAR_MEAN) if in_channels == 3 else [0.5] * in_channels
        if std is None:
            std = list(CIFAR_STD) if in_channels == 3 else [0.5] * in_channels
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"mean, std: expected {in_channels} values each (std > 0)")
        self.spec: dict[str, Any] = {
            "name": "CifarResNet",
            "kwargs": {
                "depth": depth,
                "num_classes": num_classes,
                "in_channels": in_channels,
                "width": width,
                "shortcut": shortcut,
                "mean": mean,
                "std": std,
            },
        }
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        prev = width
        for stage in range(3):
            channels = width << stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(prev, channels, stride, shortcut))
                prev = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(self.mean.dtype) / 255.0
        x = (x - self.mean) / self.std
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(**kwargs: Any) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


def resnet32(**kwargs: Any) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


def resnet56(**kwargs: Any) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)

"""NAS-Bench-201's network for one cell (its ``TinyNetwork``), built from an architecture string.

A 3x3 stem conv + BN to C channels, three stages of N copies of the cell at C,
2C, 4C channels separated by residual reduction blocks, BN + ReLU, global
pool, linear head (C = 16, N = 5 in the benchmark). Cell ops: none (zeros),
skip_connect (identity), nor_conv_1x1 / nor_conv_3x3 (ReLU-conv-BN),
avg_pool_3x3 (count_include_pad=False, no BN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn.avg_pool import AvgPool2d
from fusenas.nn.darts_ops import ReLUConvBN, Zero
from fusenas.search.spaces.nb201 import NODES, ResidualReduction, parse_arch_str


def _op(name: str, c: int) -> nn.Module:
    if name == "none":
        return Zero(1)
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return AvgPool2d(3, 1, 1, count_include_pad=False)
    k = 1 if name == "nor_conv_1x1" else 3
    return ReLUConvBN(c, c, k, 1, k // 2)


class Nb201Cell(nn.Module):
    def __init__(self, arch: str, channels: int) -> None:
        super().__init__()
        edges = parse_arch_str(arch)
        self.sources = [(src, dst) for _, src, dst in edges]
        self.ops = nn.ModuleList(_op(op, channels) for op, _, _ in edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x] + [None] * (NODES - 1)
        for (src, dst), op in zip(self.sources, self.ops, strict=True):
            h = op(nodes[src])
            nodes[dst] = h if nodes[dst] is None else nodes[dst] + h
        return nodes[-1]


class Nb201Network(nn.Module):
    """NAS-Bench-201's macro skeleton around one cell.

    Args:
        arch: the cell's architecture string, e.g. ``|nor_conv_3x3~0|+|...|``.
        channels: C (16), cells_per_stage: N (5), num_classes, in_channels.

    forward(x): (B, in_channels, H, W) uint8 or float in [0, 1] -> (B, num_classes).
    """

    def __init__(
        self,
        arch: str,
        channels: int = 16,
        cells_per_stage: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        parse_arch_str(arch)
        self.spec = {"name": "Nb201Network", "kwargs": {
            "arch": arch, "channels": channels, "cells_per_stage": cells_per_stage,
            "num_classes": num_classes, "in_channels": in_channels}}  # fmt: skip
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers += [Nb201Cell(arch, c) for _ in range(cells_per_stage)]
        self.layers = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = self.lastact(self.layers(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

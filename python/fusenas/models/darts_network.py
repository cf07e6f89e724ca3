"""DARTS-style evaluation network built from a searched genotype (the network trained from scratch).

As DARTS / PC-DARTS define it for CIFAR: a 3x3 stem to 3C channels, ``layers``
cells (reductions at 1/3 and 2/3 of the depth, channels doubling), each cell
applying its genotype's two ops per intermediate node to the chosen earlier
nodes and concatenating the listed nodes; global pool, linear head. Options:
an auxiliary head after the second reduction (its logits are kept in
``model.aux_logits`` during training, weight them into the loss yourself) and
drop-path on the non-identity ops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn.darts_ops import FactorizedReduce, ReLUConvBN, build_candidate
from fusenas.search.genotype import Genotype


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zeroes whole samples with probability drop_prob, rescaling the rest (DARTS' drop-path)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class EvalCell(nn.Module):
    """One cell with the fixed ops of a genotype."""

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(c_prev_prev, c) if reduction_prev
                            else ReLUConvBN(c_prev_prev, c, 1, 1, 0))  # fmt: skip
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.inputs = [j for _, j in edges]
        self.ops = nn.ModuleList(
            build_candidate(op, c, 2 if reduction and j < 2 else 1, affine=True) for op, j in edges
        )
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            total = 0
            for e in (2 * i, 2 * i + 1):
                h = self.ops[e](states[self.inputs[e]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[e], nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' CIFAR auxiliary classifier (expects 8x8 feature maps)."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class DartsNetwork(nn.Module):
    """The evaluation network of a DARTS-space genotype.

    Args:
        genotype: a Genotype or its dict form.
        channels: C of the first cells (36 in DARTS' CIFAR-10 evaluation).
        num_classes: logits per image.
        layers: cells (20 in the papers).
        auxiliary: add the auxiliary head.
        in_channels: image channels.
        drop_path_prob: drop-path probability while training (set it per epoch).

    forward(x): (B, in_channels, H, W) uint8 or float in [0, 1] -> (B, num_classes).
    """

    def __init__(
        self,
        genotype: Genotype | dict[str, Any],
        channels: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = False,
        in_channels: int = 3,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(genotype, dict):
            genotype = Genotype.from_dict(genotype)
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype: expected a Genotype or dict, got {type(genotype).__name__}")
        self.spec = {"name": "DartsNetwork", "kwargs": {
            "genotype": genotype.to_dict(), "channels": channels, "num_classes": num_classes,
            "layers": layers, "auxiliary": auxiliary, "in_channels": in_channels,
            "drop_path_prob": drop_path_prob}}  # fmt: skip
        self.drop_path_prob = drop_path_prob
        self.auxiliary = auxiliary
        c_curr = 3 * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_index = 2 * layers // 3
        c_aux = c_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cell = EvalCell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_index:
                c_aux = c_prev
        self.aux_head = AuxiliaryHead(c_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(c_prev, num_classes)
        self.aux_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        self.aux_logits = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.aux_head is not None and self.training:
                self.aux_logits = self.aux_head(s1)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))

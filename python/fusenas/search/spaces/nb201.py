"""The NAS-Bench-201 cell space, searched with PC-DARTS' partial-channel edges.

Cell: nodes 0..3, node j sums one edge from every earlier node (6 edges); the
cell's output is node 3. Candidates: none, skip_connect, nor_conv_1x1,
nor_conv_3x3, avg_pool_3x3. Macro skeleton (NAS-Bench-201): a 3x3 stem conv
(+BN) to C channels, three stages of N cells at C, 2C, 4C channels separated
by residual reduction blocks, BN + ReLU, global pool, linear head.

During search the edges are :class:`PartialChannelMixedOp`s, so, as in
PC-DARTS, the average pool is followed by BatchNorm(affine=False) and only
C/k channels pass through the candidates. The derived cell is an
architecture string in NAS-Bench-201's notation
(``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``), which indexes the benchmark table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn.darts_ops import ReLUConvBN
from fusenas.nn.pc_mixed_op import PartialChannelMixedOp

NB201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4
# (target node, source node) of the 6 edges, in the order of the alphas' rows.
EDGES = tuple((j, i) for j in range(1, NODES) for i in range(j))


class Nb201SearchCell(nn.Module):
    """One cell: 6 mixed edges on C channels, stride 1."""

    def __init__(self, channels: int, k: int, fused: bool) -> None:
        super().__init__()
        self.edges = nn.ModuleList(
            PartialChannelMixedOp(channels, 1, k, NB201_PRIMITIVES, fused=fused) for _ in EDGES
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor, scales: list) -> torch.Tensor:
        nodes = [x]
        e = 0
        for j in range(1, NODES):
            nodes.append(sum(self.edges[e + i](nodes[i], weights[e + i], scales[e + i])
                             for i in range(j)))  # fmt: skip
            e += j
        return nodes[-1]


class ResidualReduction(nn.Module):
    """NAS-Bench-201's reduction block: a stride-2 basic residual block, C -> 2C."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def node_normalised(betas: torch.Tensor) -> torch.Tensor:
    """Edge scales: softmax of the betas over the edges entering each node (1, 2, 3 edges)."""
    parts, start = [], 0
    for j in range(1, NODES):
        parts.append(F.softmax(betas[start : start + j], dim=-1))
        start += j
    return torch.cat(parts)


class Nb201Supernet(nn.Module):
    """The NAS-Bench-201 search network.

    Args:
        channels: C of the first stage (16 in NAS-Bench-201).
        num_classes: logits per image.
        cells_per_stage: N (5 in NAS-Bench-201).
        k: partial-channel proportion.
        edge_normalization: learn betas and scale each edge by its node-wise softmax.
        in_channels: image channels.
        fused: edges run the fused op (default) or PC-DARTS' eager formulation.

    forward(x): (B, in_channels, H, W) uint8 or float -> (B, num_classes) logits.
    """

    def __init__(
        self,
        channels: int = 16,
        num_classes: int = 10,
        cells_per_stage: int = 5,
        k: int = 4,
        edge_normalization: bool = True,
        in_channels: int = 3,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.primitives = NB201_PRIMITIVES
        self.edge_normalization = edge_normalization
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers += [Nb201SearchCell(c, k, fused) for _ in range(cells_per_stage)]
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(NB201_PRIMITIVES)))
        self.betas = nn.Parameter(1e-3 * torch.randn(len(EDGES)))
        if not edge_normalization:
            self.betas.requires_grad_(False)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas, self.betas] if self.edge_normalization else [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(self.alphas), id(self.betas)}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        weights = F.softmax(self.alphas, dim=-1)
        scales = node_normalised(self.betas) if self.edge_normalization else [None] * len(EDGES)
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, weights, scales) if isinstance(layer, Nb201SearchCell) else layer(x)
        x = self.lastact(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def genotype(self) -> str:
        """The NAS-Bench-201 architecture string of the strongest op on every edge."""
        return derive_arch_str(self.alphas, self.betas if self.edge_normalization else None)


@torch.no_grad()
def derive_arch_str(alphas: torch.Tensor, betas: torch.Tensor | None = None) -> str:
    """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` from (6, 5) alphas: argmax op per edge.

    Every edge of a NAS-Bench-201 cell is part of the architecture ("none" is a
    valid choice there), so the betas, which only rescale an edge, do not
    change the choice; they are accepted for a uniform interface.
    """
    if alphas.shape != (len(EDGES), len(NB201_PRIMITIVES)):
        raise ValueError(
            f"alphas: expected shape ({len(EDGES)}, {len(NB201_PRIMITIVES)}), "
            f"got {tuple(alphas.shape)}"
        )
    best = alphas.argmax(dim=-1).tolist()
    nodes, e = [], 0
    for j in range(1, NODES):
        nodes.append("|" + "|".join(f"{NB201_PRIMITIVES[best[e + i]]}~{i}" for i in range(j)) + "|")
        e += j
    return "+".join(nodes)


def parse_arch_str(arch: str) -> list[tuple[str, int, int]]:
    """[(op, source, target), ...] of an architecture string; ValueError if malformed."""
    if not isinstance(arch, str):
        raise TypeError(f"arch: expected a str, got {type(arch).__name__}")
    out = []
    nodes = arch.split("+")
    if len(nodes) != NODES - 1:
        raise ValueError(f"arch: expected {NODES - 1} '+'-separated nodes, got {arch!r}")
    for j, node in enumerate(nodes, start=1):
        items = [t for t in node.split("|") if t]
        if len(items) != j:
            raise ValueError(f"arch: node {j} needs {j} inputs, got {node!r}")
        for item in items:
            op, _, src = item.partition("~")
            if op not in NB201_PRIMITIVES or not src.isdigit() or int(src) >= j:
                raise ValueError(f"arch: bad edge {item!r} into node {j} of {arch!r}")
            out.append((op, int(src), j))
    return out

"""The DARTS cell search space with PC-DARTS' partial channels and edge normalisation.

A cell has two inputs (the outputs of the previous two cells, preprocessed to
C channels) and 4 intermediate nodes; node i sums one mixed-op edge from each
earlier node (2 + i edges), 14 edges in all, and the cell outputs the concat
of its 4 nodes (4C channels). Every edge is a :class:`PartialChannelMixedOp`.
The supernet stacks ``layers`` cells (reductions at 1/3 and 2/3 of the depth,
where channels double and the edges from the cell inputs have stride 2).

Architecture parameters: ``alphas_normal`` / ``alphas_reduce`` (14 x n_ops)
and, with edge normalisation, ``betas_normal`` / ``betas_reduce`` (14); they
are separate from the weights (``arch_parameters()`` / ``weight_parameters()``)
because the bilevel search optimises them with their own optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn.darts_ops import FactorizedReduce, ReLUConvBN
from fusenas.nn.pc_mixed_op import PartialChannelMixedOp
from fusenas.ops import PC_DARTS_PRIMITIVES
from fusenas.search.genotype import Genotype

STEPS = 4  # intermediate nodes per cell
MULTIPLIER = 4  # nodes concatenated into the cell output


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell: node i has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


class SearchCell(nn.Module):
    """One normal or reduction cell of the supernet."""

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        k: int,
        primitives: Sequence[str],
        fused: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(c_prev_prev, c, affine=False) if reduction_prev
                            else ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False))  # fmt: skip
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(STEPS):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(PartialChannelMixedOp(c, stride, k, primitives, fused=fused))

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_scales: torch.Tensor
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(STEPS):
            node = sum(
                self.edges[offset + j](h, weights[offset + j], edge_scales[offset + j])
                for j, h in enumerate(states)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-MULTIPLIER:], dim=1)


def node_normalised(betas: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Edge scales: softmax of the betas over the edges entering each node (2, 3, 4, 5 edges)."""
    parts, start = [], 0
    for i in range(steps):
        parts.append(F.softmax(betas[start : start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(parts)


class DartsSupernet(nn.Module):
    """The PC-DARTS search network.

    Args:
        channels: C of the first cells (16 on CIFAR).
        num_classes: logits per image.
        layers: cells (8 on CIFAR); reductions at layers // 3 and 2 * layers // 3.
        k: partial-channel proportion (4 on CIFAR, 2 on ImageNet).
        primitives: the candidate list of every edge.
        edge_normalization: learn betas and scale every edge by its node-wise softmax.
        in_channels: image channels.
        stem_multiplier: the stem makes stem_multiplier * C channels.
        fused: edges run the fused op (default) or PC-DARTS' eager formulation.

    forward(x): (B, in_channels, H, W) float32 -> (B, num_classes) logits.
    """

    def __init__(
        self,
        channels: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        k: int = 4,
        primitives: Sequence[str] = PC_DARTS_PRIMITIVES,
        edge_normalization: bool = True,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers: expected a positive integer, got {layers!r}")
        self.primitives = tuple(primitives)
        if "none" in self.primitives and len(self.primitives) == 1:
            raise ValueError("primitives: expected at least one candidate besides 'none'")
        self.layers, self.k, self.edge_normalization = layers, k, edge_normalization
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(
                SearchCell(
                    c_prev_prev,
                    c_prev,
                    c_curr,
                    reduction,
                    reduction_prev,
                    k,
                    self.primitives,
                    fused,
                )  # fmt: skip
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, MULTIPLIER * c_curr
        self.classifier = nn.Linear(c_prev, num_classes)
        n_edges, n_ops = num_edges(), len(self.primitives)
        # PC-DARTS initialises every architecture parameter as 1e-3 * N(0, 1).
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        if not edge_normalization:
            self.betas_normal.requires_grad_(False)
            self.betas_reduce.requires_grad_(False)

    def arch_parameters(self) -> list[nn.Parameter]:
        """alphas (and betas with edge normalisation): what the architecture optimiser updates."""
        params = [self.alphas_normal, self.alphas_reduce]
        if self.edge_normalization:
            params += [self.betas_normal, self.betas_reduce]
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture's."""
        arch = {id(p) for p in (self.alphas_normal, self.alphas_reduce, self.betas_normal,
                                self.betas_reduce)}  # fmt: skip
        return [p for p in self.parameters() if id(p) not in arch]

    def _edge_scales(self, betas: torch.Tensor) -> torch.Tensor | list[None]:
        if not self.edge_normalization:
            return [None] * num_edges()
        return node_normalised(betas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        s0 = s1 = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        e_normal = self._edge_scales(self.betas_normal)
        e_reduce = self._edge_scales(self.betas_reduce)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))

    def genotype(self) -> Genotype:
        """The discrete cell this supernet's architecture parameters select (PC-DARTS' rule)."""
        return derive_genotype(
            self.alphas_normal, self.alphas_reduce,
            self.betas_normal if self.edge_normalization else None,
            self.betas_reduce if self.edge_normalization else None,
            self.primitives,
        )  # fmt: skip


def _parse_cell(weights: torch.Tensor, primitives: Sequence[str]) -> tuple[tuple[str, int], ...]:
    # weights: (14, n_ops) edge scores. Per node keep the two incoming edges whose
    # best non-"none" op scores highest, and on each that op.
    usable = [i for i, p in enumerate(primitives) if p != "none"]
    gene, start = [], 0
    for i in range(STEPS):
        w = weights[start : start + 2 + i][:, usable]
        best = w.max(dim=1)
        # Stable descending order: ties go to the earlier input, as Python's sorted does.
        order = sorted(range(2 + i), key=lambda j: -float(best.values[j]))[:2]
        for j in order:
            gene.append((primitives[usable[int(best.indices[j])]], j))
        start += 2 + i
    return tuple(gene)


@torch.no_grad()
def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    betas_normal: torch.Tensor | None = None,
    betas_reduce: torch.Tensor | None = None,
    primitives: Sequence[str] = PC_DARTS_PRIMITIVES,
) -> Genotype:
    """PC-DARTS' genotype: edge scores softmax(alpha) x node-wise softmax(beta), top-2 per node."""
    primitives = tuple(primitives)
    cells = []
    for alphas, betas in ((alphas_normal, betas_normal), (alphas_reduce, betas_reduce)):
        if alphas.shape != (num_edges(), len(primitives)):
            raise ValueError(
                f"alphas: expected shape ({num_edges()}, {len(primitives)}), "
                f"got {tuple(alphas.shape)}"
            )
        scores = F.softmax(alphas.detach().double(), dim=-1)
        if betas is not None:
            scores = scores * node_normalised(betas.detach().double())[:, None]
        cells.append(_parse_cell(scores, primitives))
    concat = tuple(range(2 + STEPS - MULTIPLIER, STEPS + 2))
    return Genotype(cells[0], concat, cells[1], concat)

"""Trained Rank Pruning (arXiv 1812.02402 / 2004.14566): low rank imposed while training.

:class:`TRPRegularizer` holds a model's eligible convs (k x k with k > 1,
groups 1, selected by name; TRP leaves the stem alone). Every ``period``
iterations, before the forward pass, each one's weight is overwritten by its
rank-r reconstruction (r: the smallest rank keeping ``energy`` of the squared
singular values, on the scheme's unfolding), and after the backward pass
``nuclear_weight`` x U_r V_r^T, the nuclear norm's sub-gradient from the same
SVD, is added to the weight's gradient. The trained network is then low-rank
by construction and is exported by a singular-value threshold into fused
LowRankConv2d layers (``export``) with no fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusenas._layer_select import as_patterns, selects
from fusenas.compress.decompose import DecomposeConfig, decompose_
from fusenas.nn.lowrank_factors import check_scheme, project_with_subgradient


@dataclass
class TRPSettings:
    """TRP's knobs (the paper's CIFAR values as defaults).

    Attributes:
        scheme: "channel" or "spatial".
        energy: fraction of sum(s^2) the in-training projection keeps (0.9).
        period: project every this many iterations (m; 1 in TRP's code).
        nuclear_weight: lambda of the nuclear-norm sub-gradient (3e-4).
        export_threshold: singular values >= this survive export (0.05).
        include / exclude: fnmatch patterns on conv names.
        min_kernel: decompose convs whose kernel is at least this wide (2: TRP's
            k > 1; 1 also factors 1x1 convs by the channel scheme).
    """

    scheme: str = "channel"
    energy: float = 0.9
    period: int = 1
    nuclear_weight: float = 3e-4
    export_threshold: float = 0.05
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("stem*",)
    min_kernel: int = 2

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        if not isinstance(self.energy, (int, float)) or not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy: expected a fraction in (0, 1], got {self.energy!r}")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"period: expected a positive integer, got {self.period!r}")
        for name in ("nuclear_weight", "export_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
        if isinstance(self.min_kernel, bool) or self.min_kernel not in range(1, 64):
            raise ValueError(f"min_kernel: expected a positive integer, got {self.min_kernel!r}")
        if self.min_kernel == 1 and self.scheme != "channel":
            raise ValueError("min_kernel: 1x1 convs only factor by the 'channel' scheme")
        self.include = as_patterns(self.include, "include")
        self.exclude = as_patterns(self.exclude, "exclude")


def eligible_convs(model: nn.Module, settings: TRPSettings) -> list[tuple[str, nn.Conv2d]]:
    """The convs TRP trains low-rank: k x k (k >= min_kernel), groups 1, selected by name."""
    out = [
        (name, m) for name, m in model.named_modules()
        if type(m) is nn.Conv2d and m.groups == 1 and min(m.kernel_size) >= settings.min_kernel
        and selects(name, settings.include, settings.exclude)
    ]  # fmt: skip
    if not out:
        raise ValueError(
            f"model: no eligible convolution (k x k, k >= {settings.min_kernel}, groups 1) "
            "is selected"
        )
    return out


class TRPRegularizer:
    """Applies TRP's projection and nuclear sub-gradient to a model's eligible convs.

    Use per iteration: ``before_forward(it)``, forward, backward,
    ``after_backward()``, optimizer step.
    """

    def __init__(self, model: nn.Module, settings: TRPSettings) -> None:
        self.settings = settings
        self.convs = eligible_convs(model, settings)
        self._pending: list[tuple[nn.Conv2d, torch.Tensor]] = []
        self.ranks: dict[str, int] = {}

    @torch.no_grad()
    def before_forward(self, iteration: int) -> bool:
        """Projects the weights on the iterations TRP does; returns whether it did."""
        self._pending = []
        if iteration % self.settings.period:
            return False
        for name, conv in self.convs:
            projected, sub, r = project_with_subgradient(
                conv.weight, self.settings.scheme, self.settings.energy
            )
            conv.weight.copy_(projected)
            self._pending.append((conv, sub))
            self.ranks[name] = r
        return True

    @torch.no_grad()
    def after_backward(self) -> None:
        """Adds lambda * U_r V_r^T to the projected weights' gradients."""
        lam = self.settings.nuclear_weight
        for conv, sub in self._pending:
            if conv.weight.grad is not None and lam:
                conv.weight.grad.add_(sub, alpha=lam)
        self._pending = []

    def export(self, model: nn.Module) -> list[dict]:
        """Replaces the trained convs by LowRankConv2d (singular-value threshold).

        Strided convs too: the projection made them low-rank like the others.
        """
        config = DecomposeConfig(
            scheme=self.settings.scheme, value_threshold=self.settings.export_threshold,
            include=tuple(n for n, _ in self.convs), exclude=(),
            min_kernel=self.settings.min_kernel, strided=True,
        )  # fmt: skip
        return decompose_(model, config)

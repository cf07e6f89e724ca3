"""Model conversion: swap eligible nn.Conv2d layers for fused LowRankConv2d in place.

Mirrors ``fusenas.quantize_``: a config selects layers by module name
(fnmatch include / exclude) and says how to pick each layer's rank; the model
changes in place and a per-layer report comes back. Eligible: stride-1 k x k
convs with k > 1, groups 1, zero padding, and strided ones too with
``strided=True`` (TRP's export: training made them low-rank as well). A layer
whose factors would cost as many MACs as the dense conv stays dense (logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusenas._layer_select import as_patterns, selects
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.lowrank_factors import check_scheme, choose_rank, singular_values

logger = logging.getLogger("fusenas.compress")


@dataclass
class DecomposeConfig:
    """What :func:`decompose_` converts, and at which rank.

    Attributes:
        scheme: "channel" or "spatial" (TRP's two decompositions).
        rank: a fixed rank for every layer (clamped to the layer's maximum), or ...
        energy: ... the smallest rank keeping this fraction of sum(s^2) (default 0.9), or ...
        value_threshold: ... the number of singular values >= this (TRP's export rule).
        include: fnmatch patterns on module names; a conv is converted when it
            matches one of them ...
        exclude: ... and none of these (e.g. ``("stem*",)`` for the first conv).
        keep_if_not_smaller: leave a layer dense when its factors would need at
            least the dense conv's MACs.
        strided: also convert strided convs (off by default: a stride-2 layer
            usually has few MACs to save, and with the spatial scheme its first
            factor runs at the full input width).
        min_kernel: smallest kernel side decomposed (2, as TRP; 1 also factors
            1x1 convs, channel scheme only).
    """

    scheme: str = "channel"
    rank: int | None = None
    energy: float | None = None
    value_threshold: float | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    keep_if_not_smaller: bool = True
    min_kernel: int = 2
    strided: bool = False

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        rules = [self.rank, self.energy, self.value_threshold]
        if sum(v is not None for v in rules) > 1:
            raise ValueError(
                "rank, energy, value_threshold: expected at most one of them, got "
                f"rank={self.rank!r}, energy={self.energy!r}, "
                f"value_threshold={self.value_threshold!r}"
            )
        if all(v is None for v in rules):
            self.energy = 0.9
        # Validate the rule's value once, on a dummy spectrum.
        dummy = torch.ones(1 if self.rank is None else max(int(self.rank), 1), dtype=torch.float64)
        choose_rank(dummy, self.rank, self.energy, self.value_threshold)
        self.include = as_patterns(self.include, "include")
        self.exclude = as_patterns(self.exclude, "exclude")
        if (
            isinstance(self.min_kernel, bool)
            or not isinstance(self.min_kernel, int)
            or (self.min_kernel < 1)
        ):
            raise ValueError(f"min_kernel: expected a positive integer, got {self.min_kernel!r}")
        if self.min_kernel == 1 and self.scheme != "channel":
            raise ValueError("min_kernel: 1x1 convs only factor by the 'channel' scheme")
        for name in ("keep_if_not_smaller", "strided"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")


def ineligible_reason(conv: nn.Conv2d, min_kernel: int = 2, strided: bool = False) -> str | None:
    """Why ``conv`` is not decomposed, or None when it is eligible."""
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if conv.stride != (1, 1) and not strided:
        return f"stride={conv.stride}"
    if min(conv.kernel_size) < min_kernel:
        return f"kernel_size={conv.kernel_size}"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding={conv.padding!r} padding_mode={conv.padding_mode!r}"
    return None


def _per_pixel_macs(conv: nn.Conv2d, rank: int, scheme: str) -> tuple[int, int]:
    # MACs per output pixel. The spatial scheme's first factor (kh x 1) runs at
    # the output's height but the input's width: stride_w times as many pixels.
    n, c, kh, kw = conv.weight.shape
    sw = conv.stride[1]
    low = (
        rank * c * kh * kw + n * rank if scheme == "channel" else rank * c * kh * sw + n * rank * kw
    )
    return n * c * kh * kw, low


def decompose_(model: nn.Module, config: DecomposeConfig | None = None) -> list[dict[str, Any]]:
    """Replaces the selected, eligible nn.Conv2d layers of ``model`` by LowRankConv2d in place.

    Args:
        model: any nn.Module.
        config: a :class:`DecomposeConfig` (default: channel scheme, energy 0.9).
    Returns:
        One dict per converted layer: ``name``, ``scheme``, ``rank``, ``max_rank``,
        ``params_before``, ``params_after``, ``mac_ratio`` (dense MACs / factor
        MACs per output pixel).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if config is None:
        config = DecomposeConfig()
    if not isinstance(config, DecomposeConfig):
        raise TypeError(f"config: expected a fusenas.DecomposeConfig, got {type(config).__name__}")
    plan = []
    for name, module in model.named_modules():
        if type(module) is not nn.Conv2d or not selects(name, config.include, config.exclude):
            continue
        if name == "":
            raise ValueError("model: the model itself is a conv; use LowRankConv2d.from_conv")
        reason = ineligible_reason(module, config.min_kernel, config.strided)
        if reason is not None:
            logger.info("decompose_: leaving %s dense: %s", name, reason)
            continue
        s = singular_values(module.weight, config.scheme)
        if config.rank is not None:
            rank = min(config.rank, s.numel())
        else:
            rank = choose_rank(s, None, config.energy, config.value_threshold)
        dense, low = _per_pixel_macs(module, rank, config.scheme)
        if config.keep_if_not_smaller and low >= dense:
            logger.info(
                "decompose_: leaving %s dense: rank %d needs %d MACs/pixel vs %d dense",
                name, rank, low, dense,
            )  # fmt: skip
            continue
        plan.append((name, module, rank, s.numel(), dense / low))
    report: list[dict[str, Any]] = []
    for name, module, rank, full, ratio in plan:
        low = LowRankConv2d.from_conv(module, config.scheme, rank=rank)
        model.set_submodule(name, low)
        report.append(
            {
                "name": name,
                "scheme": config.scheme,
                "rank": rank,
                "max_rank": full,
                "params_before": sum(p.numel() for p in module.parameters()),
                "params_after": sum(p.numel() for p in low.parameters()),
                "mac_ratio": ratio,
            }
        )
    return report


def format_decompose_report(report: list[dict[str, Any]]) -> str:
    """The report of :func:`decompose_` as a plain-text table."""
    head = f"{'layer':<28} {'scheme':<8} {'rank':>5} {'max':>5} {'params':>15} {'MAC x':>6}"
    lines = [head, "-" * len(head)]
    for r in report:
        params = f"{r['params_before']}->{r['params_after']}"
        lines.append(
            f"{r['name']:<28} {r['scheme']:<8} {r['rank']:>5} {r['max_rank']:>5} {params:>15} "
            f"{r['mac_ratio']:>6.2f}"
        )
    return "\n".join(lines)

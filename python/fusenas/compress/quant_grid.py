"""The grid a quantization-aware driver trains onto: the one the fused k-bit kernel runs.

Per layer and output channel, the levels are ``scale * q`` with integer q in
[-2^(b-1), 2^(b-1) - 1] (symmetric k-bit, b = 2..8) or q in {-1, 0, 1}
(ternary): exactly what a per-channel symmetric PackedWeight holds, so a
layer whose weights all sit on the grid exports to QuantConv2d / QuantLinear
with no further rounding. The scales come from the float weights once, at the
start (fusenas.quant.quantize_weight's MSE clip search; TWN's rule for
ternary), and stay fixed while the drivers quantize and re-train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear
from fusenas.quant.packed import PackedWeight, parse_bits, quantize_weight
from fusenas.quant.packing import pack_codes


def _rows(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) rows in the packed layout: convs as (N, kh, kw, C), as QuantConv2d stores them."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], -1)


@dataclass
class LayerGrid:
    """Levels of one layer: scale (N,) float32 per output channel, bit width, ternary."""

    scale: torch.Tensor
    bits: int
    ternary: bool

    @classmethod
    def fit(cls, weight: torch.Tensor, bits: int | str) -> LayerGrid:
        """The grid quantize_weight would choose for ``weight`` (per-channel, symmetric)."""
        nbits, ternary = parse_bits(bits)
        pw = quantize_weight(_rows(weight.detach()), bits, group_size=None, symmetric=True)
        return cls(pw.scales[:, 0].clone(), nbits, ternary)

    @property
    def qmin(self) -> int:
        return -1 if self.ternary else -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 1 if self.ternary else (1 << (self.bits - 1)) - 1

    def _scale_like(self, w: torch.Tensor) -> torch.Tensor:
        return self.scale.to(w.device, w.dtype).view(-1, *([1] * (w.dim() - 1)))

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer level (same shape as w) of the nearest grid point to each weight."""
        return torch.clamp(torch.round(w / self._scale_like(w)), self.qmin, self.qmax)

    def snap(self, w: torch.Tensor) -> torch.Tensor:
        """Each weight moved to its nearest grid point."""
        return self.codes(w) * self._scale_like(w)

    def distance(self, w: torch.Tensor) -> torch.Tensor:
        """|w - snap(w)|: the quantization distance of every weight."""
        return (w - self.snap(w)).abs()

    def on_grid(self, w: torch.Tensor, atol: float = 1e-6) -> bool:
        return bool((self.distance(w) <= atol * self._scale_like(w)).all())

    def packed(self, weight: torch.Tensor) -> PackedWeight:
        """The PackedWeight holding exactly ``snap(weight)``, in QuantConv2d/QuantLinear layout."""
        rows = _rows(self.codes(weight.detach().float()))
        zero = 1 if self.ternary else 1 << (self.bits - 1)
        n, k = rows.shape
        return PackedWeight(
            codes=pack_codes((rows + zero).to(torch.int64), self.bits),
            scales=self.scale.float().reshape(n, 1).contiguous(),
            zeros=None,
            shape=(n, k),
            bits=self.bits,
            ternary=self.ternary,
            group_size=k,
        )


def export_layer(module: nn.Module, grid: LayerGrid) -> QuantConv2d | QuantLinear:
    """The k-bit module computing ``module`` with its weights snapped to ``grid``."""
    pw = grid.packed(module.weight)
    bias = None if module.bias is None else module.bias.detach().float()
    if isinstance(module, nn.Linear):
        return QuantLinear.from_packed(pw, bias)
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_packed(pw, bias, module.in_channels, module.kernel_size,
                                       module.stride, module.padding, module.dilation)  # fmt: skip
    raise TypeError(f"module: expected nn.Linear or nn.Conv2d, got {type(module).__name__}")

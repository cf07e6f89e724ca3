"""QuantLinear: an nn.Linear whose weight is packed k-bit, run by fusenas.ops.kbit_matmul.

The weight is frozen (inference / post-training quantization); gradients flow
to the input only, through the op's registered autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusenas.nn._packed_base import PackedWeightModule, check_positive_int
from fusenas.quant.packed import PackedWeight, dequantize, quantize_weight


class QuantLinear(PackedWeightModule):
    """y = x @ dequant(W)^T + b with W packed to 2..8 bits or ternary.

    Args:
        in_features: K.
        out_features: N.
        bias: whether the module has a bias (float, cast to the input's dtype).
        bits: 2..8 or ``"ternary"``.
        group_size: elements of K per scale (a multiple of 16 dividing K), or
            None for one scale per output channel.
        symmetric: symmetric codes (no zero-point buffer) or per-group zero points.
        device: where the (zero-initialised) buffers live.

    Build one from a trained layer with :meth:`from_float`; the constructor only
    allocates buffers of the right shapes (e.g. to ``load_state_dict`` into).

    Buffers: ``codes`` uint8 (N, row_bytes(K, bits)), ``scales`` float32
    (N, K // group_size), ``zeros`` float32 (N, K // group_size) or None,
    ``bias`` (N,) or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int | str = 4,
        group_size: int | None = None,
        symmetric: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self._init_packed(out_features, in_features, bits, group_size, symmetric, bias, device)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        bits: int | str = 4,
        group_size: int | None = 128,
        symmetric: bool = True,
    ) -> QuantLinear:
        """Quantizes ``linear.weight`` (N, K) and copies its bias.

        Args:
            linear: a float ``nn.Linear`` (any float dtype, any device).
            bits, group_size, symmetric: as in :func:`fusenas.quant.quantize_weight`;
                ``group_size`` must divide K (``fusenas.quantize_`` falls back to
                per-channel for you).
        Returns:
            QuantLinear on ``linear``'s device; the bias keeps its dtype.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        pw = quantize_weight(linear.weight, bits, group_size, symmetric)
        return cls.from_packed(pw, linear.bias)

    @classmethod
    def from_packed(cls, weight: PackedWeight, bias: torch.Tensor | None = None) -> QuantLinear:
        """Wraps an existing PackedWeight (N, K) and optional bias (N,)."""
        if not isinstance(weight, PackedWeight):
            raise TypeError(f"weight: expected a PackedWeight, got {type(weight).__name__}")
        n, k = weight.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
            raise ValueError(f"bias: expected a tensor of shape ({n},) or None")
        bits: int | str = "ternary" if weight.ternary else weight.bits
        mod = cls(k, n, bias is not None, bits, weight.group_size, weight.symmetric, weight.device)
        mod._load_packed(weight, bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., K) float (float32 / bfloat16 take the native CPU kernel) -> (..., N)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        return self._kbit_matmul(x.contiguous())

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the module applies, float32 (out_features, in_features)."""
        return dequantize(self.packed)

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the layer (used by fusenas.quant.io)."""
        return {"type": "QuantLinear", **self._packed_description()}

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> QuantLinear:
        """Empty module (zero buffers) matching :meth:`describe`'s output."""
        n, k = desc["shape"]
        bits = "ternary" if desc["ternary"] else desc["bits"]
        return cls(k, n, desc["has_bias"], bits, desc["group_size"], desc["symmetric"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + (
            self._packed_repr()
        )

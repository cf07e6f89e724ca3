"""Shared state of the k-bit modules: a PackedWeight kept as registered buffers.

QuantLinear and QuantConv2d both hold an (N, K) packed weight. Keeping codes,
scales and zero points as buffers (not a PackedWeight attribute) makes
``module.to(device)``, ``state_dict()`` / ``load_state_dict()`` and
``torch.compile`` treat them like any other module state. ``module.to(dtype)``
would also cast the float32 scales; ``_apply`` undoes that, because the kernels
read scales and zero points as float32 whatever the activation dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusenas.quant.packed import PackedWeight, parse_bits, resolve_group_size
from fusenas.quant.packing import row_bytes

_FLOAT32_BUFFERS = ("scales", "zeros")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


class PackedWeightModule(nn.Module):
    """Base class: buffers ``codes``, ``scales``, ``zeros`` (or None) and ``bias`` (or None).

    Subclasses call :meth:`_init_packed` in ``__init__`` and :meth:`_kbit_matmul`
    in ``forward``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bias: torch.Tensor | None

    def _init_packed(
        self,
        n: int,
        k: int,
        bits: int | str,
        group_size: int | None,
        symmetric: bool,
        bias: bool,
        device: torch.device | str | None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        nbits, ternary = parse_bits(bits)
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
        if ternary and not symmetric:
            raise ValueError("symmetric: ternary weights are symmetric; pass symmetric=True")
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        g = resolve_group_size(group_size, k)
        self.bits = nbits
        self.ternary = ternary
        self.group_size = g
        self.symmetric = symmetric
        self._n, self._k = n, k
        groups = k // g
        self.register_buffer(
            "codes", torch.zeros(n, row_bytes(k, nbits), dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.ones(n, groups, dtype=torch.float32, device=device))
        zeros = None if symmetric else torch.zeros(n, groups, dtype=torch.float32, device=device)
        self.register_buffer("zeros", zeros)
        self.register_buffer(
            "bias", torch.zeros(n, dtype=bias_dtype, device=device) if bias else None
        )

    def _load_packed(self, pw: PackedWeight, bias: torch.Tensor | None) -> None:
        """Copies a PackedWeight (and bias) of matching geometry into the buffers."""
        if pw.shape != (self._n, self._k) or pw.bits != self.bits or pw.ternary != self.ternary:
            raise ValueError(
                f"weight: expected a {self.bits}-bit {(self._n, self._k)} PackedWeight, got "
                f"{pw.bits}-bit {pw.shape}"
            )
        if pw.group_size != self.group_size or pw.symmetric != self.symmetric:
            raise ValueError("weight: group_size / symmetric differ from the module's")
        dev = self.codes.device
        self.codes = pw.codes.to(dev)
        self.scales = pw.scales.to(device=dev, dtype=torch.float32)
        if pw.zeros is not None:
            self.zeros = pw.zeros.to(device=dev, dtype=torch.float32)
        if self.bias is not None:
            if bias is None:
                raise ValueError("bias: the module has a bias but none was given")
            self.bias = bias.detach().to(dev).clone()

    @property
    def packed(self) -> PackedWeight:
        """The module's weight as a PackedWeight (views of the buffers, no copy)."""
        return PackedWeight(
            self.codes,
            self.scales,
            self.zeros,
            (self._n, self._k),
            self.bits,
            self.ternary,
            self.group_size,
        )

    @property
    def bits_label(self) -> str:
        """``"ternary"`` or the code width as a string."""
        return "ternary" if self.ternary else str(self.bits)

    def weight_bytes(self) -> int:
        """Bytes of the packed weight: codes + float32 scales (+ zero points); bias excluded."""
        return self.packed.nbytes()

    def _kbit_matmul(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., K) contiguous rows -> (..., N) in rows' dtype."""
        bias = None if self.bias is None else self.bias.to(rows.dtype)
        # Imported here: fusenas.ops.kbit_matmul imports fusenas.quant, which imports this.
        from fusenas.ops.kbit_matmul import kbit_matmul_tensors

        return kbit_matmul_tensors(
            rows, self.codes, self.scales, self.zeros, bias, self.bits, self.ternary,
            self.group_size,
        )  # fmt: skip

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Keep scales / zero points float32 under module.to(dtype), .half(), .bfloat16().
        before = {n: getattr(self, n) for n in _FLOAT32_BUFFERS if getattr(self, n) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype != torch.float32:
                setattr(self, name, old.to(device=new.device))
        return self

    def _packed_description(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "ternary": self.ternary,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "shape": [self._n, self._k],
            "has_bias": self.bias is not None,
        }

    def _packed_repr(self) -> str:
        g = "per-channel" if self.group_size == self._k else str(self.group_size)
        return (
            f"bits={self.bits_label}, group_size={g}, symmetric={self.symmetric}, "
            f"bias={self.bias is not None}"
        )

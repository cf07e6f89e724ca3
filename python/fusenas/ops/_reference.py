"""Pure-torch references of the fused ops: the ground truth in tests, and the
fallback wherever no native kernel applies (float64, float16 on CPU, other
devices, or an install without the extensions)."""

from __future__ import annotations

import torch

from fusenas.quant.packing import unpack_codes


def dequantize_reference(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    bits: int,
    ternary: bool,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantized weight (N, K) in ``dtype``, computed in float32."""
    n = codes.shape[0]
    q = unpack_codes(codes, bits, k).to(torch.float32).reshape(n, k // group_size, group_size)
    if zeros is None:
        z = 1.0 if ternary else float(1 << (bits - 1))
    else:
        z = zeros.to(torch.float32).unsqueeze(-1)
    w = (q - z) * scales.to(torch.float32).unsqueeze(-1)
    return w.reshape(n, k).to(dtype)


def kbit_matmul_reference(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    bits: int,
    ternary: bool,
    group_size: int,
) -> torch.Tensor:
    """y = x @ dequant(W)^T + bias, accumulated in float32 (float64 for float64 x)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = dequantize_reference(codes, scales, zeros, x.shape[-1], bits, ternary, group_size, acc)
    y = torch.matmul(x.to(acc), w.t())
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)

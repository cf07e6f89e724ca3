"""Packed k-bit weights: quantize a float weight, dequantize it back.

A :class:`PackedWeight` holds the integer codes of an (N, K) weight packed as
``docs/kbit_format.md`` describes, one float32 scale per (row, group) and, for
asymmetric quantization, one float32 zero point per (row, group). The weight
it stands for is ``W[n, k] = (code[n, k] - zero[n, g]) * scale[n, g]`` with
``g = k // group_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusenas.quant.packing import FORMAT_VERSION, pack_codes, row_bytes, unpack_codes

TERNARY = "ternary"
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class PackedWeight:
    """A k-bit weight of logical shape (N, K).

    Attributes:
        codes: uint8 (N, row_bytes(K, bits)), the packed codes.
        scales: float32 (N, groups).
        zeros: float32 (N, groups) zero points in code units, or None (symmetric:
            the zero point is 2**(bits-1), or 1 for ternary).
        shape: (N, K).
        bits: code width, 2..8 (ternary weights use 2-bit codes 0, 1, 2).
        ternary: codes mean {-1, 0, +1} x scale.
        group_size: elements of K sharing a scale; equals K for per-channel scales.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    shape: tuple[int, int]
    bits: int
    ternary: bool
    group_size: int
    format_version: int = FORMAT_VERSION

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def zero_point(self) -> float:
        """The zero point of symmetric weights."""
        return 1.0 if self.ternary else float(1 << (self.bits - 1))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def nbytes(self) -> int:
        """Bytes of codes, scales and zero points."""
        total = self.codes.numel() + self.scales.numel() * 4
        return total + (self.zeros.numel() * 4 if self.zeros is not None else 0)

    def to(self, device: torch.device | str) -> PackedWeight:
        return PackedWeight(
            self.codes.to(device),
            self.scales.to(device),
            None if self.zeros is None else self.zeros.to(device),
            self.shape,
            self.bits,
            self.ternary,
            self.group_size,
            self.format_version,
        )

    def int_codes(self) -> torch.Tensor:
        """Unpacked integer codes, int32 (N, K)."""
        return unpack_codes(self.codes, self.bits, self.shape[1])


def parse_bits(bits: int | str) -> tuple[int, bool]:
    """Returns (code width, ternary) for ``bits`` in 2..8 or ``"ternary"``."""
    if isinstance(bits, str):
        if bits.lower() == TERNARY:
            return 2, True
        if bits.isdigit():
            bits = int(bits)
        else:
            raise ValueError(f"bits: expected an integer in 2..8 or 'ternary', got {bits!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits: expected an integer in 2..8 or 'ternary', got {bits!r}")
    return bits, False


def resolve_group_size(group_size: int | None, k: int) -> int:
    """Checks ``group_size`` against K; None or -1 means one group per row (per-channel)."""
    if group_size is None or group_size == -1 or group_size == k:
        return k
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive integer or None, got {group_size!r}")
    if group_size % 16 != 0:
        raise ValueError(
            f"group_size: expected a multiple of 16 (e.g. 32, 64, 128), got {group_size}"
        )
    if k % group_size != 0:
        raise ValueError(
            f"group_size: K={k} (the weight's input size) is not a multiple of "
            f"group_size={group_size}"
        )
    return group_size


def quantize_weight(
    w: torch.Tensor,
    bits: int | str = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    clip_search: bool = True,
) -> PackedWeight:
    """Quantizes a float weight (N, K) to packed k-bit codes.

    Args:
        w: float weight (N, K) (e.g. ``nn.Linear.weight``); any float dtype, any device.
        bits: 2..8, or ``"ternary"`` ({-1, 0, +1} x scale, scale from TWN's rule:
            threshold 0.7 * mean|w|, scale = mean |w| above it).
        group_size: elements of K per scale (a multiple of 16 dividing K, e.g. 32,
            64, 128), or None for one scale per output channel.
        symmetric: zero point fixed at 2**(bits-1) (scale = absmax / (2**(bits-1) - 1));
            otherwise a per-group zero point from the group's min and max.
        clip_search: per group, try the range shrunk by each of CLIP_RATIOS
            (1.0 down to 0.3) and keep the scale with the least squared error, as
            llama.cpp's and AWQ's clip searches do; large at 2-3 bits, where the
            min/max scale leaves most weights in the zero bin. False: plain
            min/max (absmax) scales. Ternary always uses TWN's rule.
    Returns:
        PackedWeight on ``w``'s device.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w: expected a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"w: expected a 2-D (N, K) weight, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"w: expected a floating-point tensor, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"w: expected a non-empty weight, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w: the weight contains NaN or Inf; cannot quantize")
    nbits, ternary = parse_bits(bits)
    n, k = w.shape
    g = resolve_group_size(group_size, k)
    if ternary and not symmetric:
        raise ValueError("symmetric: ternary weights are symmetric; pass symmetric=True")
    wf = w.detach().to(torch.float32).reshape(n, k // g, g)
    qmax = (1 << nbits) - 1
    zeros = None
    if ternary:
        absw = wf.abs()
        delta = 0.7 * absw.mean(dim=2, keepdim=True)
        mask = absw > delta
        cnt = mask.sum(dim=2, keepdim=True).clamp_min(1)
        scale = torch.where(mask, absw, torch.zeros_like(absw)).sum(dim=2, keepdim=True) / cnt
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.sign(wf) * mask + 1
    else:
        ratios = CLIP_RATIOS if clip_search else (1.0,)
        best_err = None
        for r in ratios:
            sc, zp = _scale_and_zero(wf, nbits, symmetric, r)
            qr = torch.clamp(torch.round(wf / sc) + zp, 0, qmax)
            err = ((qr - zp) * sc - wf).square().sum(dim=2, keepdim=True)
            if best_err is None:
                best_err, scale, zero, q = err, sc, zp, qr
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            scale = torch.where(better, sc, scale)
            q = torch.where(better, qr, q)
            if not symmetric:
                zero = torch.where(better, zp, zero)
        if not symmetric:
            zeros = zero.reshape(n, k // g).contiguous()
    codes = pack_codes(q.reshape(n, k).to(torch.int64), nbits)
    return PackedWeight(
        codes=codes,
        scales=scale.reshape(n, k // g).contiguous(),
        zeros=zeros,
        shape=(n, k),
        bits=nbits,
        ternary=ternary,
        group_size=g,
    )


CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(15))  # 1.0 .. 0.3


def _scale_and_zero(
    wf: torch.Tensor, nbits: int, symmetric: bool, ratio: float
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Scale and zero point of each group (N, groups, 1) with the range shrunk by ``ratio``."""
    qmax = (1 << nbits) - 1
    if symmetric:
        zp = float(1 << (nbits - 1))
        scale = wf.abs().amax(dim=2, keepdim=True) * (ratio / (zp - 1))
        return torch.where(scale > 0, scale, torch.ones_like(scale)), zp
    lo = wf.amin(dim=2, keepdim=True).clamp_max(0) * ratio
    hi = wf.amax(dim=2, keepdim=True).clamp_min(0) * ratio
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.clamp(torch.round(-lo / scale), 0, qmax)


def dequantize(pw: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight a PackedWeight stands for, (N, K) in ``dtype`` (pure torch)."""
    n, k = pw.shape
    q = pw.int_codes().to(torch.float32).reshape(n, k // pw.group_size, pw.group_size)
    z = pw.zero_point if pw.zeros is None else pw.zeros.unsqueeze(-1)
    return ((q - z) * pw.scales.unsqueeze(-1)).reshape(n, k).to(dtype)


def expected_codes_bytes(n: int, k: int, bits: int) -> int:
    return n * row_bytes(k, bits)

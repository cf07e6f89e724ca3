"""Bit layout of packed k-bit codes (docs/kbit_format.md, format version 1).

Mirrors ``csrc/common/kbit_layout.h``: a row of K codes is cut into blocks of
128; each block of a b-bit code takes ``16 * b`` bytes, split into bit planes
of width 4, 2 or 1 (low bits first; 8-bit codes are one 8-bit plane). In a
plane of width p (4p little-endian uint32 words) element ``e`` of the block is
word ``e % (4p)``, bit field ``e // (4p)``. Pure torch, vectorised: packing a
4096 x 4096 weight takes well under a second.
"""

from __future__ import annotations

import torch

from fusenas import weight_memory

FORMAT_VERSION = 1
BLOCK = 128


def plane_widths(bits: int) -> list[int]:
    """Widths of the bit planes of a ``bits``-bit code, low bits first."""
    if bits == 8:
        return [8]
    return [w for w in (4, 2, 1) if bits & w]


def num_blocks(k: int) -> int:
    return (k + BLOCK - 1) // BLOCK


def row_bytes(k: int, bits: int) -> int:
    """Bytes of one packed row of ``k`` codes."""
    return num_blocks(k) * 16 * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integer codes (N, K) with values in [0, 2**bits) into uint8 (N, row_bytes(K, bits)).

    Codes past K in the last block are written as 0; kernels never read them.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes: expected a 2-D (N, K) tensor, got shape {tuple(codes.shape)}")
    n, k = codes.shape
    nb = num_blocks(k)
    c = torch.zeros(n, nb * BLOCK, dtype=torch.int64, device=codes.device)
    c[:, :k] = codes.to(torch.int64)
    c = c.view(n, nb, BLOCK)
    planes = []
    shift = 0
    for p in plane_widths(bits):
        words = 4 * p
        fields = 32 // p
        v = (c >> shift) & ((1 << p) - 1)
        v = v.view(n, nb, fields, words)  # e = field * words + word
        weights = torch.tensor(
            [1 << (p * f) for f in range(fields)], dtype=torch.int64, device=codes.device
        )
        word_vals = (v * weights.view(1, 1, fields, 1)).sum(dim=2)  # (n, nb, words)
        byte_shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=codes.device)
        b = (word_vals.unsqueeze(-1) >> byte_shifts) & 0xFF  # (n, nb, words, 4)
        planes.append(b.reshape(n, nb, words * 4))
        shift += p
    packed = torch.cat(planes, dim=2).reshape(n, nb * 16 * bits).to(torch.uint8).contiguous()
    return weight_memory.place(packed)  # large CPU codes: 2 MiB-aligned, for huge pages


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 (N, row_bytes) -> int32 codes (N, K)."""
    n = packed.shape[0]
    nb = num_blocks(k)
    raw = packed.reshape(n, nb, 16 * bits).to(torch.int64)
    codes = torch.zeros(n, nb, BLOCK, dtype=torch.int64, device=packed.device)
    offset = 0
    shift = 0
    byte_shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=packed.device)
    for p in plane_widths(bits):
        words = 4 * p
        fields = 32 // p
        b = raw[:, :, offset : offset + 16 * p].reshape(n, nb, words, 4)
        word_vals = (b << byte_shifts).sum(dim=-1)  # (n, nb, words)
        f_shift = torch.tensor(
            [p * f for f in range(fields)], dtype=torch.int64, device=packed.device
        )
        v = (word_vals.unsqueeze(2) >> f_shift.view(1, 1, fields, 1)) & ((1 << p) - 1)
        codes |= v.reshape(n, nb, BLOCK) << shift
        offset += 16 * p
        shift += p
    return codes.reshape(n, nb * BLOCK)[:, :k].to(torch.int32)

"""The CPU's table layout of 2-bit, ternary and 3-bit weights, for the batch-1 GEMV.

On AVX-512 CPUs with AVX512_VNNI a 2-bit (or ternary, or 3-bit) weight
multiplied by a single row of x runs a GEMV on subset-sum tables
(``csrc/cpu/kbit_gemv_lut_avx512_vnni.cpp``) whose work per weight grows with
the bit width (2-bit: half that of the kernel on codes). Its tables hold x's
sums as int16 per 128-input block: each entry within 1/65534 of the block's
largest, about 3e-5 of the output's largest value against float64 (the kernel
on codes, ``FUSENAS_CPU_LUT=0``, keeps 16 bits per x: about 5e-6). It reads
the codes in its own layout (``docs/kbit_format.md``, "CPU table layout"),
which this module builds from the packed codes once per weight and keeps
beside it: the copy is as large as the codes (4.2 MB for a 2-bit 4096 x 4096
weight) and lives as long as the codes tensor does. ``FUSENAS_CPU_LUT=0``
turns the path off (no copy is made)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from fusenas import weight_memory
from fusenas.quant.packing import BLOCK, num_blocks

TILE = 16  # output rows per tile: one float32 lane each
CHUNK = 16  # inputs per 64-byte tile chunk: 4 nibbles of 4 inputs in each word
PASS = 8  # tiles per pass (kLutTilesPerPass in csrc/common/kbit_layout.h)


@dataclass(frozen=True)
class LutWeight:
    """A 2- or 3-bit weight in the CPU table layout (docs/kbit_format.md).

    Rows go in tiles of 16, tiles in passes of 8 (the last pass may hold fewer);
    the GEMV reads one pass as one sequential stream.

    Attributes:
        codes: uint8, flat: per pass, per pair of 16-input chunks, 2 or 3
            vectors of (tile, 16 little-endian uint32 words, one per row): for
            each chunk c of the pair, bit u of the low half is bit 1 of the code
            of input 16c + u, bit u of the high half its bit 0; for 3-bit codes
            a third vector holds their bit 2, the pair's first chunk in the low
            half, its second in the high half.
        scale: float32, flat: per pass, per group, per tile, the 16 rows'
            scales (0 on the padding rows of the last tile).
        offset: float32, same order: scale * (centre - zero point), centre =
            (2**bits - 1) / 2, for asymmetric codes; None for symmetric and
            ternary ones, whose centre - zero point is zero_term for every row.
        zero_term: centre - the zero point where offset is None (-0.5
            symmetric, 0.5 ternary).
        bits: 2 (and ternary) or 3.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    zero_term: float
    bits: int


def build_lut_weight(
    ext,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    bits: int,
    ternary: bool,
) -> LutWeight:
    """The table layout of a 2- or 3-bit packed weight (codes uint8 (N, row_bytes(k, bits))).

    ext is the native CPU module (fusenas._C), whose packer writes the codes.
    """
    n = codes.shape[0]
    tiles = -(-n // TILE)
    vectors = 3 if bits == 3 else 2  # per pair of chunks: kbit::lut_vectors_per_pair
    pairs = num_blocks(k) * BLOCK // (2 * CHUNK)
    # Streamed once per batch-1 call: 2 MiB-aligned, for huge pages (weight_memory.py).
    lut_codes = weight_memory.empty((tiles * pairs * vectors * 64,), torch.uint8)
    ext.kbit_lut_pack_codes_cpu(
        codes.data_ptr(), n, k, codes.stride(0), bits, lut_codes.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    groups = scales.shape[1]
    s = torch.zeros(tiles * TILE, groups, dtype=torch.float32)
    s[:n] = scales
    centre = ((1 << bits) - 1) / 2
    if zeros is None:  # one zero point (as dequantize_reference's): the kernel applies centre - z
        z = 1.0 if ternary else float(1 << (bits - 1))
        return LutWeight(lut_codes, pass_major(s, tiles), None, centre - z, bits)
    z = torch.zeros_like(s)
    z[:n] = zeros
    offset = pass_major(s * (centre - z), tiles)
    return LutWeight(lut_codes, pass_major(s, tiles), offset, 0.0, bits)


def pass_major(t: torch.Tensor, tiles: int) -> torch.Tensor:
    """(tiles * 16, groups) per-row values -> flat, in (pass, group, tile, row) order."""
    by_tile = t.view(tiles, TILE, -1).permute(0, 2, 1)  # (tile, group, row)
    passes = [by_tile[i : i + PASS].transpose(0, 1).reshape(-1) for i in range(0, tiles, PASS)]
    return torch.cat(passes)


# id(codes) -> (weak reference to codes, guard, LutWeight). Keyed by identity
# (tensors compare elementwise); an entry leaves when its codes tensor dies.
_cache: dict[int, tuple] = {}


def _guard(codes, scales, zeros, k, bits, ternary):
    """What the cached layout was built from: in-place writes bump _version."""
    parts = [codes.data_ptr(), codes._version, scales.data_ptr(), scales._version, k, bits, ternary]
    if zeros is not None:
        parts += [zeros.data_ptr(), zeros._version]
    return tuple(parts)


def lut_weight(
    ext,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    bits: int,
    ternary: bool,
) -> LutWeight:
    """The cached table layout of these codes (built on first use or after any change)."""
    key = id(codes)
    guard = _guard(codes, scales, zeros, k, bits, ternary)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is codes and hit[1] == guard:
        return hit[2]
    lut = build_lut_weight(ext, codes, scales, zeros, k, bits, ternary)
    _cache[key] = (weakref.ref(codes, lambda _, key=key: _cache.pop(key, None)), guard, lut)
    return lut

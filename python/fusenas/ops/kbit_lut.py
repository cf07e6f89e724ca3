"""The CPU's table layout of 2-bit and ternary weights, for the batch-1 GEMV.

On AVX-512 CPUs with AVX512_VNNI a 2-bit (or ternary) weight multiplied by a
single row of x runs a GEMV on subset-sum tables
(``csrc/cpu/kbit_gemv_lut_avx512_vnni.cpp``) that does half the work per weight
of the kernel on codes, so 2-bit weights cost about half the compute of 4-bit
ones. Its tables hold x's sums as int16 per 128-input block: each entry within
1/65534 of the block's largest, about 3e-5 of the output's largest value
against float64 (the kernel on codes, ``FUSENAS_CPU_LUT=0``, keeps 16 bits per
x: about 3e-6). It reads the codes in its own
layout (``docs/kbit_format.md``, "CPU table layout"), which this module builds
from the packed codes once per weight and keeps beside it: the copy is as
large as the codes (4.2 MB for a 4096 x 4096 weight) and lives as long as the
codes tensor does. ``FUSENAS_CPU_LUT=0`` turns the path off (no copy is made).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch

from fusenas.quant.packing import BLOCK, num_blocks

TILE = 16  # output rows per tile: one float32 lane each
CHUNK = 16  # inputs per 64-byte tile chunk: 4 nibbles of 4 inputs in each word
PASS = 8  # tiles per pass (kLutTilesPerPass in csrc/common/kbit_layout.h)


@dataclass(frozen=True)
class LutWeight:
    """A 2-bit weight in the CPU table layout (docs/kbit_format.md).

    Rows go in tiles of 16, tiles in passes of 8 (the last pass may hold fewer);
    the GEMV reads one pass as one sequential stream.

    Attributes:
        codes: uint8, flat: per pass, per chunk of 16 inputs, per tile, 16
            little-endian uint32 words, one per row; bit u of the low half is
            bit 1 of the code of input 16c + u, bit u of the high half its bit 0.
        scale: float32, flat: per pass, per group, per tile, the 16 rows'
            scales (0 on the padding rows of the last tile).
        offset: float32, same order: scale * (1.5 - zero point), for asymmetric
            codes; None for symmetric and ternary ones, whose 1.5 - zero point
            is zero_term for every row (-0.5 and 0.5).
        zero_term: 1.5 - the zero point where offset is None.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    zero_term: float


def enabled() -> bool:
    """False when FUSENAS_CPU_LUT=0."""
    return os.environ.get("FUSENAS_CPU_LUT", "1") != "0"


def build_lut_weight(
    ext,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    ternary: bool,
) -> LutWeight:
    """The table layout of a 2-bit packed weight (codes uint8 (N, row_bytes(k, 2)), on CPU).

    ext is the native CPU module (fusenas._C), whose packer writes the codes.
    """
    n = codes.shape[0]
    tiles = -(-n // TILE)
    lut_codes = torch.empty(tiles * (num_blocks(k) * BLOCK // CHUNK) * 64, dtype=torch.uint8)
    ext.kbit_lut_pack_codes_cpu(
        codes.data_ptr(), n, k, codes.stride(0), lut_codes.data_ptr(), torch.get_num_threads()
    )
    groups = scales.shape[1]
    s = torch.zeros(tiles * TILE, groups, dtype=torch.float32)
    s[:n] = scales
    if zeros is None:  # one zero point: the kernel applies 1.5 - z itself
        return LutWeight(lut_codes, pass_major(s, tiles), None, 0.5 if ternary else -0.5)
    z = torch.zeros_like(s)
    z[:n] = zeros
    return LutWeight(lut_codes, pass_major(s, tiles), pass_major(s * (1.5 - z), tiles), 0.0)


def pass_major(t: torch.Tensor, tiles: int) -> torch.Tensor:
    """(tiles * 16, groups) per-row values -> flat, in (pass, group, tile, row) order."""
    by_tile = t.view(tiles, TILE, -1).permute(0, 2, 1)  # (tile, group, row)
    passes = [by_tile[i : i + PASS].transpose(0, 1).reshape(-1) for i in range(0, tiles, PASS)]
    return torch.cat(passes)


# id(codes) -> (weak reference to codes, guard, LutWeight). Keyed by identity
# (tensors compare elementwise); an entry leaves when its codes tensor dies.
_cache: dict[int, tuple] = {}


def _guard(codes, scales, zeros, k, ternary):
    """What the cached layout was built from: in-place writes bump _version."""
    parts = [codes.data_ptr(), codes._version, scales.data_ptr(), scales._version, k, ternary]
    if zeros is not None:
        parts += [zeros.data_ptr(), zeros._version]
    return tuple(parts)


def lut_weight(
    ext,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    ternary: bool,
) -> LutWeight:
    """The cached table layout of these codes (built on first use or after any change)."""
    key = id(codes)
    guard = _guard(codes, scales, zeros, k, ternary)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is codes and hit[1] == guard:
        return hit[2]
    lut = build_lut_weight(ext, codes, scales, zeros, k, ternary)
    _cache[key] = (weakref.ref(codes, lambda _, key=key: _cache.pop(key, None)), guard, lut)
    return lut

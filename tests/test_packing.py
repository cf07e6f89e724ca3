"""The packed k-bit layout: exact round trips and agreement with the spec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.quant.packing import BLOCK, pack_codes, plane_widths, row_bytes, unpack_codes


def naive_code_at(row: bytes, bits: int, e: int) -> int:
    """docs/kbit_format.md, read literally: block e // 128, planes low bits first."""
    block, e = divmod(e, BLOCK)
    base = block * 16 * bits
    code, shift, offset = 0, 0, 0
    for p in plane_widths(bits):
        words = 4 * p
        word, field = e % words, e // words
        start = base + offset + 4 * word
        value = int.from_bytes(row[start : start + 4], "little")
        code |= ((value >> (p * field)) & ((1 << p) - 1)) << shift
        shift += p
        offset += 16 * p
    return code


@pytest.mark.parametrize("bits", range(2, 9))
def test_plane_widths_sum_to_bits(bits):
    assert sum(plane_widths(bits)) == bits
    assert all(p in (1, 2, 4, 8) for p in plane_widths(bits))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("k", [1, 17, 128, 200])
def test_layout_matches_spec(bits, k):
    g = torch.Generator().manual_seed(bits * 1000 + k)
    codes = torch.randint(0, 1 << bits, (3, k), generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, row_bytes(k, bits))
    for n in range(3):
        row = bytes(packed[n].tolist())
        for e in range(k):
            assert naive_code_at(row, bits, e) == codes[n, e].item()


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    n=st.integers(1, 5),
    k=st.integers(1, 400),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip(bits, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, k), codes.to(torch.int32))


def test_size_is_bits_per_weight():
    # 4096 x 4096 at 4 bits: exactly K * bits / 8 bytes per row, no padding.
    assert row_bytes(4096, 4) == 4096 * 4 // 8
    assert row_bytes(11008, 3) == 11008 * 3 // 8

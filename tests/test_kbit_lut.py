"""The batch-1 GEMV of 2-bit and ternary weights on subset-sum tables
(fusenas/ops/kbit_lut.py, csrc/cpu/kbit_gemv_lut_avx512_vnni.cpp): its
weight layout against a construction from the format's text, its products
against float64, and the cache that keeps the layout beside the codes."""

from __future__ import annotations

import gc

import pytest
import torch

import fusenas
from fusenas.ops import _native, kbit_lut
from fusenas.ops.kbit_matmul import kbit_matmul
from fusenas.quant.packed import quantize_weight

ext = _native.cpu()
needs_lut = pytest.mark.skipif(
    ext is None or not ext.kbit_lut_available(),
    reason="needs fusenas._C on a CPU with AVX512_VNNI",
)


def _layout_from_text(pw) -> torch.Tensor:
    """docs/kbit_format.md, "CPU table layout", written out with torch ops."""
    n, k = pw.shape
    tiles, kp = -(-n // 16), -(-k // 128) * 128
    q = torch.zeros(tiles * 16, kp, dtype=torch.int64)
    q[:n, :k] = pw.int_codes().long()
    q = q.view(tiles, 16, kp // 16, 16)  # (tile, row, chunk, input u of the chunk)
    bit = torch.tensor([1 << u for u in range(16)], dtype=torch.int64)

    def half(plane):  # (tile, row, chunk): bit u = that plane of input u's code
        return (((q >> plane) & 1) * bit).sum(-1)

    word = half(1) | (half(0) << 16)
    vectors = [word[..., 0::2], word[..., 1::2]]  # per pair of chunks: both chunks' (b1, b0)
    if pw.bits == 3:  # then b2: the pair's first chunk in the low half, its second in the high
        vectors.append(half(2)[..., 0::2] | (half(2)[..., 1::2] << 16))
    word = torch.stack(vectors, -1).permute(0, 2, 3, 1)  # (tile, pair, vector, row)
    byte = ((word.unsqueeze(-1) >> torch.tensor([0, 8, 16, 24])) & 0xFF).to(torch.uint8)
    # passes of 8 tiles, each (pair, vector, tile, row, byte)
    passes = [byte[i : i + 8].permute(1, 2, 0, 3, 4).reshape(-1) for i in range(0, tiles, 8)]
    return torch.cat(passes)


def _exact(x, pw, bias=None):
    y = x.double() @ fusenas.dequantize(pw).double().T
    return y if bias is None else y + bias.double()


def _assert_close(y, exact, tol=1e-4):
    """Largest error against the largest output (int16 table entries: ~3e-5)."""
    err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
    assert err < tol, err


def _error_bound(x, pw, exact, dtype):
    """The precision kbit.h states for kbit_gemv_lut_cpu, per output row.

    Table entries are int16 in units of ts_b = top_b / 32767, top_b the largest
    |T| of 128-input block b (half the largest sum of |x| over a 4-input run):
    each within ts_b / 2, so a 4-input run's lookups (planes weighted 2^p)
    within (2^bits - 1) / 2 * ts_b and a block's 32 runs within 16 (2^bits - 1)
    ts_b (2% more: the float32 products that make the entries), times the
    row's scale. Then float32 sums (2^-18 of the sum of |s| * 1.5 (2^bits - 1)
    * |x|: |q - z| and |c - z| bound the terms) and, for bfloat16 output, its
    rounding.
    """
    n, k = pw.shape
    blocks = -(-k // 128)
    xf = torch.zeros(blocks * 128, dtype=torch.float64)
    xf[:k] = x.reshape(-1).double()
    top = 0.5 * xf.view(blocks, 32, 4).abs().sum(-1).amax(-1)
    g = pw.group_size
    s = pw.scales.double().abs()
    s_block = s[:, [min(b * 128 // g, s.shape[1] - 1) for b in range(blocks)]]
    s_input = s[:, [min(i // g, s.shape[1] - 1) for i in range(k)]]
    levels = 2**pw.bits - 1
    bound = (s_block * (1.02 * 16 * levels * top / 32767)).sum(-1)
    bound = bound + 2.0**-18 * 1.5 * levels * (s_input @ xf[:k].abs())
    if dtype == torch.bfloat16:  # rounding to 8 significant bits: half a unit, 2^-8
        bound = bound * (1 + 2.0**-8) + 2.0**-8 * exact.abs().reshape(-1)
    return bound


@needs_lut
@pytest.mark.parametrize(
    "n, k, g, sym",
    [(16, 128, 128, True), (37, 300, None, False), (70, 1000, None, True), (5, 512, 256, False)],
)
@pytest.mark.parametrize("bits", [2, 3])
def test_layout_matches_the_format_text(n, k, g, sym, bits):
    torch.manual_seed(1)
    pw = quantize_weight(torch.randn(n, k), bits, g, sym)
    lut = kbit_lut.build_lut_weight(ext, pw.codes, pw.scales, pw.zeros, k, bits, False)
    assert torch.equal(lut.codes, _layout_from_text(pw))
    tiles, groups = -(-n // 16), pw.scales.shape[1]
    s = torch.zeros(tiles * 16, groups)
    s[:n] = pw.scales
    assert torch.equal(lut.scale, kbit_lut.pass_major(s, tiles))
    if pw.zeros is None:
        assert lut.offset is None and lut.zero_term == -0.5
    else:
        s[:n] *= (2**bits - 1) / 2 - pw.zeros
        torch.testing.assert_close(lut.offset, kbit_lut.pass_major(s, tiles))
    # pass_major's order, spelled out for row 16 t + r, group g
    t, r, g = tiles - 1, (n - 1) % 16, groups - 1
    p0, in_pass = t // 8 * 8, min(8, tiles - t // 8 * 8)
    at = p0 * groups * 16 + (g * in_pass + t % 8) * 16 + r
    assert lut.scale[at] == pw.scales[n - 1, g]


@needs_lut
@pytest.mark.parametrize("bits", [2, "ternary", 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_against_float64(bits, dtype):
    """Odd N (tiles of 16 with padding rows; 15 tiles: a pass of 8, then one of 7),
    K with a partial last block, groups of one, two and all blocks, both zero
    point kinds, two threads, with and without bias."""
    torch.manual_seed(2)
    for n, k, g, sym in [
        (237, 1000, None, True),
        (9, 128, 128, False),
        (300, 1536, 256, False),
        (64, 4096, 128, True),
        (1, 200, None, True),
    ]:
        pw = quantize_weight(torch.randn(n, k), bits, g, sym or bits == "ternary")
        x = (torch.randn(1, k) * 3).to(dtype)
        for bias in (None, torch.randn(n).to(dtype)):
            y = kbit_matmul(x, pw, bias)
            assert id(pw.codes) in kbit_lut._cache  # the table path ran
            exact = _exact(x, pw, bias)
            err = (y.double() - exact).abs().reshape(-1)
            bound = _error_bound(x, pw, exact, dtype)
            assert (err <= bound).all(), (n, k, g, sym, (err / bound).max().item())
            # Typical error, far inside the bound: ~3e-5 of the largest output
            # (float32), plus bfloat16's output rounding.
            rel = (err.max() / exact.abs().max()).item()
            assert rel < (1e-4 if dtype == torch.float32 else 8e-3), (n, k, g, sym, rel)


@needs_lut
@pytest.mark.parametrize("bits", [2, 3])
def test_an_outlier_coarsens_only_its_own_block(bits):
    """An input 1000x the rest (as in LLM activations) sets the table unit of
    its own 128-input block only. Alone in its block, its sums (+-500, 0) are
    exact in that unit, so the error with it equals the error without it; one
    unit for all of x would make every block's entries ~250x coarser."""
    torch.manual_seed(7)
    pw = quantize_weight(torch.randn(96, 1024), bits, 128)
    x0 = torch.randn(1, 1024)
    x0[0, 256:384] = 0
    x1 = x0.clone()
    x1[0, 300] = 1000.0
    err = []
    for x in (x0, x1):
        exact = _exact(x, pw)
        y = kbit_matmul(x, pw)
        assert id(pw.codes) in kbit_lut._cache
        assert ((y.double() - exact).abs().reshape(-1) <= _error_bound(x, pw, exact, x.dtype)).all()
        err.append((y.double() - exact).abs().max().item())
        scale = exact.abs().max().item()
    assert err[1] <= 2 * err[0] + 2e-6 * scale, err  # 2e-6: float32 sums of the larger terms


@needs_lut
def test_tiny_and_huge_x(monkeypatch):
    """Table units follow x's magnitude: x near 1e-36 (where 32767 / top is
    past float32) keeps its relative precision, and x whose sums of four pass
    float32 leaves the tables for the kernels on codes, as Inf and NaN do."""
    torch.manual_seed(8)
    pw = quantize_weight(torch.randn(40, 512), 2, 128)
    x = torch.randn(1, 512)
    for tiny in (1e-36, 1e-30):
        y = kbit_matmul(x * tiny, pw)
        assert id(pw.codes) in kbit_lut._cache
        _assert_close(y, _exact(x * tiny, pw))
    big = x.clone()
    big[0, :4] = 3e38  # finite, but 2 * 3e38 is not
    y = kbit_matmul(big, pw)
    monkeypatch.setenv("FUSENAS_CPU_LUT", "0")
    torch.testing.assert_close(y, kbit_matmul(big, pw), rtol=0, atol=0, equal_nan=True)


@needs_lut
def test_batch_dims_route_one_row_to_the_tables():
    torch.manual_seed(3)
    pw = quantize_weight(torch.randn(40, 256), 2, 128)
    x = torch.randn(1, 1, 256)
    y = kbit_matmul(x, pw)
    assert y.shape == (1, 1, 40) and id(pw.codes) in kbit_lut._cache
    _assert_close(y, _exact(x, pw))


@needs_lut
def test_cache_follows_changes_and_dies_with_the_codes():
    torch.manual_seed(4)
    a = quantize_weight(torch.randn(48, 512), 2, 128)
    b = quantize_weight(torch.randn(48, 512), 2, 128)
    x = torch.randn(1, 512)
    kbit_matmul(x, a)
    first = kbit_lut._cache[id(a.codes)][2]
    kbit_matmul(x, a)
    assert kbit_lut._cache[id(a.codes)][2] is first  # built once
    a.codes.copy_(b.codes)  # in place: the layout is rebuilt
    _assert_close(kbit_matmul(x, a), _exact(x, a))
    a.scales.mul_(2)
    _assert_close(kbit_matmul(x, a), _exact(x, a))
    key = id(a.codes)
    del a
    gc.collect()
    assert key not in kbit_lut._cache


@needs_lut
def test_off_switch_and_other_batches(monkeypatch):
    torch.manual_seed(5)
    pw = quantize_weight(torch.randn(32, 256), 2, 128)
    kbit_matmul(torch.randn(3, 256), pw)  # M = 3: the GEMV on codes
    assert id(pw.codes) not in kbit_lut._cache
    monkeypatch.setenv("FUSENAS_CPU_LUT", "0")
    x = torch.randn(1, 256)
    y = kbit_matmul(x, pw)
    assert id(pw.codes) not in kbit_lut._cache
    monkeypatch.setenv("FUSENAS_CPU_LUT", "1")
    _assert_close(kbit_matmul(x, pw), y.double())
    assert id(pw.codes) in kbit_lut._cache


@needs_lut
def test_quant_linear_uses_the_tables():
    torch.manual_seed(6)
    lin = torch.nn.Linear(256, 48)
    q = fusenas.nn.QuantLinear.from_float(lin, bits=2, group_size=128)
    x = torch.randn(1, 256)
    with torch.no_grad():
        y = q(x)
        assert id(q.codes) in kbit_lut._cache
        ref = x.double() @ fusenas.dequantize(q.packed).double().T + lin.bias.double()
    _assert_close(y, ref)

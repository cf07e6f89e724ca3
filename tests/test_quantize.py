"""quantize_weight / dequantize: the quantization math and its validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusenas
from fusenas.quant.packed import dequantize, quantize_weight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 32, 128])
def test_error_bounded_by_half_step(bits, symmetric, group_size):
    torch.manual_seed(bits)
    w = torch.randn(24, 256)
    pw = quantize_weight(w, bits, group_size, symmetric, clip_search=False)
    wq = dequantize(pw)
    g = pw.group_size
    scale = pw.scales.repeat_interleave(g, dim=1)
    err = (w - wq).abs()
    if symmetric:
        # absmax maps to the top code, so only clipping of the most negative
        # values can exceed half a step; everything else is within it.
        assert (err <= 0.5 * scale + 1e-6).float().mean() > 0.99
    else:
        assert (err <= 0.5 * scale + 1e-6).all()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_worse(bits, symmetric):
    torch.manual_seed(1)
    w = torch.randn(32, 256) * torch.rand(32, 1)
    plain = dequantize(quantize_weight(w, bits, 64, symmetric, clip_search=False))
    searched = dequantize(quantize_weight(w, bits, 64, symmetric))
    e_plain = (plain - w).square().reshape(32, 4, 64).sum(-1)
    e_search = (searched - w).square().reshape(32, 4, 64).sum(-1)
    assert (e_search <= e_plain * (1 + 1e-6)).all()
    if bits == 2:  # where min/max scales waste most levels, the search matters most
        assert e_search.sum() < 0.8 * e_plain.sum()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_in_range_and_exact_grid(bits):
    w = torch.randn(8, 64)
    pw = quantize_weight(w, bits, 32, symmetric=False)
    q = pw.int_codes()
    assert q.min() >= 0 and q.max() < 2**bits
    assert torch.equal(pw.zeros, pw.zeros.round())


def test_ternary_levels():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    pw = quantize_weight(w, "ternary", 64)
    assert pw.ternary and pw.bits == 2
    q = pw.int_codes()
    assert set(q.unique().tolist()) <= {0, 1, 2}
    levels = (dequantize(pw) / pw.scales.repeat_interleave(64, dim=1)).round()
    assert set(levels.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # TWN: about 0.7 * mean|w| threshold zeroes a sizeable share of the weights.
    assert 0.2 < (q == 1).float().mean() < 0.6


def test_size_within_target():
    # packed weight + scales at most bits/32 + 2% of the fp32 bytes (group 128).
    for bits in (2, 3, 4, 8):
        pw = quantize_weight(torch.randn(256, 4096), bits, 128)
        assert pw.nbytes() <= (bits / 32 + 0.02) * 256 * 4096 * 4


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 5, 6, 7, 8, "ternary"]),
    n=st.integers(1, 6),
    k16=st.integers(1, 12),
    symmetric=st.booleans(),
)
def test_requantize_is_idempotent(bits, n, k16, symmetric):
    if bits == "ternary":
        symmetric = True
    torch.manual_seed(n * 31 + k16)
    w = torch.randn(n, 16 * k16)
    # plain min/max scales: a dequantized weight lies on its own grid
    pw = quantize_weight(w, bits, 16, symmetric, clip_search=False)
    wq = dequantize(pw)
    pw2 = quantize_weight(wq, bits, 16, symmetric, clip_search=False)
    assert torch.allclose(dequantize(pw2), wq, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": 9}, ValueError, "bits"),
        ({"bits": "five"}, ValueError, "bits"),
        ({"bits": 4.0}, ValueError, "bits"),
        ({"group_size": 100}, ValueError, "group_size"),
        ({"group_size": 48}, ValueError, "group_size"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"bits": "ternary", "symmetric": False}, ValueError, "symmetric"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        quantize_weight(torch.randn(4, 128), **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_rejected(bad):
    w = torch.randn(4, 64)
    w[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_weight(w, 4, 32)


def test_bad_weight_types():
    with pytest.raises(TypeError, match="w:"):
        quantize_weight([[1.0, 2.0]], 4)
    with pytest.raises(TypeError, match="w:"):
        quantize_weight(torch.ones(4, 64, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="w:"):
        quantize_weight(torch.ones(64), 4)
    with pytest.raises(ValueError, match="w:"):
        quantize_weight(torch.ones(0, 64), 4)


def test_public_api():
    assert fusenas.quantize_weight is quantize_weight
    assert fusenas.dequantize is dequantize

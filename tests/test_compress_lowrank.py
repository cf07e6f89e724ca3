"""Truncated-SVD decompositions (fusenas.nn.lowrank_factors): factors, rank rules, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusenas.compress import (
    choose_rank,
    decompose_weight,
    max_rank,
    reconstruct_weight,
    singular_values,
    truncate_weight,
)


def _two_convs(x, w1, w2, scheme, padding):
    if scheme == "channel":
        return F.conv2d(F.conv2d(x, w1, padding=padding), w2)
    return F.conv2d(F.conv2d(x, w1, padding=(padding, 0)), w2, padding=(0, padding))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("shape", [(8, 5, 3, 3), (4, 16, 3, 3), (6, 3, 5, 5), (1, 1, 3, 3)])
def test_full_rank_reproduces_dense_conv(scheme, shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    x = torch.randn(2, shape[1], 11, 9)
    w1, w2 = decompose_weight(w, scheme, rank=max_rank(w.shape, scheme))
    p = shape[2] // 2
    torch.testing.assert_close(reconstruct_weight(w1, w2, scheme), w, atol=1e-5, rtol=1e-5)
    y = _two_convs(x, w1, w2, scheme, p)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=p), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factor_shapes_and_truncation_error(scheme):
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    s = singular_values(w, scheme)
    for r in (1, 3, s.numel()):
        w1, w2 = decompose_weight(w, scheme, rank=r)
        if scheme == "channel":
            assert w1.shape == (r, 8, 3, 3) and w2.shape == (16, r, 1, 1)
        else:
            assert w1.shape == (r, 8, 3, 1) and w2.shape == (16, r, 1, 3)
        # Eckart-Young: the Frobenius error of the best rank-r approximation.
        err = torch.linalg.norm(reconstruct_weight(w1, w2, scheme) - w)
        torch.testing.assert_close(err, s[r:].square().sum().sqrt(), atol=1e-9, rtol=1e-9)
    assert max_rank(w.shape, scheme) == (min(16, 72) if scheme == "channel" else min(24, 48))


def test_rank_rules():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # squares 16, 4, 1, 1 of 22
    assert choose_rank(s, rank=2) == 2
    assert choose_rank(s, energy=16 / 22) == 1
    assert choose_rank(s, energy=0.9) == 2  # 20/22 = 0.909
    assert choose_rank(s, energy=0.95) == 3
    assert choose_rank(s, energy=1.0) == 4
    assert choose_rank(s, value_threshold=1.5) == 2
    assert choose_rank(s, value_threshold=10.0) == 1  # never below 1
    assert choose_rank(torch.zeros(3, dtype=torch.float64), energy=0.9) == 1


def test_truncate_weight_keeps_dtype_and_rank():
    torch.manual_seed(2)
    w = torch.randn(8, 4, 3, 3)
    wt, r = truncate_weight(w, "channel", energy=0.9)
    assert wt.dtype == w.dtype and wt.shape == w.shape
    assert torch.linalg.matrix_rank(wt.reshape(8, -1).double(), rtol=1e-5) == r


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"rank": 2, "energy": 0.9}, "exactly one"),
        ({"rank": 0}, "rank"),
        ({"rank": 99}, "rank"),
        ({"energy": 0.0}, "energy"),
        ({"energy": 1.5}, "energy"),
        ({"value_threshold": -1.0}, "value_threshold"),
    ],
)
def test_bad_rank_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose_weight(torch.randn(4, 4, 3, 3), "channel", **kwargs)


def test_bad_weights():
    with pytest.raises(ValueError, match="scheme"):
        decompose_weight(torch.randn(4, 4, 3, 3), "diagonal", rank=1)
    with pytest.raises(ValueError, match="weight: expected a 4-D"):
        decompose_weight(torch.randn(4, 4), "channel", rank=1)
    with pytest.raises(TypeError, match="weight"):
        decompose_weight(torch.ones(4, 4, 3, 3, dtype=torch.int32), "channel", rank=1)
    with pytest.raises(ValueError, match="NaN"):
        decompose_weight(torch.full((4, 4, 3, 3), float("nan")), "channel", rank=1)

"""The CUDA low-rank conv and PC-DARTS kernels, run on the host.

Their block bodies compile both as CUDA kernels and as plain C++
(csrc/common/block_exec.h); fusenas._C_cuda_emu runs every block of every
launch one after the other on the CPU, through the same launch sequences,
tile plans and Python launch helpers as the GPU path. These tests therefore
check the kernels' tiling, halos, index math, shared-memory staging (the
emulator fills shared memory with NaN before each block, so a read of an
element no thread wrote shows up) and reductions against the references on a
machine without a GPU. They cannot see what only hardware shows: data races
between threads of a phase, launch-configuration limits, or timing.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fusenas.ops import _native
from fusenas.ops.pc_mixed_op import (
    check_pc_mixed_args,
    pc_mixed_op_backward_reference,
    pc_mixed_op_reference,
)
from fusenas.ops.pc_mixed_op_cuda import pc_backward_native, pc_forward_native, pc_problem

EMU = _native._load("_C_cuda_emu")
pytestmark = pytest.mark.skipif(EMU is None, reason="fusenas._C_cuda_emu not built")
SM_COUNT = 3  # small: the grid-stride loops and the reduction splits get exercised


# ----------------------------------------------------------------- PC-DARTS --


def _pc_inputs():
    # The CPU tests' generator and shape grid (tests/test_pc_mixed_op.py).
    from test_pc_mixed_op import SHAPES, _shape_args, make_inputs

    return SHAPES, _shape_args, make_inputs


def _pc_emulated(args, grad_out):
    x, params, weights, scale, pool_stats, ops, k, stride, eps = args
    _, ho, wo = check_pc_mixed_args(*args)
    problem = pc_problem(x, ops, k, stride, eps)
    out, stats = pc_forward_native(
        EMU, x, params, weights, scale, pool_stats, ops, problem, ho, wo, sm_count=SM_COUNT,
        stream=0,
    )  # fmt: skip
    grads = pc_backward_native(
        EMU, grad_out, x, params, weights, scale, stats, pool_stats is None, problem,
        sm_count=SM_COUNT, stream=0,
    )  # fmt: skip
    return out, stats, grads


def _assert_pc_matches(args, atol=2e-5, rtol=2e-5):
    x, params, weights, scale, pool_stats, ops, k, stride, eps = args
    ref_out, ref_stats = pc_mixed_op_reference(*args)
    g = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        g = g.contiguous(memory_format=torch.channels_last)
    out, stats, (gx, gparams, gw, gs) = _pc_emulated(args, g)
    ref = pc_mixed_op_backward_reference(
        g, x, params, weights, scale, ref_stats, pool_stats is None, ops, k, stride, eps
    )
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(stats, ref_stats, atol=atol, rtol=rtol)
    torch.testing.assert_close(gx, ref[0], atol=atol, rtol=rtol, msg=lambda m: f"grad_x: {m}")
    for i, (a, b) in enumerate(zip(gparams, ref[1], strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"param {i}: {m}")
    tol = atol * math.sqrt(out.numel())  # sums over every element
    torch.testing.assert_close(gw, ref[2], atol=tol, rtol=rtol, msg=lambda m: f"weights: {m}")
    torch.testing.assert_close(gs, ref[3], atol=tol, rtol=rtol, msg=lambda m: f"scale: {m}")


@pytest.mark.parametrize("channels_last", [False, True])
def test_pc_mixed_emulated_matches_reference(channels_last):
    shapes, shape_args, _ = _pc_inputs()
    for i, shape in enumerate(shapes):
        for scale, eval_stats in itertools.product([False, True], [False, True]):
            args = shape_args(shape, scale=scale, eval_stats=eval_stats,
                              channels_last=channels_last, seed=i)  # fmt: skip
            _assert_pc_matches(args)


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_mixed_emulated_candidate_subsets(stride):
    _, _, make_inputs = _pc_inputs()
    names = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]
    subsets = [list(c) for r in range(1, 6) for c in itertools.combinations(names, r)]
    for i, ops in enumerate(subsets):
        args = make_inputs(n=2, c=6, h=4, w=6, k=2, stride=stride, ops=ops, scale=i % 2 == 0,
                           channels_last=i % 3 == 0, seed=i)  # fmt: skip
        _assert_pc_matches(args)


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_mixed_emulated_max_pool_ties_route_like_torch(stride):
    _, _, make_inputs = _pc_inputs()
    for cl in (False, True):
        args = make_inputs(n=2, c=8, h=8, w=10, k=2, stride=stride, integer_valued=True,
                           ops=["max_pool_3x3", "avg_pool_3x3"], channels_last=cl)  # fmt: skip
        _assert_pc_matches(args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pc_mixed_emulated_16_bit(dtype):
    _, _, make_inputs = _pc_inputs()
    args = make_inputs(n=2, c=8, h=6, w=6, k=2, stride=1, dtype=dtype, seed=2)
    # The reference computes in the 16-bit dtype, the kernels in float32.
    _assert_pc_matches(args, atol=6e-2, rtol=2e-2)

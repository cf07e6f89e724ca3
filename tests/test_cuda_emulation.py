"""The CUDA low-rank conv and PC-DARTS kernels, run on the host.

Their block bodies compile both as CUDA kernels and as plain C++
(csrc/common/block_exec.h); fusenas._C_cuda_emu runs every block of every
launch one after the other on the CPU, through the same launch sequences,
tile plans and Python launch helpers as the GPU path. These tests therefore
check the kernels' tiling, halos, index math, shared-memory staging and
reductions against the references on a machine without a GPU. Shared memory
is filled with NaN before each block (a read of an element no thread wrote
shows up), every shared-memory access is bounds-checked, and one test runs
with the race checker (an access that conflicts with another thread's since
the last barrier raises) and with the threads of each phase in three orders.
What only hardware shows stays unchecked: launch limits, races on global
memory between blocks, register pressure at run time, and speed.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_lowrank_conv import SHAPES as CPU_LOWRANK_SHAPES

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


# ------------------------------------------------------------- low-rank conv --

# (N, C, H, W, R, O, kh, kw, stride, padding, dilation): odd sizes, size-1 dims,
# rank 1 to full, more than one chunk of ranks (32), input channels (16) and
# output channels (64), strides, paddings, dilations, several tiles per map.
LOWRANK_CASES = [
    (2, 3, 7, 9, 2, 5, 3, 3, 1, 1, 1),
    (1, 5, 10, 13, 4, 6, 3, 3, 2, 1, 1),
    (2, 4, 9, 20, 3, 7, 3, 5, (1, 2), (2, 1), (2, 1)),
    (1, 17, 8, 8, 33, 70, 3, 3, 1, 1, 1),
    (1, 2, 5, 5, 1, 1, 1, 1, 1, 0, 1),
    (2, 6, 11, 11, 5, 3, 5, 3, (2, 3), (2, 0), (1, 2)),
    (1, 3, 1, 1, 2, 2, 1, 1, 1, 0, 1),
    (3, 8, 6, 6, 24, 8, 3, 3, 1, 1, 1),  # full rank of the spatial scheme (C*kh = O*kw = 24)
    (1, 20, 30, 30, 8, 9, 3, 3, 1, 1, 1),
    (1, 4, 12, 12, 3, 4, 7, 7, 1, 9, 3),  # large dilated kernel: smaller tiles
] + [  # and the CPU tests' grid (tests/test_lowrank_conv.py), square kernels
    (n, c, h, w, r, o, k, k, s, p, d) for n, c, h, w, r, o, k, s, p, d in CPU_LOWRANK_SHAPES
]


def lowrank_tensors(case, scheme, channels_last, dtype=torch.float32, bias=True, seed=0):
    """x, w1, w2, bias and the conv arguments for a LOWRANK_CASES entry."""
    n, c, h, w, r, o, kh, kw, stride, padding, dilation = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if scheme == "channel":
        w1, w2 = torch.randn(r, c, kh, kw, generator=g), torch.randn(o, r, 1, 1, generator=g)
    else:
        w1, w2 = torch.randn(r, c, kh, 1, generator=g), torch.randn(o, r, 1, kw, generator=g)
    b = torch.randn(o, generator=g).to(dtype) if bias else None
    return x, w1.to(dtype), w2.to(dtype), b, scheme, stride, padding, dilation


def _pairs(stride, padding, dilation):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return pair(stride), pair(padding), pair(dilation)


def _lowrank_float64(x, w1, w2, b, scheme, stride, padding, dilation, grad):
    """Output and (grad_x, grad_w1, grad_w2, grad_bias) of the two-conv sequence in float64."""
    from fusenas.ops.lowrank_conv import lowrank_conv2d_reference

    leaves = [t.detach().double().requires_grad_() for t in (x, w1, w2)]
    bb = None if b is None else b.detach().double().requires_grad_()
    y = lowrank_conv2d_reference(*leaves, bb, scheme, *_pairs(stride, padding, dilation))
    grads = torch.autograd.grad(y, leaves + ([] if bb is None else [bb]), grad.double())
    return y, grads


def _lowrank_emulated(x, w1, w2, b, scheme, stride, padding, dilation, grad, mask):
    from fusenas.ops.lowrank_conv import check_lowrank_args
    from fusenas.ops.lowrank_conv_cuda import (
        lowrank_backward_native,
        lowrank_forward_native,
        lowrank_problem,
        unsupported_reason,
    )

    kh, kw = check_lowrank_args(x, w1, w2, b, scheme, stride, padding, dilation)
    problem = lowrank_problem(x, w1, w2, scheme, stride, padding, dilation, kh, kw, SM_COUNT)
    assert unsupported_reason(EMU, x, problem) is None
    y = lowrank_forward_native(EMU, x, w1, w2, b, problem, stream=0)
    grads = lowrank_backward_native(EMU, grad, x, w1, w2, problem, mask, stream=0)
    return y, grads


def _assert_lowrank_matches(args, mask=(True, True, True, True), tol=1e-5):
    from fusenas.ops.lowrank_conv import lowrank_conv2d_reference

    x = args[0]
    shape = lowrank_conv2d_reference(*args[:5], *_pairs(*args[5:8])).shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(x.dtype)
    g = g.contiguous(memory_format=torch.channels_last if _cl(x) else torch.contiguous_format)
    y64, grads64 = _lowrank_float64(*args, g)
    y, grads = _lowrank_emulated(*args, g, mask)
    if _cl(x):
        assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, y64, tol, "y")
    names = ("grad_x", "grad_w1", "grad_w2", "grad_bias")
    for i, (name, want) in enumerate(zip(names, mask, strict=True)):
        if not want:
            assert grads[i].numel() == 0, name
        elif i < 3 or args[3] is not None:
            _close(grads[i], grads64[i], tol, name)
            if i == 0 and _cl(x):
                assert grads[0].is_contiguous(memory_format=torch.channels_last)


def _cl(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _close(a, b, tol, what):
    scale = b.abs().max().item() + 1e-12
    torch.testing.assert_close(
        a.double(), b, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_lowrank_emulated_matches_reference(scheme, channels_last):
    for i, case in enumerate(LOWRANK_CASES):
        _assert_lowrank_matches(lowrank_tensors(case, scheme, channels_last, bias=i % 3 != 1))


def test_lowrank_emulated_output_masks():
    args = lowrank_tensors(LOWRANK_CASES[2], "spatial", True)
    for mask in itertools.product([False, True], repeat=4):
        _assert_lowrank_matches(args, mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lowrank_emulated_16_bit(dtype):
    # Inputs are exactly representable; the kernels accumulate in float32 and
    # round once, so the error is one 16-bit rounding of the result.
    for scheme in ("channel", "spatial"):
        _assert_lowrank_matches(lowrank_tensors(LOWRANK_CASES[0], scheme, True, dtype), tol=1e-2)


def test_lowrank_emulated_chunked_ranks():
    # A rank too large to keep t resident in shared memory: the forward takes
    # t in chunks of 32 ranks and one output-channel tile per block.
    from fusenas.ops.lowrank_conv_cuda import lowrank_problem

    case = (1, 212, 3, 3, 1900, 1900, 3, 3, 1, 1, 1)
    args = lowrank_tensors(case, "channel", False)
    problem = lowrank_problem(*args[:3], "channel", (1, 1), (1, 1), (1, 1), 3, 3, SM_COUNT)
    plan = EMU.lowrank_conv2d_cuda_plan(problem)
    assert plan["ok"] and not plan["fwd_resident"] and plan["fwd_rank_chunk"] == 32
    _assert_lowrank_matches(args, tol=2e-5)


def test_lowrank_plan_rejects_tiles_that_do_not_fit():
    from fusenas.ops.lowrank_conv_cuda import lowrank_problem, unsupported_reason

    # A dilation of 20000 makes a 1 x 3 kernel's input tile 40000 floats wide.
    x, w1, w2, *_ = lowrank_tensors((1, 1, 1, 5, 1, 1, 1, 3, 1, 0, 1), "channel", False)
    problem = lowrank_problem(x, w1, w2, "channel", (1, 1), (0, 20000), (1, 20000), 1, 3, 1)
    assert EMU.lowrank_conv2d_cuda_plan(problem)["ok"] is False
    assert "shared-memory" in unsupported_reason(EMU, x, problem)
    with pytest.raises(RuntimeError, match="unsupported"):
        EMU.lowrank_conv2d_forward_cuda(problem, x.data_ptr(), 0, 0, 0, 0, 0)


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_mixed_emulated_split_reductions(stride):
    # More than 1024 positions per channel: the statistics and the backward
    # sums are split over several blocks and merged by float64 atomics.
    _, _, make_inputs = _pc_inputs()
    args = make_inputs(n=4, c=8, h=48, w=48, k=2, stride=stride, channels_last=stride == 2, seed=9)
    _assert_pc_matches(args, atol=5e-5, rtol=5e-5)


# ---------------------------------------------------- bad input (CUDA impls) --
# The CUDA impls validate before touching the GPU, so CPU tensors reach the checks.


def test_lowrank_cuda_backward_bad_input():
    from fusenas.ops.lowrank_conv_cuda import _lowrank_conv2d_backward_cuda

    x, w1, w2, _, scheme, stride, padding, dilation = lowrank_tensors(
        LOWRANK_CASES[0], "channel", False
    )
    conv = (scheme, [stride] * 2, [padding] * 2, [dilation] * 2)
    good = torch.zeros(2, 5, 7, 9)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        _lowrank_conv2d_backward_cuda(good[:, :4], x, w1, w2, *conv, [True] * 4)
    with pytest.raises(TypeError, match="grad_out: expected torch.float32"):
        _lowrank_conv2d_backward_cuda(good.double(), x, w1, w2, *conv, [True] * 4)
    with pytest.raises(ValueError, match="output_mask: expected 4"):
        _lowrank_conv2d_backward_cuda(good, x, w1, w2, *conv, [True] * 3)
    with pytest.raises(ValueError, match="scheme"):
        _lowrank_conv2d_backward_cuda(good, x, w1, w2, "dense", *conv[1:], [True] * 4)


def test_pc_mixed_cuda_backward_bad_input():
    from fusenas.ops.pc_mixed_op_cuda import _pc_mixed_backward_cuda

    _, _, make_inputs = _pc_inputs()
    x, params, weights, scale, _, ops, k, stride, eps = make_inputs(n=2, c=8, h=6, w=6, k=2)
    stats = torch.zeros(2, 2, 4)
    g = torch.zeros(2, 8, 6, 6)
    rest = (ops, k, stride, eps)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        _pc_mixed_backward_cuda(g[:, :4], x, params, weights, scale, stats, True, *rest)
    with pytest.raises(TypeError, match="grad_out: expected torch.float32"):
        _pc_mixed_backward_cuda(g.double(), x, params, weights, scale, stats, True, *rest)
    with pytest.raises(ValueError, match="stats: expected float32 of shape"):
        _pc_mixed_backward_cuda(g, x, params, weights, scale, stats[:, :, :3], True, *rest)
    with pytest.raises(ValueError, match="pool_stats"):  # given (eval) statistics, wrong shape
        _pc_mixed_backward_cuda(g, x, params, weights, scale, stats[:1], False, *rest)
    with pytest.raises(ValueError, match="param_outs"):
        _pc_mixed_backward_cuda(g, x, params[:1], weights, scale, stats, True, *rest)


# ------------------------------------------------------ shared-memory races --


@pytest.fixture(params=[0, 1, 2], ids=["ascending", "descending", "scrambled"])
def race_checked(request):
    """Shared-memory race checking on, the emulated threads of each phase in one order."""
    EMU.set_thread_order(request.param)
    EMU.set_race_check(True)
    yield request.param
    EMU.set_race_check(False)
    EMU.set_thread_order(0)


def test_no_shared_memory_races(race_checked):
    # Every shared-memory access is checked against those of the other threads
    # since the last barrier (a missing __syncthreads raises), and in another
    # thread order a phase that depends on the order gives other results.
    _, _, make_inputs = _pc_inputs()
    for stride, cl in ((1, False), (2, True)):
        _assert_pc_matches(make_inputs(n=2, c=8, h=8, w=10, k=2, stride=stride, channels_last=cl))
    _assert_pc_matches(make_inputs(n=4, c=8, h=48, w=48, k=2, seed=9), atol=5e-5, rtol=5e-5)
    for i, case in enumerate(LOWRANK_CASES[:10]):
        for scheme in ("channel", "spatial"):
            _assert_lowrank_matches(lowrank_tensors(case, scheme, i % 2 == 1, seed=i))

"""GPU tests of the CUDA PC-DARTS mixed-op kernels (fusenas._C_cuda).

The CUDA kernels are checked against the reference (on the GPU) and against the
CPU kernel over the CPU tests' grid (tests/test_pc_mixed_op.py: odd sizes,
C/K = 1, N = 1, strides 1 and 2, every candidate subset, with and without edge
scale, batch and given statistics, both memory formats), forward and every
gradient, plus max-pool ties, float16 / bfloat16, opcheck, torch.compile, a
side stream and the reference fallback. Everything here skips cleanly when
there is no CUDA device or the extension was not built.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_pc_mixed_op import ALL_OPS, SHAPES, _shape_args, make_inputs

from fusenas.ops import _native, pc_mixed_op
from fusenas.ops.pc_mixed_op import pc_mixed_op_reference

pytestmark = pytest.mark.gpu  # skipped without a GPU and _C_cuda (conftest.py)

HAS_CPU_KERNEL = _native.cpu() is not None and hasattr(_native.cpu(), "pc_mixed_forward_cpu")


def _to(args, device):
    x, params, weights, scale, pool_stats, *rest = args
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731 (keeps memory formats)
    return (mv(x), [mv(p) for p in params], mv(weights), mv(scale), mv(pool_stats), *rest)


def _run(fn, args, grad_seed=1):
    """out, stats and the gradients of x, each param, weights (and edge scale)."""
    x, params, weights, scale, pool_stats, *rest = args
    leaves = [x.detach().clone().requires_grad_(), [p.detach().clone().requires_grad_()
              for p in params], weights.detach().clone().requires_grad_(),
              None if scale is None else scale.detach().clone().requires_grad_()]  # fmt: skip
    out, stats = fn(*leaves, pool_stats, *rest)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    g = g.to(out.dtype).to(out.device)
    inputs = [leaves[0], *leaves[1], leaves[2]] + ([] if scale is None else [leaves[3]])
    return out, stats, list(torch.autograd.grad(out, inputs, g))


def _op(*args):
    return torch.ops.fusenas.pc_mixed_op(*args)


def _assert_close(a, b, what, atol, rtol):
    torch.testing.assert_close(a.cpu(), b.cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _check(args_cpu, atol=2e-5, rtol=2e-5, cpu_kernel=True):
    args = _to(args_cpu, "cuda")
    out, stats, grads = _run(_op, args)
    assert out.is_cuda and out.dtype == args[0].dtype
    x = args[0]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    expected = [("reference", _run(pc_mixed_op_reference, args))]
    if cpu_kernel and HAS_CPU_KERNEL and x.dtype == torch.float32:
        expected.append(("cpu kernel", _run(_op, args_cpu)))
    names = ["x"] + [f"param_outs[{i}]" for i in range(len(args[1]))] + ["weights", "edge_scale"]
    for label, (e_out, e_stats, e_grads) in expected:
        _assert_close(out, e_out, f"out vs {label}", atol, rtol)
        _assert_close(stats, e_stats, f"stats vs {label}", atol, rtol)
        for name, a, b in zip(names, grads, e_grads, strict=False):
            tol = atol * (math.sqrt(out.numel()) if name in ("weights", "edge_scale") else 1)
            _assert_close(a, b, f"grad {name} vs {label}", tol, rtol)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_reference_and_cpu(channels_last):
    for i, shape in enumerate(SHAPES):
        for scale, eval_stats in itertools.product([False, True], [False, True]):
            _check(_shape_args(shape, scale=scale, eval_stats=eval_stats,
                               channels_last=channels_last, seed=i))  # fmt: skip


@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_every_candidate_subset(stride):
    subsets = [list(c) for r in range(1, 9) for c in itertools.combinations(ALL_OPS, r)]
    for i, ops in enumerate(subsets):
        _check(make_inputs(n=2, c=6, h=4, w=6, k=2, stride=stride, ops=ops, scale=i % 2 == 0,
                           channels_last=i % 3 == 0, seed=i), cpu_kernel=False)  # fmt: skip


@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_max_pool_ties_route_like_torch(stride):
    for cl in (False, True):
        _check(make_inputs(n=2, c=8, h=8, w=10, k=2, stride=stride, integer_valued=True,
                           ops=["max_pool_3x3", "avg_pool_3x3"], channels_last=cl))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_16_bit(dtype, stride):
    # The reference computes in the 16-bit dtype, the kernels in float32.
    _check(make_inputs(n=4, c=16, h=8, w=8, k=4, stride=stride, dtype=dtype, seed=3),
           atol=6e-2, rtol=3e-2)  # fmt: skip


def test_cuda_benchmark_sized_edge():
    # Many blocks per reduction split and a grid-stride elementwise pass.
    _check(make_inputs(n=64, c=16, h=32, w=32, k=4, stride=1, seed=4), atol=1e-4, rtol=1e-4)
    _check(make_inputs(n=64, c=64, h=8, w=8, k=2, stride=2, channels_last=True, seed=5),
           atol=1e-4, rtol=1e-4)  # fmt: skip


def test_cuda_side_stream_and_float64_fallback(monkeypatch):
    args = _to(make_inputs(n=2, c=8, h=6, w=6, k=2, seed=6), "cuda")
    out, _ = _op(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out2, _ = _op(*args)
    stream.synchronize()
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    monkeypatch.setattr(_native, "_warned", set())
    args64 = _to(make_inputs(n=2, c=8, h=6, w=6, k=2, dtype=torch.float64, seed=6), "cuda")
    with pytest.warns(RuntimeWarning, match="reference"):
        out64, _ = _op(*args64)
    torch.testing.assert_close(out64, pc_mixed_op_reference(*args64)[0])


@pytest.mark.parametrize(
    "kw", [dict(stride=1), dict(stride=2, channels_last=True), dict(scale=False, eval_stats=True)]
)
def test_opcheck_cuda(kw):
    x, params, weights, scale, pool_stats, ops, k, stride, eps = _to(
        make_inputs(n=2, c=4, h=4, w=4, **kw), "cuda"
    )
    scale = None if scale is None else scale.requires_grad_()
    params = [p.requires_grad_() for p in params]
    leaves = (x.requires_grad_(), params, weights.requires_grad_(), scale, pool_stats, ops, k,
              stride, eps)  # fmt: skip
    torch.library.opcheck(torch.ops.fusenas.pc_mixed_op.default, leaves)
    out, stats = _op(*leaves)
    bargs = (torch.randn_like(out), x.detach(), [p.detach() for p in params], weights.detach(),
             None if scale is None else scale.detach(), stats, pool_stats is None, ops, k,
             stride, eps)  # fmt: skip
    torch.library.opcheck(torch.ops.fusenas.pc_mixed_op_backward.default, bargs)


def test_torch_compile_cuda():
    from torch.utils._triton import has_triton

    x, params, weights, scale, _, ops, k, stride, eps = _to(make_inputs(n=2, c=8, h=6, w=6), "cuda")

    def f(x, weights, scale, *params):
        out, stats = pc_mixed_op(x, list(params), weights, ops=ops, k=k, stride=stride,
                                 edge_scale=scale, eps=eps)  # fmt: skip
        return (out * out).sum() + stats.sum()

    inputs = [t.requires_grad_() for t in (x, weights, scale, *params)]
    backend = "inductor" if has_triton() else "aot_eager"
    loss_c = torch.compile(f, fullgraph=True, backend=backend)(*inputs)
    grads_c = torch.autograd.grad(loss_c, inputs)
    loss_e = f(*inputs)
    grads_e = torch.autograd.grad(loss_e, inputs)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, b)


def test_mixed_devices_raise():
    x, params, weights, scale, pool_stats, ops, k, stride, eps = make_inputs()
    with pytest.raises(ValueError, match="weights"):
        _op(x.cuda(), [p.cuda() for p in params], weights, scale, pool_stats, ops, k, stride,
                eps)  # fmt: skip


@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_reference_channels_last_avg_pool_matches_cpu(stride):
    # torch's CUDA avg_pool2d backward is wrong for padded channels_last inputs
    # (pytorch/pytorch#188344; seen with torch 2.11 + CUDA 13 on an H100). The
    # reference (the fallback path, and what the tests above compare against)
    # pools through fusenas.ops.avg_pool, which sidesteps it.
    args = make_inputs(n=2, c=8, h=8, w=10, k=2, stride=stride, channels_last=True, seed=2,
                       ops=["avg_pool_3x3", "max_pool_3x3", "skip_connect"])  # fmt: skip
    cuda_out, _, cuda_grads = _run(pc_mixed_op_reference, _to(args, "cuda"))
    cpu_out, _, cpu_grads = _run(pc_mixed_op_reference, args)
    _assert_close(cuda_out, cpu_out, "out, CUDA vs CPU reference", 1e-5, 1e-5)
    for a, b in zip(cuda_grads, cpu_grads, strict=True):
        _assert_close(a, b, "grads, CUDA vs CPU reference", 1e-5, 1e-5)

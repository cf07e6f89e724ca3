"""GPU benchmarks of the fused PC-DARTS mixed op: fusenas's CUDA kernels against
the reference formulation in eager PyTorch and under torch.compile.

Run on a machine with a GPU and fusenas._C_cuda built:

    pytest benchmarks/bench_pc_mixed_cuda.py --benchmark-only --benchmark-json=pc_cuda.json

The mixing part of one edge (issue 4's grid): N = 64 with C = 16 at 32x32,
C = 32 at 16x16 and C = 64 at 8x8, K in {2, 4, 8}, stride 1 and 2, all eight
PC-DARTS candidates (the four parametric outputs are given tensors, as the
op receives them), batch statistics and an edge scale. Each group is one
(shape, K, stride, pass) with pass = forward or forward+backward; in a group:
fusenas.ops.pc_mixed_op, the reference in eager mode, and the reference under
torch.compile (inductor). Every timed call ends with torch.cuda.synchronize().
Skips without a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch

from fusenas.ops import PC_DARTS_PRIMITIVES, _native, pc_mixed_op
from fusenas.ops.pc_mixed_op import pc_mixed_op_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or _native.cuda() is None,
        reason="needs a CUDA device and fusenas._C_cuda",
    ),
]

SHAPES = [(16, 32), (32, 16), (64, 8)]  # (C, H = W)
KS = [2, 4, 8]
STRIDES = [1, 2]
PASSES = ["forward", "forward+backward"]
VARIANTS = ["fusenas", "eager reference", "compiled reference"]
N = 64
OPS = list(PC_DARTS_PRIMITIVES)


def _inputs(c, hw, k, stride):
    g = torch.Generator(device="cuda").manual_seed(c * 7 + k)
    ck, ho = c // k, hw // stride
    x = torch.randn(N, c, hw, hw, device="cuda", generator=g)
    n_params = 5 if stride == 2 else 4  # skip_connect is FactorizedReduce at stride 2
    params = [torch.randn(N, ck, ho, ho, device="cuda", generator=g) for _ in range(n_params)]
    weights = torch.softmax(torch.randn(len(OPS), device="cuda", generator=g), 0)
    scale = torch.tensor(0.7, device="cuda")
    return x, params, weights, scale


def _fused(x, params, weights, scale, k, stride):
    return pc_mixed_op(x, params, weights, ops=OPS, k=k, stride=stride, edge_scale=scale)[0]


def _reference(x, params, weights, scale, k, stride):
    return pc_mixed_op_reference(x, params, weights, scale, None, OPS, k, stride, 1e-5)[0]


@functools.lru_cache(maxsize=64)
def _compiled(k, stride):
    return torch.compile(functools.partial(_reference, k=k, stride=stride), fullgraph=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("c", "hw"), SHAPES, ids=[f"C{c}-{h}x{h}" for c, h in SHAPES])
def test_pc_mixed_cuda(benchmark, c, hw, k, stride, pass_, variant):
    x, params, weights, scale = _inputs(c, hw, k, stride)
    if variant == "fusenas":
        fn = functools.partial(_fused, k=k, stride=stride)
    elif variant == "eager reference":
        fn = functools.partial(_reference, k=k, stride=stride)
    else:
        fn = _compiled(k, stride)
    backward = pass_ == "forward+backward"
    leaves = [t.requires_grad_(backward) for t in (x, *params, weights, scale)]
    x, params, weights, scale = leaves[0], leaves[1:-2], leaves[-2], leaves[-1]
    grad = torch.randn(N, c, hw // stride, hw // stride, device="cuda")

    def run():
        out = fn(x, params, weights, scale)
        if backward:
            torch.autograd.grad(out, leaves, grad)
        torch.cuda.synchronize()

    for _ in range(3):  # warm-up: compilation, allocator, first launches
        run()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    peak = torch.cuda.max_memory_allocated() - base  # activations + workspace of one step
    benchmark.group = f"pc_mixed_cuda C={c} {hw}x{hw} K={k} stride={stride} {pass_}"
    benchmark.extra_info.update(
        variant=variant, c=c, hw=hw, k=k, stride=stride, n=N, pass_=pass_,
        peak_bytes=peak, device=torch.cuda.get_device_name(),
    )  # fmt: skip
    benchmark(run)

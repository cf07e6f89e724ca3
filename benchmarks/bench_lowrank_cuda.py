"""GPU benchmarks of the fused low-rank convolution: fusenas's CUDA kernels against
the same factors as two torch convs and against the dense conv.

Run on a machine with a GPU and fusenas._C_cuda built:

    pytest benchmarks/bench_lowrank_cuda.py --benchmark-only --benchmark-json=lowrank_cuda.json

Shapes, ranks and MAC counts are the CPU benchmark's (benchmarks/bench_lowrank.py:
the 3x3 convs of CIFAR ResNet-20/56, C = 16, 32, 64 at 32/16/8 pixels, N = 128,
and of ImageNet ResNet-18/50, C = 64..512 at 56..7 pixels, N = 32, padding 1;
FUSENAS_BENCH_FULL=1 adds the stride-2 convs), each at the ranks that give 2x,
3x and 6x fewer MACs than the dense conv, both TRP schemes, float32. A group is
one (shape, scheme, MAC reduction, pass) with pass = forward or
forward+backward; in a group: fusenas (NCHW and channels_last), the two torch
convs (cuDNN, both layouts; and under torch.compile, channels_last) and the
dense conv (both layouts). extra_info carries the MACs (for the fraction of the
MAC reduction realised) and the peak memory of one step. Every timed call ends
with torch.cuda.synchronize(). Skips without a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from bench_lowrank import macs, rank_for, shapes

from fusenas.ops import _native
from fusenas.ops.lowrank_conv import lowrank_conv2d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or _native.cuda() is None,
        reason="needs a CUDA device and fusenas._C_cuda",
    ),
]


@pytest.fixture(autouse=True, scope="module")
def _fused_kernels():
    """The op's CUDA default is cuDNN (the two convs below); the fusenas variants
    time the fused kernels (only while this module runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSENAS_LOWRANK_CUDA", "fused")
        yield


K = 3
# The CPU benchmark's grid and rank rule (benchmarks/bench_lowrank.py).
SHAPES = shapes()
REDUCTIONS = [2, 3, 6]
SCHEMES = ["channel", "spatial"]
PASSES = ["forward", "forward+backward"]
VARIANTS = [
    ("fusenas", False), ("fusenas", True),
    ("two torch convs", False), ("two torch convs", True),
    ("two torch convs, torch.compile", True),
    ("dense conv", False), ("dense conv", True),
]  # fmt: skip


def _factors(c, o, scheme, rank, g):
    if scheme == "channel":
        w1 = torch.randn(rank, c, K, K, device="cuda", generator=g)
        w2 = torch.randn(o, rank, 1, 1, device="cuda", generator=g)
    else:
        w1 = torch.randn(rank, c, K, 1, device="cuda", generator=g)
        w2 = torch.randn(o, rank, 1, K, device="cuda", generator=g)
    return w1 / (c * K) ** 0.5, w2 / (rank * K) ** 0.5


def _two_convs(x, w1, w2, b, scheme, s):
    if scheme == "channel":
        return F.conv2d(F.conv2d(x, w1, None, s, 1), w2, b)
    return F.conv2d(F.conv2d(x, w1, None, (s, 1), (1, 0)), w2, b, (1, s), (0, 1))


@functools.lru_cache(maxsize=8)
def _compiled_two_convs(scheme, s):
    return torch.compile(functools.partial(_two_convs, scheme=scheme, s=s), backend="inductor")


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=[f"{v}-{'nhwc' if cl else 'nchw'}" for v, cl in VARIANTS]
)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("reduction", REDUCTIONS, ids=[f"{r}x" for r in REDUCTIONS])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", SHAPES, ids=[sh.name.replace(" ", "_") for sh in SHAPES])
def test_lowrank_cuda(benchmark, shape, scheme, reduction, pass_, variant):
    name, channels_last = variant
    n, c, o, hw, s = shape.batch, shape.c_in, shape.c_out, shape.size, shape.stride
    ho = (hw - 1) // s + 1  # 3x3, padding 1
    rank = rank_for(scheme, c, o, reduction)
    g = torch.Generator(device="cuda").manual_seed(c * 31 + rank)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, hw, hw, device="cuda", generator=g).contiguous(memory_format=fmt)
    b = torch.zeros(o, device="cuda")
    backward = pass_ == "forward+backward"
    if name == "dense conv":
        w = torch.randn(o, c, K, K, device="cuda", generator=g) / (c * K * K) ** 0.5
        weights = [w.contiguous(memory_format=fmt)]

        def fn():
            return F.conv2d(x, weights[0], b, s, 1)

        n_macs = o * c * K * K * ho * ho * n
    else:
        # cuDNN likes weights in the activations' format; fusenas reads them contiguous.
        wfmt = torch.contiguous_format if name == "fusenas" else fmt
        weights = [t.contiguous(memory_format=wfmt) for t in _factors(c, o, scheme, rank, g)]
        if name == "fusenas":

            def fn():
                return lowrank_conv2d(x, *weights, b, scheme=scheme, stride=s, padding=1)
        elif name == "two torch convs":

            def fn():
                return _two_convs(x, *weights, b, scheme, s)
        else:
            compiled = _compiled_two_convs(scheme, s)

            def fn():
                return compiled(x, *weights, b)

        n_macs = macs(scheme, c, o, rank, ho, ho, n)
    leaves = [t.requires_grad_(backward) for t in (x, *weights, b)]
    grad = torch.randn(n, o, ho, ho, device="cuda").contiguous(memory_format=fmt)

    def run():
        y = fn()
        if backward:
            torch.autograd.grad(y, leaves, grad)
        torch.cuda.synchronize()

    for _ in range(3):  # warm-up: compilation, cuDNN autotuning, allocator, first launches
        run()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    peak = torch.cuda.max_memory_allocated() - base
    benchmark.group = f"lowrank_cuda {shape.name} {scheme} {reduction}x {pass_}"
    benchmark.extra_info.update(
        variant=name, channels_last=channels_last, shape=shape.name, scheme=scheme, rank=rank,
        reduction=reduction, pass_=pass_, macs=n_macs, peak_bytes=peak,
        device=torch.cuda.get_device_name(),
    )  # fmt: skip
    benchmark(run)

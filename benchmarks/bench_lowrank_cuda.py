"""GPU benchmarks of the fused low-rank convolution: fusenas's CUDA kernels against
the same factors as two torch convs and against the dense conv.

Run on a machine with a GPU and fusenas._C_cuda built:

    pytest benchmarks/bench_lowrank_cuda.py --benchmark-only --benchmark-json=lowrank_cuda.json

Shapes (issue 3): the 3x3 convs of CIFAR ResNet-20/56 (C = 16, 32, 64 at
32/16/8 pixels, N = 128) and of ImageNet ResNet-18/50 (C = 64..512 at
56..7 pixels, N = 32), C -> C, stride 1, padding 1, each at the ranks that
give 2x, 3x and 6x fewer MACs than the dense conv, both TRP schemes, float32.
A group is one (shape, scheme, MAC reduction, pass) with pass = forward or
forward+backward; in a group: fusenas (NCHW and channels_last), the two torch
convs (cuDNN, both layouts) and the dense conv (both layouts). extra_info
carries the MACs (for the fraction of the MAC reduction realised) and the
peak memory of one step. Every timed call ends with torch.cuda.synchronize().
Skips without a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusenas.ops import _native
from fusenas.ops.lowrank_conv import lowrank_conv2d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or _native.cuda() is None,
        reason="needs a CUDA device and fusenas._C_cuda",
    ),
]

K = 3
SHAPES = [  # (N, C, H = W)
    (128, 16, 32), (128, 32, 16), (128, 64, 8),  # CIFAR ResNet-20/56
    (32, 64, 56), (32, 128, 28), (32, 256, 14), (32, 512, 7),  # ImageNet ResNet-18/50
]  # fmt: skip
REDUCTIONS = [2, 3, 6]
SCHEMES = ["channel", "spatial"]
PASSES = ["forward", "forward+backward"]
VARIANTS = [
    ("fusenas", False), ("fusenas", True),
    ("two torch convs", False), ("two torch convs", True),
    ("dense conv", False), ("dense conv", True),
]  # fmt: skip


def macs_per_pixel(c: int, o: int, scheme: str, rank: int | None) -> int:
    """Multiply-adds per output pixel (stride 1, same padding)."""
    if rank is None:
        return c * o * K * K
    if scheme == "channel":
        return rank * (c * K * K + o)
    return rank * (c * K + o * K)


def rank_for(c: int, o: int, scheme: str, reduction: int) -> int:
    """The largest rank with at least `reduction` x fewer MACs than the dense conv."""
    per_rank = macs_per_pixel(c, o, scheme, 1)
    return max(1, macs_per_pixel(c, o, scheme, None) // (reduction * per_rank))


def _factors(c, o, scheme, rank, g):
    if scheme == "channel":
        w1 = torch.randn(rank, c, K, K, device="cuda", generator=g)
        w2 = torch.randn(o, rank, 1, 1, device="cuda", generator=g)
    else:
        w1 = torch.randn(rank, c, K, 1, device="cuda", generator=g)
        w2 = torch.randn(o, rank, 1, K, device="cuda", generator=g)
    return w1 / (c * K) ** 0.5, w2 / (rank * K) ** 0.5


def _two_convs(x, w1, w2, b, scheme):
    if scheme == "channel":
        return F.conv2d(F.conv2d(x, w1, None, 1, 1), w2, b)
    return F.conv2d(F.conv2d(x, w1, None, 1, (1, 0)), w2, b, 1, (0, 1))


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=[f"{v}-{'nhwc' if cl else 'nchw'}" for v, cl in VARIANTS]
)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("reduction", REDUCTIONS, ids=[f"{r}x" for r in REDUCTIONS])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("n", "c", "hw"), SHAPES, ids=[f"N{n}-C{c}-{h}x{h}" for n, c, h in SHAPES])
def test_lowrank_cuda(benchmark, n, c, hw, scheme, reduction, pass_, variant):
    name, channels_last = variant
    o = c
    rank = rank_for(c, o, scheme, reduction)
    g = torch.Generator(device="cuda").manual_seed(c * 31 + rank)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, hw, hw, device="cuda", generator=g).contiguous(memory_format=fmt)
    b = torch.zeros(o, device="cuda")
    backward = pass_ == "forward+backward"
    if name == "dense conv":
        w = torch.randn(o, c, K, K, device="cuda", generator=g) / (c * K * K) ** 0.5
        weights = [w.contiguous(memory_format=fmt)]

        def fn():
            return F.conv2d(x, weights[0], b, 1, 1)

        macs = macs_per_pixel(c, o, scheme, None)
    else:
        # cuDNN likes weights in the activations' format; fusenas reads them contiguous.
        wfmt = torch.contiguous_format if name == "fusenas" else fmt
        weights = [t.contiguous(memory_format=wfmt) for t in _factors(c, o, scheme, rank, g)]
        if name == "fusenas":

            def fn():
                return lowrank_conv2d(x, *weights, b, scheme=scheme, padding=1)
        else:

            def fn():
                return _two_convs(x, *weights, b, scheme)

        macs = macs_per_pixel(c, o, scheme, rank)
    leaves = [t.requires_grad_(backward) for t in (x, *weights, b)]
    grad = torch.randn(n, o, hw, hw, device="cuda").contiguous(memory_format=fmt)

    def run():
        y = fn()
        if backward:
            torch.autograd.grad(y, leaves, grad)
        torch.cuda.synchronize()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator, first launches
        run()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    peak = torch.cuda.max_memory_allocated() - base
    benchmark.group = f"lowrank_cuda N={n} C={c} {hw}x{hw} {scheme} {reduction}x {pass_}"
    benchmark.extra_info.update(
        variant=name, channels_last=channels_last, n=n, c=c, hw=hw, scheme=scheme, rank=rank,
        reduction=reduction, pass_=pass_, macs=macs * n * hw * hw, peak_bytes=peak,
        device=torch.cuda.get_device_name(),
    )  # fmt: skip
    benchmark(run)

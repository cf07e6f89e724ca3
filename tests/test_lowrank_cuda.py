"""GPU tests of the CUDA low-rank convolution kernels (fusenas._C_cuda).

The CUDA kernels are checked against the two-conv reference on the GPU (in
float64, from the same inputs) and against the CPU kernel: forward and every
gradient (x, w1, w2, bias, through autograd and through the backward op with
each output mask), over odd sizes, size-1 dims, ranks from 1 to full, both
schemes, strides, paddings and dilations, both memory formats, float32,
bfloat16 and float16. Further tests cover opcheck, torch.compile, a side
stream, the reference fallback and the shape grid of the benchmarks.
Everything here skips cleanly when there is no CUDA device or the extension
was not built.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from test_cuda_emulation import LOWRANK_CASES, lowrank_tensors

from fusenas.ops import _native
from fusenas.ops.lowrank_conv import lowrank_conv2d, lowrank_conv2d_reference

pytestmark = pytest.mark.gpu  # skipped without a GPU and _C_cuda (conftest.py)


@pytest.fixture(autouse=True)
def fused_kernels(monkeypatch):
    """The op's CUDA default is cuDNN (two convs); these tests are about the fused kernels."""
    monkeypatch.setenv("FUSENAS_LOWRANK_CUDA", "fused")


def test_default_cuda_path_is_cudnn_two_convs(monkeypatch):
    import fusenas.ops.lowrank_conv_cuda as cuda_ops

    def not_called(*args, **kwargs):
        raise AssertionError("the default CUDA path ran the fused kernels")

    monkeypatch.delenv("FUSENAS_LOWRANK_CUDA")
    monkeypatch.setattr(cuda_ops, "lowrank_forward_native", not_called)
    monkeypatch.setattr(cuda_ops, "lowrank_backward_native", not_called)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 9, generator=g).cuda().requires_grad_()
    w1 = torch.randn(4, 8, 3, 1, generator=g).cuda().requires_grad_()
    w2 = torch.randn(6, 4, 1, 3, generator=g).cuda().requires_grad_()
    args = ("spatial", (1, 1), (1, 1), (1, 1))
    y = lowrank_conv2d(x, w1, w2, None, scheme="spatial", stride=1, padding=1)
    ref = lowrank_conv2d_reference(x, w1, w2, None, *args)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(y.square().sum(), (x, w1, w2))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w1, w2))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


HAS_CPU_KERNEL = _native.cpu() is not None and hasattr(_native.cpu(), "lowrank_conv2d_cpu")
# Relative to max |expected|: accumulation order differs from cuDNN; 16-bit
# results round once (the kernels accumulate in float32).
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _pairs(stride, padding, dilation):
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return pair(stride), pair(padding), pair(dilation)


def _forward_and_grads(args, grad, device):
    """y and (grad_x, grad_w1, grad_w2, grad_bias) through torch.ops.fusenas on `device`."""
    x, w1, w2, b, scheme, stride, padding, dilation = args
    leaves = [t.detach().to(device).requires_grad_() for t in (x, w1, w2)]
    bb = None if b is None else b.detach().to(device).requires_grad_()
    y = torch.ops.fusenas.lowrank_conv2d(*leaves, bb, scheme, *_pairs(stride, padding, dilation))
    grads = torch.autograd.grad(y, leaves + ([] if bb is None else [bb]), grad.to(device))
    return y, grads


def _expected(args, grad):
    """The two-conv sequence in float64 on the GPU."""
    x, w1, w2, b, scheme, stride, padding, dilation = args
    leaves = [t.detach().cuda().double().requires_grad_() for t in (x, w1, w2)]
    bb = None if b is None else b.detach().cuda().double().requires_grad_()
    y = lowrank_conv2d_reference(*leaves, bb, scheme, *_pairs(stride, padding, dilation))
    grads = torch.autograd.grad(y, leaves + ([] if bb is None else [bb]), grad.cuda().double())
    return y, grads


def _close(actual, expected, dtype, what):
    tol = TOL[dtype]
    scale = expected.double().abs().max().item() + 1e-12
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=tol, atol=tol * scale,
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


def _grad_for(args):
    x, w1, w2, b, scheme, stride, padding, dilation = args
    shape = lowrank_conv2d_reference(x[:1].float(), w1.float(), w2.float(), None, scheme,
                                     *_pairs(stride, padding, dilation)).shape  # fmt: skip
    g = torch.randn((x.shape[0], *shape[1:]), generator=torch.Generator().manual_seed(5))
    fmt = torch.channels_last if _cl(x) else torch.contiguous_format
    return g.to(x.dtype).contiguous(memory_format=fmt)


def _cl(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _check(args, what):
    dtype = args[0].dtype
    g = _grad_for(args)
    y, grads = _forward_and_grads(args, g, "cuda")
    assert y.is_cuda and y.dtype == dtype
    if _cl(args[0]):
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    y_ref, grads_ref = _expected(args, g)
    names = ("y", "grad_x", "grad_w1", "grad_w2", "grad_bias")
    for name, a, b in zip(names, (y, *grads), (y_ref, *grads_ref), strict=False):
        _close(a, b, dtype, f"{what}: {name} vs reference")
    if HAS_CPU_KERNEL and dtype in (torch.float32, torch.bfloat16):
        y_cpu, grads_cpu = _forward_and_grads(args, g, "cpu")
        for name, a, b in zip(names, (y, *grads), (y_cpu, *grads_cpu), strict=False):
            _close(a, b, dtype, f"{what}: {name} vs CPU kernel")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_cuda_matches_reference_and_cpu(scheme, channels_last, dtype):
    for i, case in enumerate(LOWRANK_CASES):
        args = lowrank_tensors(case, scheme, channels_last, dtype, bias=i % 3 != 1, seed=i)
        _check(args, f"case {case}")


def test_cuda_full_rank_reproduces_dense_conv():
    # Channel scheme at full rank: w1 = identity over (C, kh, kw), w2 = the dense weight.
    g = torch.Generator().manual_seed(0)
    c, o, k = 4, 6, 3
    x = torch.randn(2, c, 9, 11, generator=g).cuda()
    w = torch.randn(o, c, k, k, generator=g).cuda()
    w1 = torch.eye(c * k * k).reshape(c * k * k, c, k, k).cuda()
    w2 = w.reshape(o, c * k * k, 1, 1)
    y = lowrank_conv2d(x, w1, w2, scheme="channel", padding=1)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)


def test_cuda_backward_output_masks():
    args = lowrank_tensors(LOWRANK_CASES[2], "spatial", True, seed=2)
    x, w1, w2, _, scheme, stride, padding, dilation = (
        t.cuda() if isinstance(t, torch.Tensor) else t for t in args
    )
    g = _grad_for(args).cuda()
    full = torch.ops.fusenas.lowrank_conv2d_backward(
        g, x, w1, w2, scheme, *_pairs(stride, padding, dilation), [True] * 4
    )
    for mask in itertools.product([False, True], repeat=4):
        out = torch.ops.fusenas.lowrank_conv2d_backward(
            g, x, w1, w2, scheme, *_pairs(stride, padding, dilation), list(mask)
        )
        for want, a, b in zip(mask, out, full, strict=True):
            if want:  # weight gradients are float32 atomics: their order varies
                scale = b.abs().max().item()
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
            else:
                assert a.numel() == 0


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_cuda_benchmark_shapes(scheme):
    # One CIFAR and one ImageNet shape of the benchmark grid, at a 3x MAC reduction.
    for n, c, hw, r in ((128, 32, 16, 10), (8, 256, 14, 60)):
        case = (n, c, hw, hw, r, c, 3, 3, 1, 1, 1)
        _check(lowrank_tensors(case, scheme, channels_last=c > 64, seed=c), f"{case}")


def test_cuda_side_stream_and_fallbacks(monkeypatch):
    args = lowrank_tensors(LOWRANK_CASES[0], "channel", False)
    x, w1, w2, b = (t.cuda() for t in args[:4])
    y = lowrank_conv2d(x, w1, w2, b, scheme="channel", padding=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y2 = lowrank_conv2d(x, w1, w2, b, scheme="channel", padding=1)
    stream.synchronize()
    torch.testing.assert_close(y2, y, rtol=0, atol=0)
    monkeypatch.setattr(_native, "_warned", set())
    with pytest.warns(RuntimeWarning, match="reference"):  # float64: no kernel
        y64 = lowrank_conv2d(x.double(), w1.double(), w2.double(), b.double(), scheme="channel",
                             padding=1)  # fmt: skip
    torch.testing.assert_close(y64.float(), y, rtol=1e-5, atol=1e-5)
    # A dilation of 20000 makes a 1 x 3 kernel's input tile too wide for shared memory.
    xs, w1s, w2s, _ = (t.cuda() for t in lowrank_tensors(
        (1, 1, 1, 5, 1, 1, 1, 3, 1, 0, 1), "channel", False)[:4])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="shared-memory"):
        ys = lowrank_conv2d(xs, w1s, w2s, scheme="channel", padding=(0, 20000),
                            dilation=(1, 20000))  # fmt: skip
    ref = lowrank_conv2d_reference(xs, w1s, w2s, None, "channel", [1, 1], [0, 20000], [1, 20000])
    torch.testing.assert_close(ys, ref)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_opcheck_cuda(scheme):
    x, w1, w2, b, _, stride, padding, dilation = (
        t.cuda() if isinstance(t, torch.Tensor) else t
        for t in lowrank_tensors(LOWRANK_CASES[1], scheme, scheme == "spatial")
    )
    for t in (x, w1, w2, b):
        t.requires_grad_()
    torch.library.opcheck(
        torch.ops.fusenas.lowrank_conv2d.default,
        (x, w1, w2, b, scheme, *_pairs(stride, padding, dilation)),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_epilogue_matches_reference(dtype):
    """residual + ReLU on CUDA (applied after the kernel there) against the reference."""
    x, w1, w2, b, scheme, stride, padding, dilation = (
        t.cuda().to(dtype) if isinstance(t, torch.Tensor) else t
        for t in lowrank_tensors(LOWRANK_CASES[1], "spatial", False)
    )
    y0 = lowrank_conv2d(x, w1, w2, b, scheme=scheme, stride=stride, padding=padding,
                        dilation=dilation)  # fmt: skip
    res = torch.randn_like(y0)
    y = lowrank_conv2d(x, w1, w2, b, scheme=scheme, stride=stride, padding=padding,
                       dilation=dilation, residual=res, activation="relu")  # fmt: skip
    want = lowrank_conv2d_reference(
        x.double(), w1.double(), w2.double(), b.double(), scheme,
        *_pairs(stride, padding, dilation), res.double(), "relu",
    )  # fmt: skip
    err = (y.double() - want).abs().max() / want.abs().max().clamp_min(1)
    assert err < TOL[dtype] * 4 and (y >= 0).all()


def test_torch_compile_cuda():
    from torch.utils._triton import has_triton

    x, w1, w2, b = (t.cuda().requires_grad_() for t in lowrank_tensors(
        LOWRANK_CASES[0], "spatial", True)[:4])  # fmt: skip

    def f(x, w1, w2, b):
        return torch.relu(lowrank_conv2d(x, w1, w2, b, scheme="spatial", padding=1)).sum()

    backend = "inductor" if has_triton() else "aot_eager"
    loss_c = torch.compile(f, fullgraph=True, backend=backend)(x, w1, w2, b)
    grads_c = torch.autograd.grad(loss_c, (x, w1, w2, b))
    loss_e = f(x, w1, w2, b)
    grads_e = torch.autograd.grad(loss_e, (x, w1, w2, b))
    torch.testing.assert_close(loss_c, loss_e)
    for a, e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, e)


def test_mixed_devices_raise():
    x, w1, w2, b, *_ = lowrank_tensors(LOWRANK_CASES[0], "channel", False)
    with pytest.raises(ValueError, match="w1"):
        lowrank_conv2d(x.cuda(), w1, w2.cuda(), scheme="channel", padding=1)

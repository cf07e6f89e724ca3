"""torch.ops.fusenas.lowrank_conv2d: native kernels (every ISA) against the two-conv
reference, the reference against the dense conv it decomposes, gradients, torch.library
contracts and bad input."""

from __future__ import annotations

import itertools
import weakref

import pytest
import torch
import torch.nn.functional as F

import fusenas.ops.lowrank_conv as lowrank_conv_module
from fusenas.ops import _native, lowrank_conv2d
from fusenas.ops.lowrank_conv import (
    KEEP_INTERMEDIATE_MIN_DEPTH,
    check_lowrank_args,
    factor_params,
    is_channels_last,
    lowrank_conv2d_backward_reference,
    lowrank_conv2d_reference,
    lowrank_conv2d_with_intermediate_reference,
    workspace_bytes,
)

needs_ext = pytest.mark.skipif(
    _native.cpu() is None or not hasattr(_native.cpu(), "lowrank_conv2d_cpu"),
    reason="fusenas._C (with lowrank_conv2d_cpu) not built",
)


def _isas() -> list[str]:
    ext = _native.cpu()
    if ext is None:
        return []
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(ext.build_info()["hardware_isa"]) + 1]


def _factors(scheme, c, r, nout, kh, kw, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if scheme == "channel":
        w1, w2 = torch.randn(r, c, kh, kw, generator=g), torch.randn(nout, r, 1, 1, generator=g)
    else:
        w1, w2 = torch.randn(r, c, kh, 1, generator=g), torch.randn(nout, r, 1, kw, generator=g)
    return w1.to(dtype), w2.to(dtype)


def _ref(x, w1, w2, bias, scheme, s, p, d):
    return lowrank_conv2d_reference(x, w1, w2, bias, scheme, (s, s), (p, p), (d, d))


# (N, C, H, W, rank, Nout, k, stride, padding, dilation): odd sizes, size-1 dims, strides,
# paddings (also larger than the kernel reach), dilations, rank 1 and rank > C.
SHAPES = [
    (2, 3, 7, 9, 2, 5, 3, 1, 1, 1),
    (1, 16, 8, 8, 3, 16, 3, 1, 1, 1),
    (2, 5, 11, 6, 7, 4, 3, 2, 1, 1),
    (1, 4, 9, 10, 3, 6, 3, 1, 2, 2),
    (3, 8, 5, 5, 1, 1, 1, 1, 0, 1),
    (2, 6, 13, 12, 5, 9, 5, 3, 2, 1),
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1),
    (1, 1, 1, 7, 2, 3, 3, 1, 1, 1),
    (2, 17, 10, 10, 20, 33, 3, 2, 0, 1),
    (1, 3, 8, 9, 2, 4, 1, 2, 0, 1),
    (2, 4, 12, 11, 3, 5, 3, 2, 3, 2),
    (1, 2, 3, 3, 1, 2, 3, 1, 4, 1),
    (2, 20, 18, 35, 6, 18, 3, 1, 1, 1),  # whole 16 x 16 layout-transpose blocks
    (1, 32, 17, 33, 4, 16, 3, 2, 1, 1),
    (1, 2, 4, 150, 2, 3, 3, 1, 1, 1),  # rows longer than one pass of the row-copy masks
    # channels_last at horizontal stride 1 and up to 32 channels runs the direct
    # (BlockGemm) form: 16 channels read in place (no padding), rank past one
    # 16-channel block, 24 channels = 1.5 blocks.
    (2, 16, 6, 7, 5, 20, 3, 1, 0, 1),
    (1, 16, 9, 9, 17, 16, 3, 1, 2, 2),
    (2, 24, 5, 6, 18, 7, 3, 1, 1, 1),
]


def _case(shape, scheme, channels_last, dtype, seed=0):
    n, c, h, w, r, nout, k, s, p, d = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w1, w2 = _factors(scheme, c, r, nout, k, k, dtype, seed)
    bias = torch.randn(nout, generator=g).to(dtype)
    return x, w1, w2, bias, (s, p, d)


def _format(x):
    """The op's rule: channels_last output iff x is channels_last and not also contiguous."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def _close(actual, expected, dtype):
    expected = expected.to(torch.float64)
    tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=0, atol=tol)


def _kept(y):
    """Whether the forward kept the intermediate t for the backward (before it runs)."""
    return getattr(y.grad_fn, "kept", None) is not None


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_forward_matches_reference(isa, scheme, dtype, monkeypatch):
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for shape, cl in itertools.product(SHAPES, [False, True]):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, dtype)
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d)
        expected = _ref(*(t.double() for t in (x, w1, w2, bias)), scheme, s, p, d)
        assert y.dtype == dtype and y.shape == expected.shape
        assert y.is_contiguous(memory_format=_format(x))
        _close(y, expected, dtype)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_backward_matches_reference(isa, scheme, dtype, monkeypatch):
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    masks = [[True] * 4, [True, False, False, False], [False, True, True, False],
             [False, False, True, True]]  # fmt: skip
    for i, (shape, cl) in enumerate(itertools.product(SHAPES, [False, True])):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, dtype, seed=i)
        y = _ref(x.double(), w1.double(), w2.double(), None, scheme, s, p, d)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        go = go.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        mask = masks[i % len(masks)]
        args = (scheme, [s, s], [p, p], [d, d], mask)
        got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *args)
        want = lowrank_conv2d_backward_reference(
            go.double(), x.double(), w1.double(), w2.double(), *args
        )
        for g_, w_, m in zip(got, want, mask, strict=True):
            if not m:
                assert g_.numel() == 0
                continue
            assert g_.dtype == dtype and g_.shape == w_.shape
            _close(g_, w_, dtype)
        if mask[0]:
            assert got[0].is_contiguous(memory_format=_format(x))


@needs_ext
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_every_rank_from_one_to_full(scheme):
    c, nout, k = 5, 6, 3
    full = min(nout, c * k * k) if scheme == "channel" else min(c * k, nout * k)
    x = torch.randn(2, c, 9, 8)
    for r in range(1, full + 1):
        w1, w2 = _factors(scheme, c, r, nout, k, k, seed=r)
        y = lowrank_conv2d(x, w1, w2, scheme=scheme, padding=1)
        _close(y, _ref(x.double(), w1.double(), w2.double(), None, scheme, 1, 1, 1), torch.float32)


def _svd_factors(weight: torch.Tensor, scheme: str):
    """Full-rank TRP factors of a dense weight (N, C, k, k)."""
    n, c, kh, kw = weight.shape
    if scheme == "channel":
        u, s, vh = torch.linalg.svd(weight.reshape(n, c * kh * kw), full_matrices=False)
        r = s.numel()
        w1 = (s.sqrt()[:, None] * vh).reshape(r, c, kh, kw)
        w2 = (u * s.sqrt()).reshape(n, r, 1, 1)
    else:
        m = weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        r = s.numel()
        w1 = (u * s.sqrt()).t().reshape(r, c, kh, 1)
        w2 = (s.sqrt()[:, None] * vh).reshape(r, n, 1, kw).permute(1, 0, 2, 3).contiguous()
    return w1, w2


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_full_rank_decomposition_reproduces_dense_conv(scheme, stride, padding):
    torch.manual_seed(1)
    weight = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64)
    w1, w2 = _svd_factors(weight, scheme)
    dense = F.conv2d(x, weight, bias, stride, padding)
    kw = dict(scheme=scheme, stride=stride, padding=padding)
    torch.testing.assert_close(lowrank_conv2d(x, w1, w2, bias, **kw), dense)
    if _native.cpu() is not None:  # and through the native float32 kernel
        y = lowrank_conv2d(x.float(), w1.float(), w2.float(), bias.float(), **kw)
        torch.testing.assert_close(y.double(), dense, rtol=1e-4, atol=1e-4)


@needs_ext
def test_other_strides_and_empty_batch():
    x = torch.randn(2, 4, 9, 11)[:, :, ::1, 1:]  # not contiguous in either layout
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w1, w2 = _factors("channel", 4, 3, 5, 3, 3)
    y = lowrank_conv2d(x, w1, w2, scheme="channel", padding=1)
    assert y.is_contiguous()
    _close(y, _ref(x.double(), w1.double(), w2.double(), None, "channel", 1, 1, 1), torch.float32)
    empty = lowrank_conv2d(torch.randn(0, 4, 9, 9), w1, w2, scheme="channel", padding=1)
    assert empty.shape == (0, 5, 9, 9)


@needs_ext
def test_threads_give_the_same_result():
    x, w1, w2, bias, _ = _case((4, 8, 16, 15, 5, 7, 3, 1, 1, 1), "channel", False, torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lowrank_conv2d(x, w1, w2, bias, scheme="channel", padding=1)
        torch.set_num_threads(max(2, old))
        many = lowrank_conv2d(x, w1, w2, bias, scheme="channel", padding=1)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


def test_float64_runs_the_reference():
    x, w1, w2, bias, (s, p, d) = _case(SHAPES[0], "spatial", False, torch.float64)
    y = lowrank_conv2d(x, w1, w2, bias, scheme="spatial", stride=s, padding=p, dilation=d)
    torch.testing.assert_close(y, _ref(x, w1, w2, bias, "spatial", s, p, d))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_gradcheck_float64_reference(scheme):
    x, w1, w2, bias, (s, p, d) = _case((2, 3, 6, 5, 2, 4, 3, 2, 1, 1), scheme, False, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w1, w2, bias))

    def f(x, w1, w2, bias):
        return lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d)

    assert torch.autograd.gradcheck(f, inputs)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("keep", [True, False])
def test_native_backward_finite_differences(isa, scheme, channels_last, keep, monkeypatch):
    """Directional derivatives of the native float32 forward against <native grad, v>, with
    the intermediate kept from the forward or recomputed in the backward."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    x, w1, w2, bias, (s, p, d) = _case(
        (2, 5, 9, 8, 3, 6, 3, 1, 1, 1), scheme, channels_last, torch.float32
    )
    g = torch.Generator().manual_seed(5)
    probe = torch.randn(2, 6, 9, 8, generator=g)

    def loss(x, w1, w2, bias):
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                           save_intermediate=keep)  # fmt: skip
        return (y * probe).sum()

    params = [t.clone().requires_grad_() for t in (x, w1, w2, bias)]
    loss(*params).backward()
    eps = 1e-2
    for i, t in enumerate((x, w1, w2, bias)):
        v = torch.randn(t.shape, generator=g)
        plus = [q.detach() + eps * v if j == i else q.detach() for j, q in enumerate(params)]
        minus = [q.detach() - eps * v if j == i else q.detach() for j, q in enumerate(params)]
        with torch.no_grad():
            numeric = (loss(*plus).double() - loss(*minus).double()) / (2 * eps)
        analytic = (params[i].grad.double() * v.double()).sum()
        assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic.item())), (
            i,
            numeric,
            analytic,
        )


@pytest.mark.parametrize(
    "scheme, shape, cl",
    [("channel", SHAPES[2], False), ("spatial", SHAPES[3], True), ("channel", SHAPES[0], True)],
)
def test_opcheck(scheme, shape, cl):
    x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, torch.float32)
    x.requires_grad_()
    w1.requires_grad_()
    args = (x, w1, w2, bias, scheme, [s, s], [p, p], [d, d])
    torch.library.opcheck(torch.ops.fusenas.lowrank_conv2d.default, args)
    y = _ref(x.detach(), w1.detach(), w2, bias, scheme, s, p, d)
    bwd = (torch.randn(y.shape).contiguous(memory_format=_format(x)),
           x.detach(), w1.detach(), w2, scheme, [s, s], [p, p], [d, d],
           [True, True, True, True])  # fmt: skip
    torch.library.opcheck(torch.ops.fusenas.lowrank_conv2d_backward.default, bwd)
    bwd_partial = (*bwd[:-1], [False, True, False, True])
    torch.library.opcheck(torch.ops.fusenas.lowrank_conv2d_backward.default, bwd_partial)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_torch_compile_fullgraph(scheme):
    x, w1, w2, bias, (s, p, d) = _case((2, 4, 8, 8, 3, 5, 3, 1, 1, 1), scheme, True, torch.float32)

    def f(x, w1, w2, bias):
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d)
        return torch.relu(y).sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    a = [t.clone().requires_grad_() for t in (x, w1, w2, bias)]
    b = [t.clone().requires_grad_() for t in (x, w1, w2, bias)]
    out_c, out_e = compiled(*a), f(*b)
    torch.testing.assert_close(out_c, out_e)
    out_c.backward()
    out_e.backward()
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta.grad, tb.grad)


def test_autograd_only_requested_grads():
    x, w1, w2, bias, _ = _case(SHAPES[0], "channel", False, torch.float32)
    w1.requires_grad_()
    lowrank_conv2d(x, w1, w2, bias, scheme="channel", padding=1).sum().backward()
    assert w1.grad is not None and x.grad is None and w2.grad is None
    expected = torch.autograd.grad(_ref(x, w1, w2, bias, "channel", 1, 1, 1).sum(), w1)[0]
    torch.testing.assert_close(w1.grad, expected, rtol=1e-4, atol=1e-4)


def test_info_reports_the_op_path():
    from fusenas.info import collect_info

    paths = collect_info()["lowrank_conv2d"]
    assert set(paths) >= {"cpu float32", "cpu bfloat16", "cpu float16", "cuda"}
    if _native.cpu() is not None:
        assert paths["cpu float32"].startswith("native kernel")
    assert paths["cpu float16"].startswith("reference")


# ------------------------------------------------------------ bad input ----


def _good():
    x = torch.randn(2, 4, 8, 8)
    w1, w2 = _factors("channel", 4, 3, 5, 3, 3)
    return {"x": x, "w1": w1, "w2": w2, "bias": torch.randn(5), "scheme": "channel",
            "stride": 1, "padding": 1, "dilation": 1}  # fmt: skip


def _call(**over):
    a = _good()
    a.update(over)
    return lowrank_conv2d(a.pop("x"), a.pop("w1"), a.pop("w2"), a.pop("bias"), **a)


@pytest.mark.parametrize(
    "over, exc, match",
    [
        ({"w1": torch.randn(0, 4, 3, 3), "w2": torch.randn(5, 0, 1, 1)}, ValueError, "rank"),
        ({"w2": torch.randn(5, 2, 1, 1)}, ValueError, "w2: expected shape"),
        ({"w2": torch.randn(5, 3, 3, 3)}, ValueError, "w2: scheme 'channel'"),
        ({"scheme": "spatial"}, ValueError, "w1: scheme 'spatial'"),
        (
            {"scheme": "spatial", "w1": torch.randn(3, 4, 3, 1), "w2": torch.randn(5, 3, 3, 1)},
            ValueError,
            "w2: scheme 'spatial'",
        ),
        ({"w1": torch.randn(3, 2, 3, 3)}, ValueError, "groups != 1 is not supported"),
        ({"w1": torch.randn(3, 3, 3, 3)}, ValueError, "w1: expected 4 input channels"),
        ({"w1": torch.randn(3, 4, 3)}, ValueError, "w1: expected a 4-D"),
        ({"x": torch.randn(4, 8, 8)}, ValueError, "x: expected a 4-D"),
        ({"x": torch.ones(2, 4, 8, 8, dtype=torch.int32)}, TypeError, "x: expected a floating"),
        ({"x": torch.randn(2, 4, 8, 8).double()}, TypeError, "w1: expected dtype"),
        ({"w2": torch.randn(5, 3, 1, 1).bfloat16()}, TypeError, "w2: expected dtype"),
        ({"w1": torch.randn(3, 4, 3, 3, device="meta")}, ValueError, "w1: expected a tensor on"),
        ({"bias": torch.randn(4)}, ValueError, "bias: expected shape"),
        ({"bias": torch.randn(5).double()}, TypeError, "bias: expected dtype"),
        ({"bias": torch.randn(5, device="meta")}, ValueError, "bias: expected a tensor on"),
        ({"scheme": "depthwise"}, ValueError, "scheme"),
        ({"stride": 0}, ValueError, "stride"),
        ({"padding": -1}, ValueError, "padding"),
        ({"dilation": (1, 0)}, ValueError, "dilation"),
        ({"stride": (1, 2, 3)}, TypeError, "stride"),
        ({"padding": 1.5}, TypeError, "padding"),
        ({"x": torch.randn(2, 4, 2, 2), "padding": 0}, ValueError, "too small"),
        ({"x": torch.randn(2, 0, 8, 8)}, ValueError, "x: expected C, H, W >= 1"),
        ({"x": [1.0]}, TypeError, "x: expected a torch.Tensor"),
    ],
)
def test_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(**over)


def test_bad_grad_out():
    a = _good()
    args = (a["x"], a["w1"], a["w2"], "channel", [1, 1], [1, 1], [1, 1], [True] * 4)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        torch.ops.fusenas.lowrank_conv2d_backward(torch.randn(2, 5, 7, 8), *args)
    with pytest.raises(TypeError, match="grad_out: expected"):
        torch.ops.fusenas.lowrank_conv2d_backward(torch.randn(2, 5, 8, 8).double(), *args)


def test_validation_cache_never_hides_bad_input():
    """Valid CPU calls remember their checked geometry; a call that differs in any shape,
    dtype or setting is checked again, and arguments that cannot be a cache key (a
    scheme that is not a string) still get the clear error."""
    a = _good()
    with torch.no_grad():
        first, again = (lowrank_conv2d(a["x"], a["w1"], a["w2"], a["bias"], scheme="channel",
                                       padding=1) for _ in range(2))  # fmt: skip
        assert torch.equal(first, again)  # the same key again: the same result
        with pytest.raises(TypeError, match="w1: expected dtype"):
            _call(w1=_good()["w1"].double())
        with pytest.raises(ValueError, match="w1: expected 5 input channels"):
            _call(x=torch.randn(2, 5, 8, 8))
        with pytest.raises(ValueError, match="bias"):
            _call(bias=torch.randn(4))
        with pytest.raises(ValueError, match="scheme"):
            _call(scheme=["channel"])
        with pytest.raises(ValueError, match="x: input"):
            _call(x=torch.randn(2, 4, 1, 1), padding=0)


def test_check_lowrank_args_returns_kernel_size():
    a = _good()
    ones = (1, 1)
    assert check_lowrank_args(a["x"], a["w1"], a["w2"], None, "channel", ones, ones, ones) == (3, 3)
    w1, w2 = _factors("spatial", 4, 3, 5, 3, 5)
    assert check_lowrank_args(a["x"], w1, w2, None, "spatial", (1, 1), (1, 2), (1, 1)) == (3, 5)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_channels_last_pixel_major_path_matches_plane_path(isa, monkeypatch):
    """channels_last float32 forwards take the pixel-major path (FUSENAS_LOWRANK_NHWC=0
    forces the plane path): both match the reference, epilogue included; layers where
    rounding the rank up to whole vectors would multiply the work keep the plane path."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for i, (shape, scheme) in enumerate(itertools.product(SHAPES, ["channel", "spatial"])):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, True, torch.float32, seed=i)
        y0 = _ref(x.double(), w1.double(), w2.double(), bias.double(), scheme, s, p, d)
        res = torch.randn(y0.shape, generator=torch.Generator().manual_seed(i))
        res = res.contiguous(memory_format=_format(x))
        want = torch.relu(y0 + res.double())
        for env in ("1", "0"):
            monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", env)
            y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                               residual=res, activation="relu")  # fmt: skip
            assert y.is_contiguous(memory_format=_format(x))
            _close(y, want, torch.float32)

    def paths(c, r, seed):
        """Outputs of the default rule, the forced pixel-major path, the plane path."""
        x, w1, w2, bias, _ = _case((4, c, 8, 8, r, c, 3, 1, 1, 1), "channel", True,
                                   torch.float32, seed)  # fmt: skip
        out = []
        for env in (None, "1", "0"):
            if env is None:
                monkeypatch.delenv("FUSENAS_LOWRANK_NHWC", raising=False)
            else:
                monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", env)
            out.append(lowrank_conv2d(x, w1, w2, bias, scheme="channel", padding=1))
        return out

    auto, nhwc, planes = paths(64, 28, 1)  # another summation order: not the same bits
    assert torch.equal(auto, nhwc) and not torch.equal(nhwc, planes)
    _close(nhwc, planes, torch.float32)
    # Rank 2 in 16-wide vectors: 8x the first stage's work, so the rule keeps the planes.
    auto, nhwc, planes = paths(16, 2, 3)
    assert torch.equal(auto, planes) and not torch.equal(nhwc, planes)
    # Large factors (9 x 256 x 208 packed floats) stay on the pixel-major path: its
    # GEMM takes them in blocks of rows.
    auto, nhwc, planes = paths(256, 200, 2)
    assert torch.equal(auto, nhwc) and not torch.equal(nhwc, planes)
    _close(nhwc, planes, torch.float32)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_direct_form_vertical_stride_and_image_spanning_tiles(isa, scheme, monkeypatch):
    """The direct (BlockGemm) form takes any vertical stride, copies each image's input
    rows once per tile (tiles span several 5-row images here) and reads padding rows
    as zeros: stride (2, 1) and (3, 1), 16 and 24 channels, against the reference."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    g = torch.Generator().manual_seed(5)
    for c, sh, pad, dil in ((16, 2, 1, 1), (24, 3, 2, 1), (16, 2, 0, 2), (24, 1, 1, 2)):
        x = torch.randn(7, c, 5, 9, generator=g).contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors(scheme, c, 19, 17, 3, 3, seed=c + sh)
        bias = torch.randn(17, generator=g)
        args = dict(stride=(sh, 1), padding=(pad, pad), dilation=(dil, dil))
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, **args)
        want = lowrank_conv2d_reference(
            x.double(),
            w1.double(),
            w2.double(),
            bias.double(),
            scheme,
            (sh, 1),
            (pad, pad),
            (dil, dil),
        )
        assert y.is_contiguous(memory_format=torch.channels_last)
        _close(y, want, torch.float32)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_spatial_factors_by_winograd(isa, monkeypatch):
    """channels_last float32 spatial layers (stride and dilation 1, rank >= 16) run their
    1 x 3 factor by Winograd F(4, 3) along rows and, where C is whole vectors up to 256,
    their 3 x 1 factor along columns: output sizes of every remainder mod 4, paddings
    0-2, both forms of the pixel-major forward (16-32 and 40-256 channels), Nout past a
    64-channel block and not whole vectors, tiles spanning small images, rows wider than
    one chunk, residual + ReLU; against the float64 reference, and not the same bits as
    the direct form (FUSENAS_LOWRANK_WINOGRAD=0), so the transforms really ran: y for the
    row factor, the kept intermediate for the column factor."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    vec = {"scalar": 4, "avx2": 8, "avx512": 16}[isa]
    g = torch.Generator().manual_seed(11)
    # (N, C, H, W, rank, Nout, padding)
    cases = [(3, 16, 6, 13, 16, 16, 1), (2, 24, 5, 10, 20, 17, 0), (2, 16, 4, 9, 18, 32, 2),
             (2, 48, 7, 7, 24, 80, 1), (2, 40, 3, 12, 16, 33, 1), (8, 16, 200, 2, 16, 16, 1),
             (16, 32, 5, 6, 16, 32, 1), (4, 64, 9, 9, 20, 64, 0), (2, 256, 5, 5, 32, 16, 1),
             (1, 16, 6, 70, 16, 16, 1)]  # fmt: skip
    for n, c, h, w, r, nout, pad in cases:
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors("spatial", c, r, nout, 3, 3, seed=c + r)
        bias = torch.randn(nout, generator=g)
        geo = ([1, 1], [pad, pad], [1, 1])
        y0 = lowrank_conv2d_reference(x.double(), w1.double(), w2.double(), bias.double(),
                                      "spatial", *geo)  # fmt: skip
        t0 = _first_factor(x.double(), w1.double(), "spatial", 1, pad, 1)
        res = torch.randn(y0.shape, generator=g).contiguous(memory_format=torch.channels_last)
        for residual, act in ((None, "none"), (res, "relu")):
            want = y0 if residual is None else torch.relu(y0 + res.double())
            out, kept = {}, {}
            for env in ("1", "0"):
                monkeypatch.setenv("FUSENAS_LOWRANK_WINOGRAD", env)
                out[env], kept[env] = torch.ops.fusenas.lowrank_conv2d_with_intermediate(
                    x, w1, w2, bias, "spatial", *geo, residual, act
                )
                assert out[env].is_contiguous(memory_format=torch.channels_last)
                _close(out[env], want, torch.float32)
                _close(kept[env], t0, torch.float32)
            assert not torch.equal(out["1"], out["0"])
            assert torch.equal(kept["1"], kept["0"]) == (c % vec != 0 or c > 256)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_channel_first_factor_by_winograd(isa, monkeypatch):
    """channels_last float32 channel-scheme layers (horizontal stride and dilation 1, C
    whole vectors) run their first factor by Winograd: a 3 x 3 one at stride and dilation
    1 by F(4 x 4, 3 x 3) on 6 x 6 patches, others by F(4, 3) along rows with the k input
    rows as one GEMM (any vertical stride, dilation and padding). Output heights and
    widths of every remainder mod 4, paddings 0-2, images smaller than a patch, groups
    spanning images, ranks from 1 to past one 64-column block, both forms of the forward;
    against the float64 reference, and the kept intermediate not the same bits as the
    direct form's (it is, where C is not whole vectors)."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    vec = {"scalar": 4, "avx2": 8, "avx512": 16}[isa]
    g = torch.Generator().manual_seed(12)
    # (N, C, H, W, rank, Nout, stride, padding, dilation), each (vertical, horizontal)
    cases = [(3, 16, 6, 13, 7, 16, (1, 1), (1, 1), (1, 1)),
             (2, 32, 9, 10, 20, 17, (2, 1), (1, 0), (1, 1)),
             (2, 48, 7, 7, 5, 80, (1, 1), (2, 2), (2, 1)),
             (2, 64, 8, 12, 1, 64, (3, 1), (0, 1), (1, 1)),
             (4, 24, 5, 9, 16, 16, (1, 1), (1, 1), (1, 1)),
             (1, 256, 4, 6, 40, 24, (1, 1), (1, 1), (1, 1)),
             (2, 32, 7, 5, 70, 33, (1, 1), (0, 0), (1, 1)),
             (5, 16, 2, 2, 9, 16, (1, 1), (2, 2), (1, 1)),
             (2, 48, 11, 18, 12, 20, (1, 1), (1, 1), (1, 1)),
             (16, 16, 3, 3, 4, 8, (1, 1), (1, 1), (1, 1))]  # fmt: skip
    for n, c, h, w, r, nout, st, pad, dil in cases:
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors("channel", c, r, nout, 3, 3, seed=c + r)
        bias = torch.randn(nout, generator=g)
        geo = (list(st), list(pad), list(dil))
        y0 = lowrank_conv2d_reference(x.double(), w1.double(), w2.double(), bias.double(),
                                      "channel", *geo)  # fmt: skip
        t0 = F.conv2d(x.double(), w1.double(), None, st, pad, dil)
        res = torch.randn(y0.shape, generator=g).contiguous(memory_format=torch.channels_last)
        want = torch.relu(y0 + res.double())
        out, kept = {}, {}
        for env in ("1", "0"):
            monkeypatch.setenv("FUSENAS_LOWRANK_WINOGRAD", env)
            out[env], kept[env] = torch.ops.fusenas.lowrank_conv2d_with_intermediate(
                x, w1, w2, bias, "channel", *geo, res, "relu"
            )
            assert out[env].is_contiguous(memory_format=torch.channels_last)
            _close(out[env], want, torch.float32)
            _close(kept[env], t0, torch.float32)
        assert torch.equal(kept["1"], kept["0"]) == (c % vec != 0)


def _backward_both_forms(monkeypatch, go, x, w1, w2, geo, mask, t):
    """The native backward with the Winograd forms forced on ("1") and off ("0"), each
    checked against the float64 reference on the masked gradients."""
    want = lowrank_conv2d_backward_reference(
        go.double(), x.double(), w1.double(), w2.double(), *geo, mask
    )
    got = {}
    for env in "10":
        monkeypatch.setenv("FUSENAS_LOWRANK_WINOGRAD", env)
        got[env] = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask, t)
        for g_, w_, m in zip(got[env], want, mask, strict=True):
            if m:
                _close(g_, w_, torch.float32)
    return got


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_spatial_backward_by_winograd(isa, monkeypatch):
    """channels_last float32 spatial backwards (stride and dilation 1) take gT (grad_out
    through the second factor, rows) and grad_x (gT through the first factor, columns)
    by Winograd F(4, 3) where Nout, resp. C, are whole vectors: paddings 0-2, heights of
    every remainder mod 4, tiles spanning images, each gradient mask with gT; against
    the float64 reference, and grad_x / grad_w1 not the same bits as the direct form's."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    vec = {"scalar": 4, "avx2": 8, "avx512": 16}[isa]
    # (N, C, H, W, rank, Nout, padding, mask)
    cases = [(3, 16, 6, 13, 16, 16, 1, [True, True, True, True]),
             (2, 32, 9, 10, 20, 48, 0, [True, False, False, False]),
             (16, 16, 5, 6, 24, 32, 1, [False, True, False, False]),
             (2, 48, 7, 7, 17, 24, 2, [True, True, False, True]),
             (2, 24, 4, 9, 16, 16, 1, [True, True, True, True])]  # fmt: skip
    for i, (n, c, h, w, r, nout, pad, mask) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors("spatial", c, r, nout, 3, 3, seed=i)
        geo = ("spatial", [1, 1], [pad, pad], [1, 1])
        y, t = lowrank_conv2d_with_intermediate_reference(x, w1, w2, None, *geo)
        go = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
        got = _backward_both_forms(monkeypatch, go, x, w1, w2, geo, mask, t)
        if mask[0]:  # grad_x: through gT (rows, Nout whole vectors) and columns (C)
            same = nout % vec != 0 and c % vec != 0
            assert torch.equal(got["1"][0], got["0"][0]) == same
        if mask[1]:  # grad_w1 = X^T gT
            assert torch.equal(got["1"][1], got["0"][1]) == (nout % vec != 0)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_channel_backward_grad_x_by_winograd(isa, monkeypatch):
    """channels_last float32 channel-scheme backwards (horizontal stride and dilation 1, C
    whole vectors) take grad_x (gT through the k x 3 factor) by Winograd: a 3 x 3 factor
    at stride and dilation 1 by F(4 x 4, 3 x 3), others by F(4, 3) along rows (vertical
    strides and dilations). Paddings 0-2, heights and widths of every remainder mod 4,
    images smaller than a patch, C past one 64-column block, ranks from 1; against the
    float64 reference, and not the same bits as the direct form's."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    vec = {"scalar": 4, "avx2": 8, "avx512": 16}[isa]
    # (N, C, H, W, rank, Nout, stride, padding, dilation), each (vertical, horizontal)
    cases = [(3, 16, 6, 13, 7, 16, (1, 1), (1, 1), (1, 1)),
             (2, 32, 9, 10, 20, 17, (2, 1), (1, 0), (1, 1)),
             (2, 48, 7, 7, 1, 24, (1, 1), (2, 2), (2, 1)),
             (4, 24, 5, 9, 16, 16, (3, 1), (0, 1), (1, 1)),
             (2, 80, 7, 10, 20, 16, (1, 1), (0, 0), (1, 1)),
             (5, 16, 2, 3, 9, 8, (1, 1), (2, 2), (1, 1)),
             (2, 32, 9, 11, 70, 24, (1, 1), (1, 1), (1, 1))]  # fmt: skip
    for i, (n, c, h, w, r, nout, st, pad, dil) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors("channel", c, r, nout, 3, 3, seed=i)
        geo = ("channel", list(st), list(pad), list(dil))
        y, t = lowrank_conv2d_with_intermediate_reference(x, w1, w2, None, *geo)
        go = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
        mask = [True, True, False, False]
        got = _backward_both_forms(monkeypatch, go, x, w1, w2, geo, mask, t)
        assert torch.equal(got["1"][0], got["0"][0]) == (c % vec != 0)
        assert torch.equal(got["1"][1], got["0"][1])  # grad_w1 keeps the direct form


@needs_ext
def test_winograd_default_rule(monkeypatch):
    """By default the Winograd forms run from rank 16 (spatial) or 4 (channel) where the
    path's buffers stay within the intermediate the two-conv sequence would hold; the
    same bits as when forced (FUSENAS_LOWRANK_WINOGRAD=1) where they run, as the direct
    form's (=0) where they do not. Bits of neither where only part of the forced forms
    run: a channel-scheme 3 x 3 factor whose F(4 x 4, 3 x 3) form (the one forced) does
    not fit takes F(4, 3) along rows where that fits; a spatial layer below rank 16 runs
    its 3 x 1 factor by Winograd (from rank 4, where its GEMMs are long enough) but not
    its 1 x 3 one. No channel limit: 512 channels run them where the batch is large
    enough for the transformed factors to fit."""

    def outputs(scheme, n, r, c=64):
        x = torch.randn(n, c, 8, 8, generator=torch.Generator().manual_seed(n + r))
        x = x.contiguous(memory_format=torch.channels_last)
        w1, w2 = _factors(scheme, c, r, c, 3, 3, seed=r)
        out = {}
        for env in (None, "1", "0"):
            if env is None:
                monkeypatch.delenv("FUSENAS_LOWRANK_WINOGRAD", raising=False)
            else:
                monkeypatch.setenv("FUSENAS_LOWRANK_WINOGRAD", env)
            out[env] = torch.ops.fusenas.lowrank_conv2d_with_intermediate(
                x, w1, w2, None, scheme, [1, 1], [1, 1], [1, 1], None, "none"
            )
        for a, b in zip(out["1"], out["0"], strict=True):
            assert not torch.equal(a, b)
        return out

    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    # The memory rule counts per-thread buffers: 2 threads, as the numbers above assume.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cases = [("spatial", 128, 16, "1"), ("spatial", 128, 12, "part"),
                 ("spatial", 128, 3, "0"), ("spatial", 1, 16, "0"),
                 ("channel", 128, 29, "1"), ("channel", 128, 10, "part"),
                 ("channel", 128, 3, "0"),
                 ("channel", 2, 10, "0"), ("spatial", 192, 128, "1", 512),
                 ("spatial", 32, 128, "0", 512)]  # fmt: skip
        for scheme, n, r, form, *c in cases:
            out = outputs(scheme, n, r, *c)
            if form == "part":  # y (the kept intermediate may match either)
                a, b, c0 = out[None][0], out["1"][0], out["0"][0]
                assert not torch.equal(a, b) and not torch.equal(a, c0), (scheme, n, r)
                torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item())
                continue
            for a, b in zip(out[None], out[form], strict=True):
                assert torch.equal(a, b), (scheme, n, r, c)
        # The column form needs K x n >= 256 (C x the rank in whole 8-wide vectors):
        # 16 channels at rank 8 stay direct, 32 take it.
        if "avx2" in _isas():
            monkeypatch.setenv("FUSENAS_CPU_ISA", "avx2")
            small, large = outputs("spatial", 128, 8, 16), outputs("spatial", 128, 8, 32)
            assert all(torch.equal(a, b) for a, b in zip(small[None], small["0"], strict=True))
            assert not torch.equal(large[None][1], large["0"][1])  # the kept intermediate
            assert torch.equal(large[None][1], large["1"][1])
    finally:
        torch.set_num_threads(threads)


@needs_ext
def test_workspace_bytes_count_winograd(monkeypatch):
    """Where the Winograd forms run, workspace_bytes counts their transformed factors and
    per-thread buffers (forward and backward): more than the direct forms' at the same
    shape, and the same as them where the rules keep the direct forms."""
    x = torch.randn(128, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    w1, w2 = _factors("spatial", 64, 16, 64, 3, 3)
    small = x[:1]

    def sizes(t):
        return [workspace_bytes(t, w1, w2, scheme="spatial", padding=1, backward=b)
                for b in (False, True)]  # fmt: skip

    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the memory rule counts per-thread buffers
    try:
        monkeypatch.delenv("FUSENAS_LOWRANK_WINOGRAD", raising=False)
        wino, wino_small = sizes(x), sizes(small)
        monkeypatch.setenv("FUSENAS_LOWRANK_WINOGRAD", "0")
        direct, direct_small = sizes(x), sizes(small)
    finally:
        torch.set_num_threads(threads)
    assert all(a > b for a, b in zip(wino, direct, strict=True))
    assert wino_small == direct_small  # batch 1: the memory rule keeps the direct forms


@needs_ext
def test_vec8_kernels_where_the_last_rank_vector_is_half_empty(monkeypatch):
    """On an AVX-512 host FUSENAS_LOWRANK_VEC8=1 runs the pixel-major path on the 8-wide
    avx512-ymm kernels (ranks rounded to 8: the workspace of FUSENAS_CPU_ISA=avx2) and =0 on the
    16-wide ones; by default a host whose AVX-512 is double-pumped (Zen 4) takes the 8-wide
    kernels for ranks whose last 16-wide vector is at most half full (19, not 29), other
    hosts never. The results match the reference either way."""
    info = _native.cpu().build_info()
    if info["hardware_isa"] != "avx512":
        pytest.skip("needs an AVX-512 host")
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")

    def run(rank, **env):
        for k in ("FUSENAS_LOWRANK_VEC8", "FUSENAS_CPU_ISA"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        x, w1, w2, b, _ = _case((2, 32, 9, 9, rank, 32, 3, 1, 1, 1), "channel", True, torch.float32)
        y = lowrank_conv2d(x, w1, w2, b, scheme="channel", padding=1)
        _close(y, lowrank_conv2d_reference(x, w1, w2, b, "channel", (1, 1), (1, 1), (1, 1), None,
                                           "none"), torch.float32)  # fmt: skip
        return workspace_bytes(x, w1, w2, scheme="channel", padding=1)

    for rank, half_empty in ((19, True), (29, False)):
        narrow, wide = run(rank, FUSENAS_CPU_ISA="avx2"), run(rank, FUSENAS_CPU_ISA="avx512")
        assert run(rank, FUSENAS_LOWRANK_VEC8="1") == narrow
        assert run(rank, FUSENAS_LOWRANK_VEC8="0") == wide
        if half_empty:
            assert narrow < wide  # 24 rank columns against 32
        takes_narrow = half_empty and info["avx512_double_pumped"]
        assert run(rank) == (narrow if takes_narrow else wide), rank


@needs_ext
def test_workspace_bytes_follow_the_path(monkeypatch):
    """workspace_bytes reports the buffers of the path a call takes: channels_last float32
    forwards and backwards size the pixel-major path's, everything else the plane path's
    (the same for both layouts), and the plane forward's output tile is 64 channels."""
    x, w1, w2, _, _ = _case((4, 32, 16, 16, 24, 32, 3, 1, 1, 1), "channel", True, torch.float32)
    args = dict(scheme="channel", padding=1)

    def sizes():
        return [workspace_bytes(t, w1, w2, backward=b, **args)
                for b in (False, True) for t in (x, x.contiguous())]  # fmt: skip

    pixel = sizes()
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "0")
    planes = sizes()
    assert all(v > 0 for v in pixel + planes)
    assert planes[0] == planes[1] and planes[2] == planes[3]
    assert pixel[1] == planes[1] and pixel[3] == planes[3]
    assert pixel[0] != planes[0] and pixel[2] != planes[2]
    # 256 outputs: the Y tile still holds 64, so only the bias's float32 copy grows.
    narrow = workspace_bytes(x.contiguous(), w1, torch.randn(64, 24, 1, 1), **args)
    wide = workspace_bytes(x.contiguous(), w1, torch.randn(256, 24, 1, 1), **args)
    assert wide - narrow == 4 * (256 - 64)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_wide_output_in_channel_blocks(isa, monkeypatch):
    """The plane path's second factor runs 64 output channels at a time: 130 outputs
    (two whole blocks and a 2-channel one) in both layouts and dtypes, epilogue included."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "0")
    for i, (scheme, cl, dtype) in enumerate(
        itertools.product(["channel", "spatial"], [False, True], [torch.float32, torch.bfloat16])
    ):
        x, w1, w2, bias, (s, p, d) = _case((2, 6, 7, 9, 5, 130, 3, 1, 1, 1), scheme, cl, dtype,
                                           seed=i)  # fmt: skip
        y0 = _ref(x.double(), w1.double(), w2.double(), bias.double(), scheme, s, p, d)
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d)
        assert y.is_contiguous(memory_format=_format(x))
        _close(y, y0, dtype)
        if dtype == torch.float32:
            res = torch.randn(y0.shape, generator=torch.Generator().manual_seed(i))
            res = res.contiguous(memory_format=_format(x))
            y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                               residual=res, activation="relu")  # fmt: skip
            _close(y, torch.relu(y0 + res.double()), dtype)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_channels_last_pixel_major_backward_matches_reference(isa, scheme, monkeypatch):
    """channels_last float32 backwards take the pixel-major path like the forward
    (FUSENAS_LOWRANK_NHWC=0 forces the plane path): every gradient mask, from a kept
    intermediate (channels_last as the forward keeps it, or contiguous) and recomputing
    it, both paths against the float64 reference. The last
    shape (240 -> 56 channels, all gradients): the first factor's 9 x 240 B rows exceed
    one block of IndGemm rows (AVX2 and AVX-512), in column panels of unequal widths."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    masks = [[True, True, True, True], [True, False, False, True], [False, True, False, False],
             [False, False, True, True], [False, True, True, False]]  # fmt: skip
    extra = [(3, 16, 8, 8, 20, 32, 3, 1, 1, 1), (5, 32, 7, 7, 16, 16, 3, 1, 1, 1),
             (2, 240, 5, 4, 40, 56, 3, 1, 1, 1)]  # fmt: skip
    assert len(SHAPES + extra) % len(masks) == 1  # the last shape gets masks[0]
    for i, shape in enumerate(SHAPES + extra):
        x, w1, w2, _, (s, p, d) = _case(shape, scheme, True, torch.float32, seed=i)
        geo = (scheme, [s, s], [p, p], [d, d])
        y, t = lowrank_conv2d_with_intermediate_reference(x, w1, w2, None, *geo)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(i))
        go = go.contiguous(memory_format=torch.channels_last)
        mask = masks[i % len(masks)]
        want = lowrank_conv2d_backward_reference(
            go.double(), x.double(), w1.double(), w2.double(), *geo, mask
        )
        assert t.is_contiguous(memory_format=_format(x))
        for env, kept in itertools.product("10", [t, t.contiguous(), None]):
            monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", env)
            got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask, kept)
            for g_, w_, m in zip(got, want, mask, strict=True):
                if m:
                    _close(g_, w_, torch.float32)
            if mask[0]:
                assert got[0].is_contiguous(memory_format=torch.channels_last)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_padding_taps_skipped_by_pixel_groups(isa, scheme, monkeypatch):
    """The pixel-major IndGemms regroup a tile's pixels by their padding taps (interior,
    borders, corners; several small images per tile) and skip the taps that read zeros
    for a whole micro-tile, writing each pixel's row through the regrouped order: the
    forward (with the residual + ReLU epilogue) and every gradient against the float64
    reference, on images small enough that padding taps are 10-60% of all, 3 x 3 and
    5 x 5 kernels, stride and dilation 2, 8- and 16-wide ranks."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    shapes = [(12, 48, 7, 7, 20, 40, 3, 1, 1, 1), (9, 32, 7, 5, 30, 48, 3, 1, 1, 1),
              (5, 24, 6, 9, 17, 16, 3, 2, 2, 2), (3, 40, 5, 5, 33, 24, 5, 1, 2, 1)]  # fmt: skip
    for i, shape in enumerate(shapes):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, True, torch.float32, seed=40 + i)
        geo = (scheme, [s, s], [p, p], [d, d])
        y0 = _ref(x.double(), w1.double(), w2.double(), bias.double(), scheme, s, p, d)
        res = torch.randn(y0.shape, generator=torch.Generator().manual_seed(i))
        res = res.contiguous(memory_format=torch.channels_last)
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                           residual=res, activation="relu")  # fmt: skip
        _close(y, torch.relu(y0 + res.double()), torch.float32)
        go = torch.randn(y0.shape, generator=torch.Generator().manual_seed(100 + i))
        go = go.contiguous(memory_format=torch.channels_last)
        mask = [True, True, True, True]
        want = lowrank_conv2d_backward_reference(
            go.double(), x.double(), w1.double(), w2.double(), *geo, mask
        )
        got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask, None)
        for g_, w_ in zip(got, want, strict=True):
            _close(g_, w_, torch.float32)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_bias_gradient_summed_in_the_kernel(isa, monkeypatch):
    """grad_bias comes from the backward kernel's tiles of grad_out (both paths, both
    layouts, bfloat16, several tiles and threads) and equals grad_out's sum; requested
    alone, or on an empty batch, it is torch's sum."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for scheme, cl, env, dtype in [
            ("channel", False, "0", torch.float32), ("spatial", True, "0", torch.float32),
            ("channel", True, "1", torch.float32), ("spatial", True, "1", torch.float32),
            ("channel", False, "0", torch.bfloat16), ("spatial", True, "0", torch.bfloat16),
        ]:  # fmt: skip
            monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", env)
            x, w1, w2, _, (s, p, d) = _case((5, 16, 23, 21, 6, 16, 3, 1, 1, 1), scheme, cl, dtype)
            geo = (scheme, [s, s], [p, p], [d, d])
            go = torch.randn(5, 16, 23, 21, generator=torch.Generator().manual_seed(3))
            go = go.to(dtype).contiguous(memory_format=_format(x))
            want = go.double().sum(dim=(0, 2, 3))
            for mask in ([True, False, False, True], [False, False, True, True],
                         [False, True, False, True], [False, False, False, True]):  # fmt: skip
                gb = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask)[3]
                assert gb.dtype == dtype and gb.shape == (16,)
                _close(gb, want, dtype)
        empty = torch.ops.fusenas.lowrank_conv2d_backward(
            go[:0], x[:0], w1, w2, *geo, [True, False, False, True]
        )
        assert torch.equal(empty[3], torch.zeros(16, dtype=go.dtype))
    finally:
        torch.set_num_threads(old)


@needs_ext
def test_channels_last_backward_path_rule(monkeypatch):
    """The backward takes the pixel-major path exactly where the forward does (another
    summation order than the plane path: grad_x differs in its last bits), and its
    weight gradients are the same bits on every call."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for c, r, nhwc in [(32, 24, True), (16, 2, False)]:
            x, w1, w2, _, _ = _case((6, c, 9, 9, r, c, 3, 1, 1, 1), "channel", True,
                                    torch.float32, seed=c)  # fmt: skip
            geo = ("channel", [1, 1], [1, 1], [1, 1])
            go = torch.randn(6, c, 9, 9, generator=torch.Generator().manual_seed(r))
            go = go.contiguous(memory_format=torch.channels_last)

            def grads(env, args=(go, x, w1, w2, *geo, [True] * 4)):
                if env is None:
                    monkeypatch.delenv("FUSENAS_LOWRANK_NHWC", raising=False)
                else:
                    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", env)
                return torch.ops.fusenas.lowrank_conv2d_backward(*args)

            auto, planes = grads(None), grads("0")
            assert torch.equal(auto[0], planes[0]) != nhwc
            for a, b in zip(auto, planes, strict=True):
                _close(a, b.double(), torch.float32)
            for a, b in zip(auto, grads(None), strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------- epilogue ----


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_epilogue_matches_reference(isa, dtype, monkeypatch):
    """activation(conv + bias + residual): residual in either layout, with and without ReLU."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for i, (shape, cl, scheme) in enumerate(
        itertools.product(SHAPES[:6] + SHAPES[-2:], [False, True], ["channel", "spatial"])
    ):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, dtype, seed=i)
        y0 = _ref(x.double(), w1.double(), w2.double(), bias.double(), scheme, s, p, d)
        res = torch.randn(y0.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        if i % 3 == 1:  # the other layout than the output's: read through a copy
            res = res.contiguous(memory_format=torch.channels_last)
        for residual, act in [(res, "relu"), (res, "none"), (None, "relu")]:
            y = lowrank_conv2d(
                x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                residual=residual, activation=act,
            )  # fmt: skip
            want = y0 + (0 if residual is None else residual.double())
            want = torch.relu(want) if act == "relu" else want
            assert y.dtype == dtype and y.is_contiguous(memory_format=_format(x))
            _close(y, want, dtype)
            if act == "relu":
                assert (y >= 0).all()


def test_epilogue_gradients():
    g = torch.Generator().manual_seed(3)
    x, w1, w2, bias = (
        torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 3, 1, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 1, 3, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    res = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, w1, w2, bias, res)]

    def fn(x, w1, w2, b, r):
        return lowrank_conv2d(
            x, w1, w2, b, scheme="spatial", padding=1, residual=r, activation="relu"
        )

    assert torch.autograd.gradcheck(fn, args)


@needs_ext
def test_epilogue_native_backward_matches_reference():
    """float32 through the native kernels: gradients of every input, residual included."""
    g = torch.Generator().manual_seed(4)
    base = [
        torch.randn(2, 6, 9, 8, generator=g), torch.randn(4, 6, 3, 3, generator=g),
        torch.randn(5, 4, 1, 1, generator=g), torch.randn(5, generator=g),
        torch.randn(2, 5, 9, 8, generator=g),
    ]  # fmt: skip
    go = torch.randn(2, 5, 9, 8, generator=g)
    grads = []
    for dtype in (torch.float32, torch.float64):
        ts = [t.detach().to(dtype).requires_grad_() for t in base]
        y = lowrank_conv2d(*ts[:4], scheme="channel", padding=1, residual=ts[4], activation="relu")
        y.backward(go.to(dtype))
        grads.append([t.grad for t in ts])
    for got, want in zip(*grads, strict=True):
        _close(got, want, torch.float32)


def test_epilogue_opcheck_and_compile():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 6, generator=g)
    w1, w2 = _factors("spatial", 4, 2, 3, 3, 3)
    bias, res = torch.randn(3, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    torch.library.opcheck(
        torch.ops.fusenas.lowrank_conv2d.default,
        (x, w1, w2, bias, "spatial", [1, 1], [1, 1], [1, 1], res, "relu"),
    )

    def fn(x, r):
        return lowrank_conv2d(
            x, w1, w2, bias, scheme="spatial", padding=1, residual=r, activation="relu"
        )

    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x, res), fn(x, res))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"activation": "gelu"}, ValueError, "activation"),
        ({"residual": torch.zeros(1, 3, 6, 5)}, ValueError, "residual: expected the output's"),
        ({"residual": torch.zeros(1, 3, 6, 6, dtype=torch.float64)}, TypeError, "residual"),
        ({"residual": [0.0]}, TypeError, "residual"),
    ],
)
def test_epilogue_bad_input(kwargs, err, match):
    x = torch.randn(1, 4, 6, 6)
    w1, w2 = _factors("spatial", 4, 2, 3, 3, 3)
    with pytest.raises(err, match=match):
        lowrank_conv2d(x, w1, w2, None, scheme="spatial", padding=1, **kwargs)


# ------------------------------------------------- kept intermediate (training) ----


def _first_factor(x, w1, scheme, s, p, d):
    (s1, p1, d1), _ = factor_params(scheme, (s, s), (p, p), (d, d))
    return F.conv2d(x, w1, None, s1, p1, d1)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_intermediate_is_the_first_factor(isa, scheme, dtype, monkeypatch):
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for shape, cl in itertools.product(SHAPES, [False, True]):
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, dtype)
        args = (x, w1, w2, bias, scheme, [s, s], [p, p], [d, d])
        y, t = torch.ops.fusenas.lowrank_conv2d_with_intermediate(*args)
        # channels_last float32 without a kept t takes the pixel-major path: the same
        # sums in another order. Everything else runs the same kernel, bit for bit.
        torch.testing.assert_close(y, torch.ops.fusenas.lowrank_conv2d(*args), rtol=0, atol=0)
        expected = _first_factor(x.double(), w1.double(), scheme, s, p, d)
        # t in x's memory format (channels_last: the pixel-major kernels' own order)
        assert t.dtype == torch.float32 and t.shape == expected.shape
        assert t.is_contiguous(memory_format=_format(x))
        _close(t, expected, dtype)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_backward_from_kept_intermediate_equals_recompute(isa, scheme, monkeypatch):
    """Gradients from the forward's t match the recomputing backward."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for i, (shape, cl) in enumerate(itertools.product(SHAPES, [False, True])):
        dtype = torch.bfloat16 if i % 4 == 3 else torch.float32
        x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, dtype, seed=i)
        geo = (scheme, [s, s], [p, p], [d, d])
        y, t = torch.ops.fusenas.lowrank_conv2d_with_intermediate(x, w1, w2, bias, *geo)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        go = go.contiguous(memory_format=_format(x))
        mask = [True, True, True, True] if i % 2 else [False, False, True, False]
        kept = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask, t)
        again = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask)
        for a, b in zip(kept, again, strict=True):
            # Same sums, but threads take tiles dynamically: the per-thread partial sums
            # (and a bfloat16 rounding of them) may differ between the two calls.
            assert a.shape == b.shape
            if b.numel():
                _close(a, b.double(), dtype)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("save", [True, False])
def test_training_keeps_the_intermediate_only_when_asked(scheme, save):
    x, w1, w2, bias, (s, p, d) = _case(SHAPES[2], scheme, False, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, bias)]
    y = lowrank_conv2d(*leaves, scheme=scheme, stride=s, padding=p, dilation=d,
                       save_intermediate=save)  # fmt: skip
    assert _kept(y) == save
    y.square().sum().backward()
    ref = [t.double().requires_grad_() for t in (x, w1, w2, bias)]
    _ref(*ref, scheme, s, p, d).square().sum().backward()
    for a, b in zip(leaves, ref, strict=True):
        _close(a.grad, b.grad, torch.float32)


@needs_ext
@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("cl", [True, False])
def test_eager_training_path_matches_registered_op(save, cl):
    """Eager CPU training calls run the kernels behind _EagerCPUTraining, not the
    dispatcher; outputs and every gradient (residual + ReLU epilogue included)
    must equal the registered op's, whose autograd the same _backward drives."""
    x, w1, w2, bias, (s, p, d) = _case(SHAPES[2], "channel", cl, torch.float32)
    geo = ("channel", [s, s], [p, p], [d, d])
    y0 = lowrank_conv2d(x, w1, w2, bias, scheme="channel", stride=s, padding=p, dilation=d)
    res = torch.randn(y0.shape).contiguous(memory_format=_format(x))
    go = torch.randn(y0.shape, generator=torch.Generator().manual_seed(3))

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w2, bias, res)]
        y = fn(*leaves)
        y.backward(go)
        return y, [t.grad for t in leaves]

    def eager(x, w1, w2, bias, res):
        y = lowrank_conv2d(x, w1, w2, bias, scheme="channel", stride=s, padding=p, dilation=d,
                           residual=res, activation="relu", save_intermediate=save)  # fmt: skip
        assert "EagerCPUTraining" in type(y.grad_fn).__name__
        assert _kept(y) == save
        return y

    def registered(x, w1, w2, bias, res):
        op = torch.ops.fusenas.lowrank_conv2d_with_intermediate if save else None
        if op is None:
            return torch.ops.fusenas.lowrank_conv2d(x, w1, w2, bias, *geo, res, "relu")
        return op(x, w1, w2, bias, *geo, res, "relu")[0]

    y_e, g_e = run(eager)
    y_r, g_r = run(registered)
    torch.testing.assert_close(y_e, y_r, rtol=0, atol=0)
    for a, b in zip(g_e, g_r, strict=True):
        _close(a, b.double(), torch.float32)  # threads may split the sums differently


@needs_ext
def test_module_weights_take_the_eager_paths(monkeypatch):
    """A module's weights are nn.Parameters: they take the eager paths like plain
    tensors (through the dispatcher, a LowRankConv2d call at batch 1 on 1 thread cost
    43 us against 26 us), while another tensor subclass still goes through the
    registered op."""
    from fusenas.nn import LowRankConv2d

    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    layer = LowRankConv2d.from_conv(conv, "channel", rank=3)
    assert isinstance(layer.weight1, torch.nn.Parameter)
    x = torch.randn(2, 8, 6, 6)
    y = layer(x)
    assert "EagerCPUTraining" in type(y.grad_fn).__name__
    y.sum().backward()
    assert layer.weight1.grad is not None and layer.weight2.grad is not None

    def no_dispatcher(*args, **kwargs):
        raise AssertionError("the registered op ran")

    monkeypatch.setattr(torch.ops.fusenas.lowrank_conv2d, "default", no_dispatcher)
    with torch.no_grad():
        layer(x)  # eager inference: straight to the kernel

    class Tagged(torch.Tensor):  # any other subclass may override torch functions
        pass

    assert _native.eager_cpu((x, layer.weight1, None))
    assert not _native.eager_cpu((x.as_subclass(Tagged), layer.weight1))


@needs_ext
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_jit_trace_records_the_registered_op():
    """Under torch.jit.trace the eager shortcuts step aside: the trace must hold
    fusenas::lowrank_conv2d (a kernel called behind its back would be baked into the
    trace as a constant) and give the op's result on another input."""
    w1, w2 = _factors("channel", 8, 4, 8, 3, 3)

    def f(x):
        return lowrank_conv2d(x, w1, w2, scheme="channel", padding=1)

    with torch.no_grad():
        traced = torch.jit.trace(f, (torch.randn(2, 8, 6, 6),))
        assert "fusenas::lowrank_conv2d" in [n.kind() for n in traced.graph.nodes()]
        other = torch.randn(2, 8, 6, 6)
        torch.testing.assert_close(traced(other), f(other))


def test_backward_allocates_no_gradient_for_the_kept_intermediate():
    """t is an output autograd never differentiates: its gradient must not be
    materialised as a zero tensor of t's size (N x r x Ho x W floats per step)."""
    w1, w2 = _factors("spatial", 64, 5, 8, 3, 3)
    x = torch.randn(3, 64, 7, 7, requires_grad=True)
    y = lowrank_conv2d(x, w1.requires_grad_(), w2.requires_grad_(), scheme="spatial",
                       padding=1, save_intermediate=True)  # fmt: skip
    assert _kept(y)
    t_bytes = 3 * 5 * 7 * 7 * 4  # no other tensor of the step has this size
    with torch.profiler.profile(profile_memory=True) as prof:
        y.sum().backward()
    sizes = {e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0}
    assert t_bytes not in sizes, sorted(sizes)
    assert x.grad is not None and w1.grad is not None and w2.grad is not None


@pytest.mark.parametrize("cl", [True, False])
def test_backward_releases_kept_intermediate_before_grad_x(cl, monkeypatch):
    """As the two-conv sequence frees its t before grad_x exists, the fused backward
    computes grad_w2 (the only gradient that reads t) first and drops t: the call that
    allocates grad_x gets no t, and no reference to t is left by then."""
    w1, w2 = _factors("channel", 24, 5, 8, 3, 3)
    x = torch.randn(3, 24, 9, 7)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    leaves = [x.requires_grad_(), w1.requires_grad_(), w2.requires_grad_()]
    native = torch.ops.fusenas.lowrank_conv2d_backward
    calls, refs = [], []

    def spy(*args):  # records (mask, t given, whether each earlier t is gone)
        mask, t = args[8], args[9]
        calls.append((list(mask), t is not None, [r() is None for r in refs]))
        if t is not None:
            refs.append(weakref.ref(t))
        return native(*args)

    # Eager CPU calls reach the CPU kernel directly (_EagerCPUTraining), others
    # through torch.ops: spy on both.
    monkeypatch.setattr(torch.ops.fusenas, "lowrank_conv2d_backward", spy)
    monkeypatch.setattr(lowrank_conv_module, "_lowrank_conv2d_backward_cpu", spy)
    y = lowrank_conv2d(*leaves, scheme="channel", padding=1, save_intermediate=True)
    assert _kept(y)
    y.backward(torch.ones_like(y))
    assert [c[:2] for c in calls] == [([False, False, True, False], True),
                                      ([True, True, False, False], False)]  # fmt: skip
    assert calls[1][2] == [True]  # t was gone when grad_x was computed
    assert all(t.grad is not None for t in leaves)


def test_retained_graph_recomputes_released_intermediate():
    """retain_graph=True: the second backward finds t released and recomputes it;
    both give the reference gradients."""
    x, w1, w2, bias, (s, p, d) = _case(SHAPES[2], "channel", True, torch.float32)
    leaves = [t.detach().requires_grad_() for t in (x, w1, w2, bias)]
    y = lowrank_conv2d(*leaves, scheme="channel", stride=s, padding=p, dilation=d,
                       save_intermediate=True)  # fmt: skip
    assert _kept(y)
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    first = torch.autograd.grad(y, leaves, go, retain_graph=True)
    second = torch.autograd.grad(y, leaves, go)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w1, w2, bias)]
    ref = _ref(*ref_leaves, "channel", s, p, d)
    want = torch.autograd.grad(ref, ref_leaves, go.double())
    for a, b, w in zip(first, second, want, strict=True):
        _close(a, w, torch.float32)
        _close(b, w, torch.float32)


@pytest.mark.parametrize(
    "c, scheme, kept",
    [(16, "spatial", False), (16, "channel", True), (32, "spatial", False), (64, "spatial", True)],
)
def test_intermediate_kept_by_default_only_when_costly_to_recompute(c, scheme, kept):
    w1, w2 = _factors(scheme, c, 4, 8, 3, 3)
    x = torch.randn(2, c, 6, 6)
    y = lowrank_conv2d(x, w1, w2.requires_grad_(), scheme=scheme, padding=1)
    assert _kept(y) == kept
    assert (c * (9 if scheme == "channel" else 3) >= KEEP_INTERMEDIATE_MIN_DEPTH) == kept


def test_frozen_w2_keeps_nothing_even_when_asked():
    x, w1, w2, bias, (s, p, d) = _case(SHAPES[0], "channel", False, torch.float32)
    w1.requires_grad_()  # w2 frozen: grad_w2 is not wanted, t would be dead weight
    kw = {"scheme": "channel", "stride": s, "padding": p, "dilation": d, "save_intermediate": True}
    y = lowrank_conv2d(x, w1, w2, bias, **kw)
    assert not _kept(y)
    y = lowrank_conv2d(x, w1, w2.requires_grad_(), bias, **kw)  # the same call, w2 trained
    assert _kept(y)


@pytest.mark.parametrize(
    "scheme, shape, cl", [("channel", SHAPES[2], True), ("spatial", SHAPES[5], False)]
)
def test_kept_intermediate_opcheck_and_compile(scheme, shape, cl):
    x, w1, w2, bias, (s, p, d) = _case(shape, scheme, cl, torch.float32)
    geo = (scheme, [s, s], [p, p], [d, d])
    x.requires_grad_()
    w2.requires_grad_()
    torch.library.opcheck(
        torch.ops.fusenas.lowrank_conv2d_with_intermediate.default, (x, w1, w2, bias, *geo)
    )
    y, t = torch.ops.fusenas.lowrank_conv2d_with_intermediate(
        x.detach(), w1, w2.detach(), bias, *geo
    )
    bwd = (torch.randn(y.shape).contiguous(memory_format=_format(x)), x.detach(), w1,
           w2.detach(), *geo, [True, True, True, False], t)  # fmt: skip
    torch.library.opcheck(torch.ops.fusenas.lowrank_conv2d_backward.default, bwd)

    def f(x, w1, w2, bias):
        y = lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=p, dilation=d,
                           save_intermediate=True)  # fmt: skip
        assert torch.compiler.is_compiling() or _kept(y)
        return torch.relu(y).sum()

    a = [t.detach().clone().requires_grad_() for t in (x, w1, w2, bias)]
    b = [t.detach().clone().requires_grad_() for t in (x, w1, w2, bias)]
    out_c, out_e = torch.compile(f, fullgraph=True, backend="inductor")(*a), f(*b)
    torch.testing.assert_close(out_c, out_e)
    out_c.backward()
    out_e.backward()
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta.grad, tb.grad)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_gradcheck_float64_with_intermediate(scheme):
    x, w1, w2, bias, (s, p, d) = _case((1, 3, 6, 5, 2, 4, 3, 1, 1, 1), scheme, False,
                                       torch.float64)  # fmt: skip

    def f(x, w1, w2, bias):
        y, _ = torch.ops.fusenas.lowrank_conv2d_with_intermediate(
            x, w1, w2, bias, scheme, [s, s], [p, p], [d, d]
        )
        return y

    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, bias)]
    assert torch.autograd.gradcheck(f, leaves)


def test_bad_intermediate():
    a = _good()
    go = torch.randn(2, 5, 8, 8)
    args = (go, a["x"], a["w1"], a["w2"], "channel", [1, 1], [1, 1], [1, 1], [True] * 4)
    with pytest.raises(ValueError, match=r"intermediate: expected the first factor's output"):
        torch.ops.fusenas.lowrank_conv2d_backward(*args, torch.zeros(2, 3, 8, 7))
    with pytest.raises(TypeError, match="intermediate: expected a floating-point"):
        t = torch.zeros(2, a["w1"].shape[0], 8, 8, dtype=torch.int32)
        torch.ops.fusenas.lowrank_conv2d_backward(*args, t)


@needs_ext
def test_native_backward_is_deterministic():
    """Threads sum fixed sets of tiles: the same call gives the same gradient bits."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, w1, w2, _, (s, p, d) = _case((6, 8, 9, 9, 5, 7, 3, 1, 1, 1), "spatial", False,
                                        torch.float32)  # fmt: skip
        geo = ("spatial", [s, s], [p, p], [d, d])
        go = torch.randn(6, 7, 9, 9, generator=torch.Generator().manual_seed(3))
        first = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, [True] * 4)
        for _ in range(5):
            again = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, [True] * 4)
            for a, b in zip(first, again, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
def test_pixel_major_backward_weight_sums_over_threads(isa, monkeypatch):
    """The pixel-major backward over several tiles at 2 threads: small factors sum into
    one copy per thread (folded at the end), large ones into one set the threads share
    (rows split between them, tiles in rounds). Both against the float64 reference, from
    a kept intermediate and recomputing it, and the same bits on every call. 1200 output
    pixels: three tiles of 512. The third shape's factors (9 x 256 rows of 128 columns)
    are packed by both threads; its forward is checked too. Shared sums of an unpadded
    rank (120 on 8-wide kernels, 32 on all) accumulate in the gradients themselves and
    are reordered at the end: the last shape runs every subset of the weight gradients."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # (n, c, h, w, rank, nout, k, stride, padding, dilation): per-thread copies of
        # 8 -> 8 channel factors are below the rank-6 intermediate; of 128 -> 24 far above.
        for i, shape in enumerate([(3, 8, 20, 20, 6, 8, 3, 1, 1, 1),
                                   (3, 128, 20, 20, 4, 24, 3, 1, 1, 1),
                                   (2, 256, 12, 12, 120, 64, 3, 1, 1, 1),
                                   (3, 64, 16, 16, 32, 48, 3, 1, 1, 1)]):  # fmt: skip
            masks = [[True, True, True, False]]
            if i == 3:
                masks += [[False, True, False, False], [False, False, True, True],
                          [True, False, True, False], [True, True, False, False]]  # fmt: skip
            for scheme, mask in itertools.product(("channel", "spatial"), masks):
                x, w1, w2, _, (s, p, d) = _case(shape, scheme, True, torch.float32, seed=i)
                geo = (scheme, [s, s], [p, p], [d, d])
                y, t = lowrank_conv2d_with_intermediate_reference(x, w1, w2, None, *geo)
                fwd = lowrank_conv2d(x, w1, w2, scheme=scheme, stride=s, padding=p, dilation=d)
                _close(fwd, y, torch.float32)
                go = torch.randn(y.shape, generator=torch.Generator().manual_seed(i))
                go = go.contiguous(memory_format=torch.channels_last)
                want = lowrank_conv2d_backward_reference(
                    go.double(), x.double(), w1.double(), w2.double(), *geo, mask
                )
                for kept in (t, None):
                    args = (go, x, w1, w2, *geo, mask, kept)
                    got = torch.ops.fusenas.lowrank_conv2d_backward(*args)
                    for g_, w_, wanted in zip(got, want, mask, strict=True):
                        if wanted:
                            _close(g_, w_, torch.float32)
                    again = torch.ops.fusenas.lowrank_conv2d_backward(*args)
                    for a, b in zip(got, again, strict=True):
                        assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_plane_backward_with_halved_tiles(scheme):
    """128 channels at 28 x 28 (NCHW, the plane path): a thread's tile buffers at 512
    pixels exceed 1 MiB, so the backward runs 9-row tiles instead of 18. All gradients
    against the float64 reference at 2 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, w1, w2, _, (s, p, d) = _case((4, 128, 28, 28, 8, 128, 3, 1, 1, 1), scheme, False,
                                        torch.float32)  # fmt: skip
        geo = (scheme, [s, s], [p, p], [d, d])
        go = torch.randn(4, 128, 28, 28, generator=torch.Generator().manual_seed(5))
        mask = [True, True, True, False]
        want = lowrank_conv2d_backward_reference(
            go.double(), x.double(), w1.double(), w2.double(), *geo, mask
        )
        got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask)
        for g_, w_ in zip(got[:3], want[:3], strict=True):
            _close(g_, w_, torch.float32)
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("rank", [4, 7, 16])
def test_plane_backward_grad_w2_orientations(scheme, isa, rank, monkeypatch):
    """The plane backward computes grad_w2 rank by Nout (ranks 4 and 7 into 32
    outputs: fewer multiply-adds than padding the rank to a vector) or Nout by
    padded rank (rank 16). Both against the float64 reference, stride 1 and 2,
    2 threads, NCHW (the plane path)."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for stride in (1, 2):
            x, w1, w2, _, (s, p, d) = _case((3, 8, 13, 11, rank, 32, 3, stride, 1, 1), scheme,
                                            False, torch.float32)  # fmt: skip
            geo = (scheme, [s, s], [p, p], [d, d])
            y = lowrank_conv2d(x, w1, w2, None, scheme=scheme, stride=s, padding=p, dilation=d)
            go = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
            mask = [False, False, True, False]
            want = lowrank_conv2d_backward_reference(
                go.double(), x.double(), w1.double(), w2.double(), *geo, mask
            )
            got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask)
            _close(got[2], want[2], torch.float32)
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("isa", _isas())
def test_pixel_major_weight_gradients_in_both_orientations(scheme, isa, monkeypatch):
    """The pixel-major backward's weight-gradient PairGemms run channels x padded rank,
    or rank x channels where the rank pads to a vector and the channels do not (ranks
    5 and 12 with 16 and 32 channels; rank 16 and 24 channels keep the first form).
    channels_last float32 at 2 threads (private sums), strides 1 and 2, against the
    float64 reference."""
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    monkeypatch.setenv("FUSENAS_LOWRANK_NHWC", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # Batches large enough that the sums stay private (share_weight_sums).
        for n, c, r, nout, stride in ((6, 16, 5, 32, 1), (16, 32, 12, 16, 2), (6, 16, 16, 32, 1),
                                      (6, 24, 5, 32, 1), (6, 16, 12, 24, 1)):  # fmt: skip
            x, w1, w2, _, (s, p, d) = _case((n, c, 24, 23, r, nout, 3, stride, 1, 1), scheme,
                                            True, torch.float32)  # fmt: skip
            geo = (scheme, [s, s], [p, p], [d, d])
            y = lowrank_conv2d(x, w1, w2, None, scheme=scheme, stride=s, padding=p, dilation=d)
            go = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
            go = go.contiguous(memory_format=torch.channels_last)
            mask = [False, True, True, False]
            want = lowrank_conv2d_backward_reference(
                go.double(), x.double(), w1.double(), w2.double(), *geo, mask
            )
            got = torch.ops.fusenas.lowrank_conv2d_backward(go, x, w1, w2, *geo, mask)
            _close(got[1], want[1], torch.float32)
            _close(got[2], want[2], torch.float32)
    finally:
        torch.set_num_threads(old)


def test_cuda_path_setting(monkeypatch):
    from fusenas.ops.lowrank_conv_cuda import cuda_path

    monkeypatch.delenv("FUSENAS_LOWRANK_CUDA", raising=False)
    assert cuda_path() == "cudnn"
    monkeypatch.setenv("FUSENAS_LOWRANK_CUDA", " Fused ")
    assert cuda_path() == "fused"
    monkeypatch.setenv("FUSENAS_LOWRANK_CUDA", "triton")
    with pytest.raises(ValueError, match="FUSENAS_LOWRANK_CUDA: expected one of cudnn, fused"):
        cuda_path()

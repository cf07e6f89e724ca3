"""QuantLinear / QuantConv2d against float modules that use the dequantized weights."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn import QuantConv2d, QuantLinear
from fusenas.quant import dequantize, quantize_weight

BITS = [2, 3, 4, 8, "ternary"]


def _tol(dtype: torch.dtype) -> dict:
    return {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-4, "rtol": 1e-4}


# ---------------------------------------------------------------- QuantLinear


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size,symmetric", [(None, True), (32, True), (32, False)])
def test_linear_matches_dequantized(bits, group_size, symmetric):
    if bits == "ternary" and not symmetric:
        pytest.skip("ternary is symmetric only")
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = QuantLinear.from_float(lin, bits, group_size, symmetric)
    w = dequantize(q.packed)
    for shape in [(5, 96), (2, 3, 96), (96,), (1, 96)]:
        x = torch.randn(shape)
        torch.testing.assert_close(q(x), F.linear(x, w, lin.bias.detach()), **_tol(x.dtype))


def test_linear_odd_sizes_and_no_bias():
    torch.manual_seed(1)
    for k, n in [(1, 1), (7, 3), (130, 17), (257, 5)]:
        lin = nn.Linear(k, n, bias=False)
        q = QuantLinear.from_float(lin, 4, None)
        assert q.bias is None
        x = torch.randn(3, k)
        torch.testing.assert_close(q(x), x @ dequantize(q.packed).T, atol=1e-4, rtol=1e-4)


def test_linear_bfloat16_input_casts_bias():
    torch.manual_seed(2)
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_float(lin, 4, 32)
    x = torch.randn(4, 64)
    y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = F.linear(x.bfloat16().float(), dequantize(q.packed), lin.bias.detach())
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=2e-2)


def test_linear_float64_runs_reference():
    lin = nn.Linear(32, 8).double()
    q = QuantLinear.from_float(lin, 8, None)
    x = torch.randn(3, 32, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = q(x)
    assert y.dtype == torch.float64
    ref = F.linear(x, dequantize(q.packed, torch.float64), lin.bias.detach())
    torch.testing.assert_close(y, ref)


def test_linear_non_contiguous_input():
    torch.manual_seed(3)
    lin = nn.Linear(48, 16)
    q = QuantLinear.from_float(lin, 4, 16)
    base = torch.randn(48, 10)
    x = base.t()  # (10, 48), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(q(x), q(x.contiguous()))
    xs = torch.randn(6, 96)[:, ::2]
    torch.testing.assert_close(q(xs), q(xs.contiguous()))


def test_linear_gradient_flows_to_x():
    torch.manual_seed(4)
    lin = nn.Linear(64, 24)
    q = QuantLinear.from_float(lin, 4, 32)
    w = dequantize(q.packed)
    x1 = torch.randn(5, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(5, 24)
    (q(x1) * g).sum().backward()
    (F.linear(x2, w, lin.bias.detach()) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in q.parameters())


def test_compile_fullgraph():
    # One inductor compile covers both modules: QuantConv2d (im2col) -> QuantLinear.
    torch.manual_seed(5)
    model = nn.Sequential(
        QuantConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), 4, None),
        nn.ReLU(),
        nn.Flatten(),
        QuantLinear.from_float(nn.Linear(8 * 4 * 4, 10), 4, 32),
    )
    x = torch.randn(2, 3, 4, 4)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_linear_state_dict_round_trip_and_to():
    torch.manual_seed(6)
    q = QuantLinear.from_float(nn.Linear(64, 16), 3, 32, symmetric=False)
    sd = q.state_dict()
    assert set(sd) == {"codes", "scales", "zeros", "bias"}
    fresh = QuantLinear(64, 16, True, 3, 32, False)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 64)
    assert torch.equal(fresh(x), q(x))
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float32 and q.zeros.dtype == torch.float32
    assert q.bias.dtype == torch.bfloat16 and q.codes.dtype == torch.uint8
    assert torch.equal(q.scales, fresh.scales)  # no precision lost on the round trip


def test_linear_weight_bytes_and_repr():
    q = QuantLinear.from_float(nn.Linear(256, 8), 4, 128)
    assert q.weight_bytes() == 8 * 128 + 8 * 2 * 4  # codes + scales
    qa = QuantLinear.from_float(nn.Linear(256, 8), 4, 128, symmetric=False)
    assert qa.weight_bytes() == q.weight_bytes() + 8 * 2 * 4
    r = repr(QuantLinear.from_float(nn.Linear(20, 4), "ternary", None))
    assert "in_features=20" in r and "bits=ternary" in r and "per-channel" in r


def test_linear_from_packed():
    w = torch.randn(12, 32)
    pw = quantize_weight(w, 5, 16)
    q = QuantLinear.from_packed(pw)
    x = torch.randn(2, 32)
    torch.testing.assert_close(q(x), x @ dequantize(pw).T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "call,exc,name",
    [
        (lambda: QuantLinear.from_float(nn.Conv2d(2, 2, 1)), TypeError, "linear"),
        (lambda: QuantLinear.from_float(nn.Linear(32, 4), bits=9), ValueError, "bits"),
        (lambda: QuantLinear.from_float(nn.Linear(32, 4), bits="five"), ValueError, "bits"),
        (lambda: QuantLinear.from_float(nn.Linear(40, 4), group_size=32), ValueError, "group_size"),
        (lambda: QuantLinear.from_float(nn.Linear(64, 4), group_size=24), ValueError, "group_size"),
        (lambda: QuantLinear.from_float(nn.Linear(32, 4), "ternary", None, False), ValueError,
         "symmetric"),
        (lambda: QuantLinear(0, 4), ValueError, "in_features"),
        (lambda: QuantLinear(4, -1), ValueError, "out_features"),
        (lambda: QuantLinear(4, 4, bias="yes"), TypeError, "bias"),
        (lambda: QuantLinear(4, 4, symmetric=1), TypeError, "symmetric"),
        (lambda: QuantLinear.from_packed("w"), TypeError, "weight"),
        (lambda: QuantLinear.from_packed(quantize_weight(torch.randn(4, 32), 4, None),
                                         torch.zeros(5)), ValueError, "bias"),
    ],
)  # fmt: skip
def test_linear_bad_arguments(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_linear_bad_inputs():
    q = QuantLinear.from_float(nn.Linear(32, 4), 4, None)
    with pytest.raises(ValueError, match="x"):
        q(torch.randn(3, 31))
    with pytest.raises(TypeError, match="x"):
        q(torch.ones(3, 32, dtype=torch.int32))
    with pytest.raises(TypeError, match="x"):
        q([1.0] * 32)
    with pytest.raises(ValueError, match="x"):
        q(torch.tensor(1.0))


# ---------------------------------------------------------------- QuantConv2d

# (cin, cout, kernel, stride, padding, dilation, H, W, bias)
GEOMETRIES = [
    (3, 8, 1, 1, 0, 1, 5, 7, True),  # 1x1 direct GEMM
    (4, 6, 1, 2, 0, 1, 7, 6, False),  # 1x1 strided (subsample then GEMM)
    (4, 6, 1, (1, 2), 0, 1, 5, 5, True),
    (3, 5, 1, 1, 1, 1, 4, 4, True),  # 1x1 with padding -> im2col
    (3, 5, 1, 2, 1, 1, 5, 4, False),
    (3, 8, 3, 1, 1, 1, 8, 8, True),
    (5, 7, 3, 2, 1, 1, 9, 7, False),
    (2, 4, (3, 5), (2, 1), (1, 2), 1, 11, 9, True),  # non-square everything
    (3, 4, 3, 1, 2, 2, 10, 10, True),  # dilation
    (3, 4, (3, 2), 1, 0, (2, 3), 9, 12, False),
    (16, 32, 3, 1, 1, 1, 6, 6, True),  # K = 144
    (1, 3, 5, 3, 0, 1, 5, 5, True),  # output 1x1
    (6, 3, 3, 1, "same", 1, 7, 5, True),
    (3, 4, 4, 1, "same", 1, 6, 7, True),  # even kernel: asymmetric padding
    (3, 4, 2, 1, "same", 3, 6, 6, False),
    (3, 4, 3, 2, "valid", 1, 8, 9, True),
]


def _float_conv(geom):
    cin, cout, k, s, p, d, _, _, bias = geom
    return nn.Conv2d(cin, cout, k, s, p, d, bias=bias)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "-".join(map(str, g[:6])))
@pytest.mark.parametrize("bits", [4, "ternary"])
@pytest.mark.parametrize("dense_min_rows", [None, 1], ids=["kbit", "dense"])
def test_conv_matches_dequantized(geom, bits, dense_min_rows):
    # dense_min_rows=1: every call takes the large-batch path (dequantize + torch conv).
    torch.manual_seed(0)
    conv = _float_conv(geom)
    q = QuantConv2d.from_float(conv, bits, None)
    q.dense_min_rows = dense_min_rows
    w = q.dequantized_weight()
    x = torch.randn(2, geom[0], geom[6], geom[7])
    ref = conv._conv_forward(x, w, None if conv.bias is None else conv.bias.detach())
    y = q(x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    xl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(q(xl), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q(x[0]), ref[0], atol=1e-4, rtol=1e-4)  # unbatched


def test_conv_weight_layout():
    # K runs in (kh, kw, C) order: the packed weight is conv.weight.permute(0, 2, 3, 1).
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 4, (2, 3))
    q = QuantConv2d.from_float(conv, 8, None)
    w = conv.weight.detach().permute(0, 2, 3, 1).reshape(4, -1)
    torch.testing.assert_close(dequantize(q.packed), w, atol=0.02, rtol=0)
    torch.testing.assert_close(q.dequantized_weight(), conv.weight.detach(), atol=0.02, rtol=0)
    assert q.describe()["conv"]["weight_layout"] == "N,kh,kw,C"


def test_conv_grouped_scales_asymmetric_and_bfloat16():
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 8, 3, padding=1)  # K = 144 = 9 groups of 16
    q = QuantConv2d.from_float(conv, 3, 16, symmetric=False)
    assert q.group_size == 16 and q.zeros is not None
    w = q.dequantized_weight()
    x = torch.randn(2, 16, 5, 6)
    ref = F.conv2d(x, w, conv.bias.detach(), padding=1)
    torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref, atol=6e-2, rtol=3e-2)


def test_conv_gradient_flows_to_x():
    torch.manual_seed(2)
    for geom, dense_min_rows in itertools.product(
        (GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[6], GEOMETRIES[12]), (None, 1)
    ):
        conv = _float_conv(geom)
        q = QuantConv2d.from_float(conv, 4, None)
        q.dense_min_rows = dense_min_rows
        w = q.dequantized_weight()
        x1 = torch.randn(2, geom[0], geom[6], geom[7], requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        b = None if conv.bias is None else conv.bias.detach()
        y1, y2 = q(x1), conv._conv_forward(x2, w, b)
        g = torch.randn_like(y2)
        (y1 * g).sum().backward()
        (y2 * g).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_conv_description_round_trip_and_repr():
    for conv in (nn.Conv2d(3, 4, 4, padding="same"), nn.Conv2d(3, 4, 2, bias=False)):
        q = QuantConv2d.from_float(conv, 3, None, symmetric=False)
        fresh = QuantConv2d.from_description(q.describe())
        fresh.load_state_dict(q.state_dict())
        x = torch.randn(1, 3, 6, 7)
        assert torch.equal(fresh(x), q(x))
    conv = nn.Conv2d(3, 4, (3, 5), (2, 1), (1, 2), (1, 2))
    q = QuantConv2d.from_float(conv, 4, None)
    r = repr(q)
    assert "kernel_size=(3, 5)" in r and "stride=(2, 1)" in r and "bits=4" in r
    assert q.weight_bytes() == 4 * 64 + 4 * 4


@pytest.mark.parametrize(
    "call,exc,name",
    [
        (lambda: QuantConv2d.from_float(nn.Linear(2, 2)), TypeError, "conv"),
        (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3, groups=2)), ValueError, "conv"),
        (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3, groups=4)), ValueError, "conv"),
        (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")),
         ValueError, "conv"),
        (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3), group_size=32), ValueError,
         "group_size"),
        (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3), bits=1), ValueError, "bits"),
        (lambda: QuantConv2d(0, 4, 3), ValueError, "in_channels"),
        (lambda: QuantConv2d(4, 0, 3), ValueError, "out_channels"),
        (lambda: QuantConv2d(4, 4, 0), ValueError, "kernel_size"),
        (lambda: QuantConv2d(4, 4, (3, 3, 3)), ValueError, "kernel_size"),
        (lambda: QuantConv2d(4, 4, 3, stride=0), ValueError, "stride"),
        (lambda: QuantConv2d(4, 4, 3, padding=-1), ValueError, "padding"),
        (lambda: QuantConv2d(4, 4, 3, padding="full"), ValueError, "padding"),
        (lambda: QuantConv2d(4, 4, 3, stride=2, padding="same"), ValueError, "padding"),
        (lambda: QuantConv2d(4, 4, 3, dilation=0), ValueError, "dilation"),
    ],
)  # fmt: skip
def test_conv_bad_arguments(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_conv_bad_inputs():
    q = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), 4, None)
    with pytest.raises(ValueError, match="x"):
        q(torch.randn(2, 4, 8, 8))  # wrong channels
    with pytest.raises(ValueError, match="x"):
        q(torch.randn(2, 3, 8))  # not 3-D/4-D image
    with pytest.raises(ValueError, match="x"):
        q(torch.randn(1, 3, 2, 8))  # smaller than the kernel
    with pytest.raises(TypeError, match="x"):
        q(torch.ones(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="x"):
        q(None)

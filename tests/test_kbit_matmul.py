"""torch.ops.fusenas.kbit_matmul: native kernels against the reference, the
reference against a naive loop, torch.library contracts, and bad input."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import fusenas
from fusenas.ops import _native
from fusenas.ops._reference import kbit_matmul_reference
from fusenas.ops.kbit_matmul import kbit_matmul
from fusenas.quant.packed import quantize_weight

ALL_BITS = [2, 3, 4, 5, 6, 7, 8, "ternary"]
needs_ext = pytest.mark.skipif(_native.cpu() is None, reason="fusenas._C not built")


def _isas() -> list[str]:
    """Every CPU path this machine can run: scalar, avx2, avx512 (its AVX512-BF16
    kernels off: "avx512-nobf16") and avx512 with them where the CPU has them."""
    ext = _native.cpu()
    if ext is None:
        return []
    order = ["scalar", "avx2", "avx512-nobf16"]
    info = ext.build_info()
    isas = order[: order.index(info["hardware_isa"].replace("avx512", "avx512-nobf16")) + 1]
    return isas + (["avx512"] if info.get("avx512_bf16") else [])


def _use_isa(monkeypatch, isa: str) -> None:
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa.removesuffix("-nobf16"))
    monkeypatch.setenv("FUSENAS_CPU_BF16", "0" if isa.endswith("-nobf16") else "1")


def _ref(x, pw, bias):
    return kbit_matmul_reference(
        x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size
    )


def test_reference_matches_naive_loop():
    torch.manual_seed(0)
    for bits, g, sym in [(4, 16, True), (3, 32, False), ("ternary", None, True), (8, None, False)]:
        w = torch.randn(5, 32)
        pw = quantize_weight(w, bits, g, sym)
        q = pw.int_codes()
        x = torch.randn(3, 32, dtype=torch.float64)
        bias = torch.randn(5, dtype=torch.float64)
        expected = torch.zeros(3, 5, dtype=torch.float64)
        for m, n in itertools.product(range(3), range(5)):
            s = bias[n].item()
            for k in range(32):
                grp = k // pw.group_size
                z = pw.zero_point if pw.zeros is None else pw.zeros[n, grp].item()
                s += x[m, k].item() * (q[n, k].item() - z) * pw.scales[n, grp].item()
            expected[m, n] = s
        # the reference dequantizes in float32 (as the kernels do), the loop in float64
        torch.testing.assert_close(_ref(x, pw, bias), expected, rtol=1e-6, atol=1e-6)


SHAPES = [  # (M, N, K, group_size)
    (1, 1, 1, None),
    (1, 7, 300, None),
    (1, 64, 4096, 128),
    (2, 33, 256, 32),
    (3, 5, 1000, None),
    (5, 70, 384, 128),
    (8, 31, 96, 48),
    (9, 40, 129, None),
    (13, 17, 512, 64),
    (33, 65, 640, 128),
    (200, 16, 96, 32),  # few output rows, many x rows: threads split M
    (5, 203, 4096, 128),  # GEMV: several L2 chunks of rows, K chunks at MT = 4
]


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bits", ALL_BITS)
def test_native_matches_reference(isa, bits, monkeypatch):
    _use_isa(monkeypatch, isa)
    torch.manual_seed(7)
    for i, (m, n, k, g) in enumerate(SHAPES):
        sym = bits == "ternary" or i % 2 == 0
        pw = quantize_weight(torch.randn(n, k), bits, g, sym)
        x = torch.randn(m, k)
        bias = torch.randn(n) if i % 3 else None
        y = kbit_matmul(x, pw, bias)
        torch.testing.assert_close(y, _ref(x, pw, bias), rtol=1e-4, atol=1e-4 * (k**0.5))


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_native_bfloat16(isa, bits, monkeypatch):
    _use_isa(monkeypatch, isa)
    torch.manual_seed(3)
    for m, n, k, g in [
        (1, 37, 512, 128),
        (4, 16, 200, None),
        (20, 48, 256, 32),
        (300, 8, 27, None),
    ]:
        pw = quantize_weight(torch.randn(n, k), bits, g)
        x = torch.randn(m, k).bfloat16()
        bias = torch.randn(n).bfloat16()
        y = kbit_matmul(x, pw, bias)
        assert y.dtype == torch.bfloat16
        # float32 accumulation; the AVX512-BF16 path (M >= 2) also rounds the
        # dequantized weights to bfloat16, as bfloat16 F.linear does.
        r = _ref(x.float(), pw, bias.float())
        err = (y.float() - r).abs()
        assert err.norm() / r.norm() < 5e-3
        assert err.max() < 1e-2 * r.abs().max()


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bits", ALL_BITS)
def test_native_dequantize(isa, bits, monkeypatch):
    _use_isa(monkeypatch, isa)
    for n, k, g in [(3, 300, None), (40, 256, 64), (33, 96, 32)]:
        pw = quantize_weight(torch.randn(n, k), bits, g, bits == "ternary" or n % 2 == 1)
        assert torch.equal(fusenas.ops.dequantize_weight(pw), fusenas.dequantize(pw))


def test_batch_dims_and_empty():
    pw = quantize_weight(torch.randn(6, 64), 4, 32)
    x = torch.randn(2, 3, 64)
    y = kbit_matmul(x, pw)
    assert y.shape == (2, 3, 6)
    torch.testing.assert_close(y, _ref(x, pw, None), rtol=1e-4, atol=1e-4)
    assert kbit_matmul(torch.randn(0, 64), pw).shape == (0, 6)


def test_float64_and_float16_use_reference():
    pw = quantize_weight(torch.randn(6, 64), 4, 32)
    for dtype in (torch.float64, torch.float16):
        x = torch.randn(3, 64, dtype=dtype)
        y = kbit_matmul(x, pw)
        assert y.dtype == dtype
        torch.testing.assert_close(y, _ref(x, pw, None))


def test_gradcheck_x_float64():
    pw = quantize_weight(torch.randn(5, 32), 3, 16, symmetric=False)
    x = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: kbit_matmul(t, pw, bias), (x,))


@needs_ext
def test_gradient_float32_native():
    pw = quantize_weight(torch.randn(9, 200), 4, None)
    x = torch.randn(3, 200, requires_grad=True)
    kbit_matmul(x, pw).sum().backward()
    expected = fusenas.dequantize(pw).sum(dim=0).expand(3, 200)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits, g, sym", [(4, 32, True), (3, None, False), ("ternary", 64, True)])
def test_opcheck(bits, g, sym):
    pw = quantize_weight(torch.randn(7, 128), bits, g, sym)
    x = torch.randn(3, 128, requires_grad=True)
    bias = torch.randn(7)
    args = (x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size)
    torch.library.opcheck(torch.ops.fusenas.kbit_matmul.default, args)
    deq_args = (pw.codes, pw.scales, pw.zeros, 128, pw.bits, pw.ternary, pw.group_size)
    torch.library.opcheck(torch.ops.fusenas.kbit_dequantize.default, deq_args)


def test_torch_compile_fullgraph():
    pw = quantize_weight(torch.randn(16, 256), 4, 128)
    bias = torch.randn(16)

    def f(x):
        return torch.relu(kbit_matmul(x, pw, bias)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    x = torch.randn(5, 256)
    torch.testing.assert_close(compiled(x), f(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the shape checks
def test_jit_trace_records_the_registered_op():
    """The eager shortcut (kernel called without the dispatcher) steps aside under
    torch.jit.trace: the trace holds fusenas::kbit_matmul, not a baked-in result."""
    pw = quantize_weight(torch.randn(16, 256), 4, 128)

    def f(x):
        return kbit_matmul(x, pw)

    traced = torch.jit.trace(f, (torch.randn(3, 256),))
    assert "fusenas::kbit_matmul" in [n.kind() for n in traced.graph.nodes()]
    other = torch.randn(3, 256)
    torch.testing.assert_close(traced(other), f(other))


# ------------------------------------------------------------ bad input ----


@pytest.fixture
def packed():
    return quantize_weight(torch.randn(8, 128), 4, 32, symmetric=False)


def _call(x, pw, bias=None, **over):
    args = {
        "codes": pw.codes,
        "scales": pw.scales,
        "zeros": pw.zeros,
        "bits": pw.bits,
        "ternary": pw.ternary,
        "group_size": pw.group_size,
    }
    args.update(over)
    return torch.ops.fusenas.kbit_matmul(
        x, args["codes"], args["scales"], args["zeros"], bias, args["bits"], args["ternary"],
        args["group_size"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda pw: (torch.ones(2, 128, dtype=torch.int32), {}), TypeError, "x:"),
        (lambda pw: (torch.randn(2, 100), {}), ValueError, "K=100"),
        (lambda pw: (torch.randn(2, 300), {}), ValueError, "codes"),
        (lambda pw: (torch.randn(128, 4).t(), {}), ValueError, "x:.*contiguous"),
        (lambda pw: (torch.randn(2, 128), {"bits": 9}), ValueError, "bits"),
        (lambda pw: (torch.randn(2, 128), {"bits": 1}), ValueError, "bits"),
        (lambda pw: (torch.randn(2, 128), {"ternary": True}), ValueError, "ternary"),
        (lambda pw: (torch.randn(2, 128), {"group_size": 48}), ValueError, "group_size"),
        (lambda pw: (torch.randn(2, 128), {"group_size": 0}), ValueError, "group_size"),
        (lambda pw: (torch.randn(2, 128), {"codes": pw.codes.float()}), TypeError, "codes"),
        (lambda pw: (torch.randn(2, 128), {"codes": pw.codes[:, :-1]}), ValueError, "codes"),
        (lambda pw: (torch.randn(2, 128), {"scales": pw.scales[:, :2]}), ValueError, "scales"),
        (lambda pw: (torch.randn(2, 128), {"scales": pw.scales.double()}), ValueError, "scales"),
        (lambda pw: (torch.randn(2, 128), {"zeros": pw.zeros[:4]}), ValueError, "zeros"),
        (
            lambda pw: (torch.randn(2, 128), {"scales": pw.scales.t().contiguous().t()}),
            ValueError,
            "scales",
        ),
        (lambda pw: (torch.randn(2, 128, device="meta"), {}), ValueError, "device"),
        (
            lambda pw: (torch.randn(2, 128), {"scales": pw.scales.to("meta")}),
            ValueError,
            "scales: expected a tensor on cpu",
        ),  # fmt: skip
    ],
)
def test_bad_input(packed, make, exc, match):
    x, over = make(packed)
    with pytest.raises(exc, match=match):
        _call(x, packed, **over)


def test_bad_bias(packed):
    with pytest.raises(ValueError, match="bias"):
        _call(torch.randn(2, 128), packed, bias=torch.randn(7))
    with pytest.raises(TypeError, match="bias"):
        _call(torch.randn(2, 128), packed, bias=torch.randn(8, dtype=torch.float64))


def test_bad_wrapper_arguments(packed):
    with pytest.raises(TypeError, match="weight"):
        kbit_matmul(torch.randn(2, 128), torch.randn(8, 128))
    with pytest.raises(TypeError, match="x"):
        kbit_matmul([1.0] * 128, packed)
    with pytest.raises(ValueError, match="x"):
        kbit_matmul(torch.randn(2, 64), packed)


@needs_ext
@pytest.mark.parametrize("bits", [2, 3, 4, "ternary"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_code_kernels(bits, dtype):
    """The kernels on codes (AVX512-BF16 CPUs; elsewhere these shapes take the
    other kernels): the GEMV (float32 x up to M = 16, bfloat16 up to 24) and the
    bfloat16 GEMM past it. Group sizes of whole 128-element blocks and
    per-channel scales, symmetric and asymmetric codes, odd N, K with a partial
    last block, against the float64 product of x and the dequantized weight."""
    torch.manual_seed(11)
    for m, n, k, g, sym in [
        (1, 37, 512, 128, True),
        (1, 9, 1000, None, False),
        (2, 70, 384, 128, False),
        (3, 33, 1000, None, True),
        (4, 13, 768, 256, False),
        (7, 26, 640, 128, True),  # x tiles 4 + 2 + 1; chunks of 12 output rows, then 2
        (13, 38, 384, None, False),
        (24, 29, 256, 128, True),  # largest bfloat16 M on the GEMV
        (16, 70, 512, 128, False),  # largest float32 M on it; two threads
        (17, 9, 256, 128, True),  # float32: past it
        (61, 17, 384, 128, False),  # bfloat16: the GEMM on codes, 12-row x tiles + 1
        (100, 300, 1408, 128, True),  # 11 blocks: K chunks of 8 + 3; 160 + 140 rows: partial blocks
        (50, 40, 1536, 384, False),  # groups of three blocks, one across two K chunks
        (40, 33, 300, None, True),  # per-channel scales, partial last block
    ]:
        pw = quantize_weight(torch.randn(n, k), bits, g, sym or bits == "ternary")
        x = (torch.randn(m, k) * 3).to(dtype)
        bias = torch.randn(n).to(dtype)
        exact = x.double() @ fusenas.dequantize(pw).double().T + bias.double()
        y = kbit_matmul(x, pw, bias)
        assert y.dtype == dtype
        err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
        # float32 x: two bfloat16 terms (16 significant bits), or at M = 1 with
        # 2- and 3-bit codes int16 tables (~3e-5, test_kbit_lut.py); bfloat16: the
        # output rounding (and, on the GEMM, the weights' rounding to bfloat16).
        on_tables = m == 1 and bits != 4
        tol = (1e-4 if on_tables else 5e-5) if dtype == torch.float32 else 8e-3
        assert err < tol, (m, n, k, g, sym, err)


@needs_ext
@pytest.mark.parametrize("bits", [2, 3, 4, "ternary"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_one_gemv_on_codes(bits, dtype, monkeypatch):
    """M = 1 on the GEMV on codes (the tables off): rows streamed one after
    another while x's terms fit in L1, output tiles past that (float32 x at
    K = 6272: 25 KB of terms; bfloat16 x there is still streamed). Batches of 16
    rows with a partial last one, groups of two blocks, per-channel scales,
    asymmetric codes, bias."""
    monkeypatch.setenv("FUSENAS_CPU_LUT", "0")
    torch.manual_seed(12)
    for n, k, g, sym in [
        (37, 512, 128, True),
        (9, 1000, None, False),
        (50, 768, 256, False),
        (21, 6272, 128, False),
    ]:
        pw = quantize_weight(torch.randn(n, k), bits, g, sym or bits == "ternary")
        x = (torch.randn(1, k) * 3).to(dtype)
        bias = torch.randn(n).to(dtype)
        exact = x.double() @ fusenas.dequantize(pw).double().T + bias.double()
        y = kbit_matmul(x, pw, bias)
        err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
        assert err < (5e-5 if dtype == torch.float32 else 8e-3), (n, k, g, sym, err)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("m", [5, 40])
def test_bfloat16_output_is_the_rounded_sum(isa, bits, m, monkeypatch):
    """Every bfloat16 path rounds its float32 sums to nearest even, as torch does,
    whether the kernels write bfloat16 themselves (the kernels on codes) or a
    float32 copy is converted: integer weights (scale 1) and integer x keep every
    product and sum exact in float32, so only the output rounding is left.
    K = 1408 is 11 blocks: the GEMM on codes sums it in two k-chunks; sums up to
    a few thousand have 8-bit mantissas with ties to round."""
    _use_isa(monkeypatch, isa)
    torch.manual_seed(5)
    n, k = 70, 1408
    pw = quantize_weight(torch.randn(n, k), bits, 128)
    pw = dataclasses.replace(pw, scales=torch.ones_like(pw.scales))
    x = torch.randint(-3, 4, (m, k)).bfloat16()
    bias = torch.randint(-50, 50, (n,)).bfloat16()
    exact = x.double() @ fusenas.dequantize(pw).double().T + bias.double()
    assert exact.abs().max() < 2**24  # every partial sum exact in float32
    y = kbit_matmul(x, pw, bias)
    assert torch.equal(y, exact.float().bfloat16())


@needs_ext
def test_inputs_past_the_cached_scratch():
    """The front end keeps each thread's copies of x (up to 16 MB) for its next
    calls; a larger x gets memory of its own. Both give the right product, and a
    smaller call after the large one reuses the cached buffer correctly."""
    torch.manual_seed(9)
    pw = quantize_weight(torch.randn(24, 4096), 4, 128)
    w = fusenas.dequantize(pw)
    for m in (2100, 40):  # 2100 x 4128 bfloat16 terms: 17 MB
        x = torch.randn(m, 4096).bfloat16()
        y = kbit_matmul(x, pw)
        ref = x.float() @ w.bfloat16().float().T
        err = (y.float() - ref).abs().max() / ref.abs().max()
        assert err < 8e-3, (m, err)


@needs_ext
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_small_m_nonfinite_x_propagates(monkeypatch, isa, bits, symmetric):
    # every CPU path: GEMVs that factor the zero point out of their sums (AVX2 at 4-8
    # bits, the AVX512-BF16 one on codes with zero points) gave inf - inf = NaN where
    # the dequantised dot gives +-inf
    _use_isa(monkeypatch, isa)
    pw = quantize_weight(torch.randn(8, 256), bits, 128, symmetric)
    x = torch.randn(1, 256)
    x[0, 3] = float("inf")
    x[0, 200] = float("nan")
    y = kbit_matmul(x, pw)
    assert torch.isnan(y).all()
    x = torch.randn(1, 256)
    x[0, 5] = float("inf")
    y, ref = kbit_matmul(x, pw), _ref(x, pw, None)
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    # several x rows: a non-finite value stays in its own row
    x = torch.randn(8, 256)
    x[2, 7] = float("nan")
    y = kbit_matmul(x, pw)
    assert torch.isnan(y[2]).all()
    assert torch.isfinite(y[torch.arange(8) != 2]).all()

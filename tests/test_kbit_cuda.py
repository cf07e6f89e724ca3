"""GPU tests of the CUDA k-bit matmul and dequantize kernels (fusenas._C_cuda).

The CUDA kernel is checked against the pure-torch reference and against the CPU
kernel over the CPU tests' grid: M on both sides of the GEMV / GEMM switch, odd
N and K (K not a multiple of the 128-element block), every bit width and
ternary, per-channel and grouped scales, symmetric and asymmetric weights,
float32 / bfloat16 / float16, with and without bias. Further tests cover the
GEMV's K chunking, misaligned tensors (the kernels' byte-load and scalar
paths), opcheck, autograd and torch.compile on cuda. Everything here skips
cleanly when there is no CUDA device or the extension was not built.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

import fusenas
from fusenas.ops import _native, dequantize_weight, kbit_matmul
from fusenas.ops._reference import kbit_matmul_reference

pytestmark = pytest.mark.gpu  # skipped without a GPU and _C_cuda (conftest.py)
KBIT_OPS = importlib.import_module("fusenas.ops.kbit_matmul")  # the module, not the function

BITS = [2, 3, 4, 5, 6, 7, 8, "ternary"]
# K per group size: never a multiple of 128, odd for per-channel scales.
K_FOR_GROUP = {None: 333, 32: 352, 64: 320, 128: 384}
N = 67
MS = [1, 3, 8, 33, 128]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CPU_DTYPES = (torch.float32, torch.bfloat16)
# (rtol, atol relative to max |y|): accumulation order differs from cuBLAS, and
# 16-bit outputs may round to the neighbouring value.
TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (1.6e-2, 8e-3), torch.float16: (2e-3, 1e-3)}


def _cases():
    for bits, group, sym in itertools.product(BITS, K_FOR_GROUP, (True, False)):
        if bits == "ternary" and not sym:
            continue  # ternary weights are symmetric
        yield bits, group, sym


def _make(n, k, bits, group, sym, seed):
    """A CPU PackedWeight and its CUDA copy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    pw = fusenas.quantize_weight(w, bits, group, sym)
    return pw, pw.to("cuda")


def _assert_close(actual, expected, dtype, what=""):
    rtol, atol = TOL[dtype]
    scale = expected.float().abs().max().item() + 1e-6
    torch.testing.assert_close(
        actual.float().cpu(),
        expected.float().cpu(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{what}: {m}",
    )


@pytest.fixture(params=["native kernels", "dequantize + cuBLAS"])
def cuda_path(request, monkeypatch):
    """Runs a test once through the native GEMV / GEMM at every M and once through
    the large-M path (W dequantized into x's dtype, then F.linear) at every M."""
    min_m = 1 << 62 if request.param == "native kernels" else 1
    monkeypatch.setattr(KBIT_OPS, "CUDA_DEQUANT_GEMM_MIN_M", min_m)
    return request.param


def _misaligned(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of t whose data starts `offset` elements into its allocation."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    out = buf[offset:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize(("bits", "group", "sym"), list(_cases()))
def test_matmul_cuda_vs_reference_and_cpu(bits, group, sym, m, dtype, cuda_path):
    k = K_FOR_GROUP[group]
    pw_cpu, pw = _make(N, k, bits, group, sym, seed=m * 131 + k)
    g = torch.Generator().manual_seed(m)
    x_cpu = torch.randn(m, k, generator=g).to(dtype)
    bias_cpu = torch.randn(N, generator=g).to(dtype) if m % 2 == 1 else None
    x = x_cpu.cuda()
    bias = None if bias_cpu is None else bias_cpu.cuda()

    y = kbit_matmul(x, pw, bias)
    assert y.shape == (m, N) and y.dtype == dtype and y.is_cuda
    ref = kbit_matmul_reference(
        x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size
    )
    what = f"bits={bits} group={group} sym={sym} M={m} {dtype} {cuda_path}"
    _assert_close(y, ref, dtype, f"cuda vs reference, {what}")
    if dtype in CPU_DTYPES:
        y_cpu = kbit_matmul(x_cpu, pw_cpu, bias_cpu)
        _assert_close(y, y_cpu, dtype, f"cuda vs cpu kernel, {what}")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize(
    ("m", "k", "group", "dtype"),
    [
        (1, 8192 + 256, 64, torch.float32),  # two GEMV chunks at MT = 1
        (2, 4096 + 96, 32, torch.float16),  # chunk tail inside a group
        (4, 4096 + 384, 128, torch.bfloat16),
        (5, 1024 + 48, 16, torch.float32),  # MT = 8 (or two MT = 4 tiles), K % 128 != 0
        (9, 96, 48, torch.float16),  # groups that straddle 128-element blocks
        (64, 512, None, torch.bfloat16),  # largest GEMV M, aligned K: vector loads
        (65, 512, 128, torch.float32),  # smallest GEMM M
        (200, 200, None, torch.bfloat16),  # GEMM m and k tails
    ],
)
def test_matmul_cuda_shapes(bits, m, k, group, dtype, cuda_path):
    n = 45
    sym = bits == "ternary" or m % 2 == 0
    pw_cpu, pw = _make(n, k, bits, group, sym, seed=k + m)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    bias = torch.randn(n, generator=g).to(dtype).cuda()
    y = kbit_matmul(x, pw, bias)
    ref = kbit_matmul_reference(
        x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size
    )
    _assert_close(y, ref, dtype, f"bits={bits} M={m} K={k} group={group} {cuda_path}")


@pytest.mark.parametrize("m", [1, 8, 100])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_misaligned_tensors_take_the_safe_paths(bits, m):
    # codes one byte past an aligned address (byte loads instead of uint4), x
    # one element past one (scalar staging instead of vector loads): same result.
    k = 256
    _, pw = _make(33, k, bits, 64, False, seed=bits)
    x = torch.randn(m, k, device="cuda")
    y = kbit_matmul(x, pw)
    codes = _misaligned(pw.codes, 1)
    assert codes.data_ptr() % 16 != 0
    pw_mis = fusenas.PackedWeight(
        codes, pw.scales, pw.zeros, pw.shape, pw.bits, pw.ternary, pw.group_size
    )
    x_mis = _misaligned(x, 1)
    torch.testing.assert_close(kbit_matmul(x_mis, pw_mis), y, rtol=0, atol=0)
    torch.testing.assert_close(dequantize_weight(pw_mis), dequantize_weight(pw), rtol=0, atol=0)


@pytest.mark.parametrize("m", [1, 5, 100])
@pytest.mark.parametrize("bits", [2, 4, 7, 8])
def test_fractional_zero_points(bits, m):
    # quantize_weight's zero points are integers (the GEMV's one-FADD q - z);
    # any other float zero point takes the exact two-FADD path.
    pw_int, _ = _make(37, 320, bits, 64, False, seed=bits)
    g = torch.Generator().manual_seed(m)
    zeros = pw_int.zeros + torch.rand(pw_int.zeros.shape, generator=g) - 0.5
    pw_cpu = fusenas.PackedWeight(
        pw_int.codes, pw_int.scales, zeros, pw_int.shape, bits, False, pw_int.group_size
    )
    pw = pw_cpu.to("cuda")
    x = torch.randn(m, 320, device="cuda")
    y = kbit_matmul(x, pw)
    ref = kbit_matmul_reference(x, pw.codes, pw.scales, pw.zeros, None, bits, False, 64)
    _assert_close(y, ref, torch.float32, f"fractional zeros, bits={bits} M={m}")
    torch.testing.assert_close(
        dequantize_weight(pw).cpu(), fusenas.dequantize(pw_cpu), rtol=0, atol=0
    )


def _dequant_cases():
    for bits, group, sym in _cases():
        # odd K: scalar stores; K % 4 == 0: float4 stores (K % 128 != 0 either way)
        for k in (333, 336) if group is None else (K_FOR_GROUP[group], 5 * group):
            yield bits, group, sym, k


@pytest.mark.parametrize(("bits", "group", "sym", "k"), list(_dequant_cases()))
def test_dequantize_cuda_matches_torch(bits, group, sym, k):
    pw_cpu, pw = _make(N, k, bits, group, sym, seed=k)
    out = dequantize_weight(pw)
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (N, k)
    # Same float32 operations as the reference, (q - z) * s: bit-exact.
    torch.testing.assert_close(out.cpu(), fusenas.dequantize(pw_cpu), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("bits", "group", "sym", "k"), list(_dequant_cases()))
def test_dequantize_cuda_16_bit_outputs(bits, group, sym, k, dtype):
    # The large-M path's dequantize: the float32 values rounded to nearest even,
    # as .to(dtype) does (16-byte stores when K % 8 == 0, scalar ones otherwise).
    pw_cpu, pw = _make(N, k, bits, group, sym, seed=k)
    out = KBIT_OPS._dequantize_cuda(
        _native.cuda(), pw.codes, pw.scales, pw.zeros, k, pw.bits, pw.ternary, pw.group_size, dtype
    )
    assert out.dtype == dtype and out.shape == (N, k)
    expected = fusenas.dequantize(pw_cpu).to(dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)


def test_3d_input_empty_input_and_side_stream():
    _, pw = _make(40, 160, 4, 32, True, seed=0)
    x = torch.randn(2, 3, 160, device="cuda", dtype=torch.bfloat16)
    y = kbit_matmul(x, pw)
    assert y.shape == (2, 3, 40)
    _assert_close(y.reshape(6, 40), kbit_matmul(x.reshape(6, 160), pw), torch.bfloat16, "3-D")
    assert kbit_matmul(x[:0], pw).shape == (0, 3, 40)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y2 = kbit_matmul(x, pw)
    stream.synchronize()
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_backward_cuda():
    pw_cpu, pw = _make(24, 96, 5, 32, False, seed=3)
    x = torch.randn(7, 96, device="cuda", requires_grad=True)
    y = kbit_matmul(x, pw)
    grad = torch.randn_like(y)
    y.backward(grad)
    w = fusenas.dequantize(pw_cpu).cuda()
    torch.testing.assert_close(x.grad, grad @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("bits", "group", "sym", "m"), [(4, 32, True, 1), (3, None, False, 70)])
def test_opcheck_cuda(bits, group, sym, m):
    k = K_FOR_GROUP[group]
    _, pw = _make(20, k, bits, group, sym, seed=1)
    x = torch.randn(m, k, device="cuda", requires_grad=True)
    bias = torch.randn(20, device="cuda")
    torch.library.opcheck(
        torch.ops.fusenas.kbit_matmul.default,
        (x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size),
    )
    torch.library.opcheck(
        torch.ops.fusenas.kbit_dequantize.default,
        (pw.codes, pw.scales, pw.zeros, k, pw.bits, pw.ternary, pw.group_size),
    )


def test_torch_compile_cuda():
    from torch.utils._triton import has_triton

    _, pw = _make(48, 256, 4, 128, True, seed=2)
    bias = torch.randn(48, device="cuda", dtype=torch.float16)

    def f(x):
        return torch.relu(kbit_matmul(x, pw, bias)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if has_triton() else "aot_eager")
    for m in (1, 96):
        x = torch.randn(m, 256, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(compiled(x), f(x))


def test_build_info():
    info = _native.cuda().build_info()
    assert info["device_count"] >= 1
    assert info["cuda_runtime_version"] > 0
    assert info["cuda_archs"]

"""torch.ops.fusenas.kbit_matmul: x @ dequant(W)^T + bias with packed k-bit W.

Registered with torch.library (schema, CPU/CUDA kernels, fake kernel,
autograd for x), so it runs under torch.compile(fullgraph=True) and passes
torch.library.opcheck. Arguments are validated here, once, before any native
call: a kernel never sees a shape or size it could read out of bounds with.
"""

from __future__ import annotations

import torch

from fusenas.ops import _native, kbit_lut
from fusenas.ops._reference import dequantize_reference, kbit_matmul_reference
from fusenas.quant.packed import PackedWeight
from fusenas.quant.packing import row_bytes

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_CPU_DTYPES = (torch.float32, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rows of x (M) from which the CUDA op dequantizes W into x's dtype and runs
# cuBLAS (F.linear, tensor cores) instead of the native kernels, at the price
# of an (N, K) temporary in x's dtype. Measured on an H100 (4-bit, 7B-LLM
# layer shapes, docs/benchmarks/cuda.md): the native GEMV wins at M = 1,
# splits the shapes at M = 8 (its MT = 8 tile), and at M = 16 and above, where
# it repeats the decode per 8-row tile, it is 1.1x to 11x slower; the SIMT GEMM
# (M > 64) is 2.5x to 25x slower than this path.
CUDA_DEQUANT_GEMM_MIN_M = 9

torch.library.define(
    "fusenas::kbit_matmul",
    "(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, Tensor? bias, int bits, "
    "bool ternary, int group_size) -> Tensor",
)
torch.library.define(
    "fusenas::kbit_dequantize",
    "(Tensor codes, Tensor scales, Tensor? zeros, int in_features, int bits, bool ternary, "
    "int group_size) -> Tensor",
)


def check_kbit_args(
    x: torch.Tensor | None,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    k: int,
    bits: int,
    ternary: bool,
    group_size: int,
) -> None:
    """Raises ValueError / TypeError naming the argument when anything is off."""
    # Runs on every call (a batch-1 call of a small layer takes ~10 us in all): plain
    # comparisons, shapes against tuples without copying them.
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits: expected an integer in 2..8, got {bits}")
    if ternary and bits != 2:
        raise ValueError(f"bits: ternary weights use 2-bit codes, got bits={bits}")
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes: expected a uint8 tensor, got {getattr(codes, 'dtype', codes)}")
    if codes.dim() != 2:
        raise ValueError(f"codes: expected a 2-D tensor (N, row_bytes), got {tuple(codes.shape)}")
    n = codes.shape[0]
    if k <= 0:
        raise ValueError(f"x: expected a last dimension (K) >= 1, got {k}")
    if codes.shape[1] != row_bytes(k, bits):
        raise ValueError(
            f"codes: expected shape ({n}, {row_bytes(k, bits)}) for K={k} at {bits} bits, "
            f"got {tuple(codes.shape)}"
        )
    if group_size <= 0 or k % group_size != 0 or (group_size != k and group_size % 16 != 0):
        raise ValueError(
            f"group_size: expected K (per-channel) or a multiple of 16 dividing K={k} "
            f"(x's last dimension), got {group_size}"
        )
    groups = k // group_size
    if scales.dtype != torch.float32 or scales.shape != (n, groups):
        raise ValueError(
            f"scales: expected float32 of shape ({n}, {groups}), got {scales.dtype} "
            f"{tuple(scales.shape)}"
        )
    if zeros is not None and (zeros.dtype != torch.float32 or zeros.shape != (n, groups)):
        raise ValueError(
            f"zeros: expected float32 of shape ({n}, {groups}) or None, got {zeros.dtype} "
            f"{tuple(zeros.shape)}"
        )
    if x is not None:
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(f"x: expected shape (..., {k}), got {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError("x: expected a contiguous tensor (call .contiguous() first)")
    if bias is not None:
        if bias.shape != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
        if x is not None and bias.dtype != x.dtype:
            raise TypeError(f"bias: expected dtype {x.dtype} (x's dtype), got {bias.dtype}")
    device = codes.device
    for name, t in (
        ("x", x),
        ("codes", codes),
        ("scales", scales),
        ("zeros", zeros),
        ("bias", bias),
    ):
        if t is None:
            continue
        if t.device != device:
            raise ValueError(
                f"{name}: expected a tensor on {device} (codes' device), got {t.device}"
            )
        if name != "x" and not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")


def _weight_args(codes, scales, zeros, k, bits, ternary, group_size):
    return (
        codes.data_ptr(),
        scales.data_ptr(),
        0 if zeros is None else zeros.data_ptr(),
        codes.shape[0],
        k,
        codes.shape[1],
        bits,
        ternary,
        group_size,
    )


def _kbit_matmul_cpu(x, codes, scales, zeros, bias, bits, ternary, group_size):
    k = x.shape[-1]
    check_kbit_args(x, codes, scales, zeros, bias, k, bits, ternary, group_size)
    ext = _native.cpu()
    if ext is None or x.dtype not in _CPU_DTYPES:
        reason = "fusenas._C not built" if ext is None else f"no CPU kernel for {x.dtype}"
        _native.warn_fallback("kbit_matmul", reason)
        return kbit_matmul_reference(x, codes, scales, zeros, bias, bits, ternary, group_size)
    n = codes.shape[0]
    m = x.numel() // k
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if m == 1 and bits in (2, 3) and _lut_applies(ext, k, group_size):
        lut = kbit_lut.lut_weight(ext, codes, scales, zeros, k, bits, ternary)
        if ext.kbit_gemv_lut_cpu(
            x.data_ptr(), _DTYPE_CODE[x.dtype], lut.codes.data_ptr(), lut.scale.data_ptr(),
            0 if lut.offset is None else lut.offset.data_ptr(), n, k, group_size, lut.zero_term,
            bits, 0 if bias is None else bias.data_ptr(), y.data_ptr(), torch.get_num_threads(),
        ):  # fmt: skip
            return y  # else x holds Inf, NaN or sums past float32: the kernels below
    ext.kbit_matmul_cpu(
        x.data_ptr(), m, k, _DTYPE_CODE[x.dtype],
        *_weight_args(codes, scales, zeros, k, bits, ternary, group_size),
        0 if bias is None else bias.data_ptr(), y.data_ptr(), n, torch.get_num_threads(),
    )  # fmt: skip
    return y


def _lut_applies(ext, k: int, group_size: int) -> bool:
    """The batch-1 table GEMV (ops/kbit_lut.py): AVX512_VNNI, groups of whole blocks."""
    whole_blocks = group_size == k or group_size % 128 == 0
    # The extension reads FUSENAS_CPU_LUT (getenv: 0.05 us a call; os.environ took 0.6)
    return whole_blocks and ext.kbit_lut_enabled()


def _kbit_matmul_cuda(x, codes, scales, zeros, bias, bits, ternary, group_size):
    k = x.shape[-1]
    check_kbit_args(x, codes, scales, zeros, bias, k, bits, ternary, group_size)
    ext = _native.cuda()
    if ext is None or x.dtype not in _CUDA_DTYPES:
        reason = "fusenas._C_cuda not built" if ext is None else f"no CUDA kernel for {x.dtype}"
        _native.warn_fallback("kbit_matmul", reason)
        return kbit_matmul_reference(x, codes, scales, zeros, bias, bits, ternary, group_size)
    n = codes.shape[0]
    m = x.numel() // k
    if m >= CUDA_DEQUANT_GEMM_MIN_M:
        w = _dequantize_cuda(ext, codes, scales, zeros, k, bits, ternary, group_size, x.dtype)
        return torch.nn.functional.linear(x, w, bias)
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    with torch.cuda.device(x.device):
        ext.kbit_matmul_cuda(
            x.data_ptr(), m, k, _DTYPE_CODE[x.dtype],
            *_weight_args(codes, scales, zeros, k, bits, ternary, group_size),
            0 if bias is None else bias.data_ptr(), y.data_ptr(), n,
            torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return y


torch.library.impl("fusenas::kbit_matmul", "CPU")(_kbit_matmul_cpu)
torch.library.impl("fusenas::kbit_matmul", "CUDA")(_kbit_matmul_cuda)


@torch.library.impl("fusenas::kbit_matmul", "CompositeExplicitAutograd")
def _kbit_matmul_other(x, codes, scales, zeros, bias, bits, ternary, group_size):
    # Devices without a kernel (e.g. mps, meta handled by the fake kernel).
    check_kbit_args(x, codes, scales, zeros, bias, x.shape[-1], bits, ternary, group_size)
    _native.warn_fallback("kbit_matmul", f"no kernel for device {x.device.type}")
    return kbit_matmul_reference(x, codes, scales, zeros, bias, bits, ternary, group_size)


@torch.library.register_fake("fusenas::kbit_matmul")
def _kbit_matmul_fake(x, codes, scales, zeros, bias, bits, ternary, group_size):
    check_kbit_args(x, codes, scales, zeros, bias, x.shape[-1], bits, ternary, group_size)
    return x.new_empty(*x.shape[:-1], codes.shape[0])


@torch.library.impl("fusenas::kbit_dequantize", "CPU")
def _kbit_dequantize_cpu(codes, scales, zeros, in_features, bits, ternary, group_size):
    check_kbit_args(None, codes, scales, zeros, None, in_features, bits, ternary, group_size)
    ext = _native.cpu()
    if ext is None:
        _native.warn_fallback("kbit_dequantize", "fusenas._C not built")
        return dequantize_reference(codes, scales, zeros, in_features, bits, ternary, group_size)
    out = torch.empty(codes.shape[0], in_features, dtype=torch.float32)
    ext.kbit_dequantize_cpu(
        *_weight_args(codes, scales, zeros, in_features, bits, ternary, group_size),
        out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


@torch.library.impl("fusenas::kbit_dequantize", "CUDA")
def _kbit_dequantize_cuda(codes, scales, zeros, in_features, bits, ternary, group_size):
    check_kbit_args(None, codes, scales, zeros, None, in_features, bits, ternary, group_size)
    ext = _native.cuda()
    if ext is None:
        _native.warn_fallback("kbit_dequantize", "fusenas._C_cuda not built")
        return dequantize_reference(codes, scales, zeros, in_features, bits, ternary, group_size)
    return _dequantize_cuda(
        ext, codes, scales, zeros, in_features, bits, ternary, group_size, torch.float32
    )


def _dequantize_cuda(ext, codes, scales, zeros, in_features, bits, ternary, group_size, dtype):
    """(N, in_features) dequantized W in dtype (float32, bfloat16 or float16); args checked."""
    out = torch.empty(codes.shape[0], in_features, dtype=dtype, device=codes.device)
    with torch.cuda.device(codes.device):
        ext.kbit_dequantize_cuda(
            *_weight_args(codes, scales, zeros, in_features, bits, ternary, group_size),
            out.data_ptr(), _DTYPE_CODE[dtype], torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return out


@torch.library.impl("fusenas::kbit_dequantize", "CompositeExplicitAutograd")
def _kbit_dequantize_other(codes, scales, zeros, in_features, bits, ternary, group_size):
    check_kbit_args(None, codes, scales, zeros, None, in_features, bits, ternary, group_size)
    return dequantize_reference(codes, scales, zeros, in_features, bits, ternary, group_size)


@torch.library.register_fake("fusenas::kbit_dequantize")
def _kbit_dequantize_fake(codes, scales, zeros, in_features, bits, ternary, group_size):
    check_kbit_args(None, codes, scales, zeros, None, in_features, bits, ternary, group_size)
    return codes.new_empty(codes.shape[0], in_features, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, codes, scales, zeros, bias, bits, ternary, group_size = inputs
    ctx.save_for_backward(codes, scales, zeros)
    ctx.meta = (x.shape[-1], bits, ternary, group_size, x.dtype)


def _backward(ctx, grad_y):
    codes, scales, zeros = ctx.saved_tensors
    k, bits, ternary, group_size, dtype = ctx.meta
    grad_x = None
    if ctx.needs_input_grad[0]:
        # The weight is frozen; only x gets a gradient: grad_x = grad_y @ W.
        w = torch.ops.fusenas.kbit_dequantize(codes, scales, zeros, k, bits, ternary, group_size)
        acc = torch.float64 if grad_y.dtype == torch.float64 else torch.float32
        grad_x = torch.matmul(grad_y.to(acc), w.to(acc)).to(dtype)
    return grad_x, None, None, None, None, None, None, None


torch.library.register_autograd("fusenas::kbit_matmul", _backward, setup_context=_setup_context)


def kbit_matmul(
    x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x @ dequant(weight)^T + bias.

    Args:
        x: (..., K) float32 or bfloat16 (float16 too on CUDA; other float dtypes
            run the reference), contiguous, on the weight's device.
        weight: PackedWeight of shape (N, K).
        bias: (N,) in x's dtype, or None.
    Returns:
        (..., N) in x's dtype. Differentiable with respect to x.

    Numerics: float32 accumulation of exact dequantized weights. One exception, on
    CPUs with AVX512-BF16 for 2- to 4-bit and ternary weights whose groups are whole
    128-element blocks: up to 16 float32 rows (M <= 16) are multiplied as two
    bfloat16 terms each (16 significant bits, relative error per element <= 2^-16),
    about 1e-5 of the output's scale; set FUSENAS_CPU_BF16=0 for the plain float32
    kernel. bfloat16 x (M <= 24) is exact there (codes are small integers). A single
    row of x (M = 1) times 2-bit, 3-bit or ternary weights on CPUs with AVX512_VNNI
    runs on tables of sums of four inputs (ops/kbit_lut.py), held as int16 per 128-input
    block: each entry within 1/65534 of its block's largest, about 3e-5 of the
    output's scale for float32 x (bfloat16 x: below its output rounding); the first
    such call builds a copy of the codes in the tables' layout, kept as long as the
    codes tensor lives (FUSENAS_CPU_LUT=0: off).
    Other bfloat16 cases with M >= 2 on those CPUs (larger M, 5- to 8-bit codes,
    smaller groups) round the decoded weights to bfloat16, as bfloat16 F.linear
    does. On CUDA, M >= CUDA_DEQUANT_GEMM_MIN_M dequantizes W into x's dtype
    (rounding it to 16 bits for 16-bit x) and runs F.linear (cuBLAS, so torch's TF32
    settings apply to float32 x); this needs an (N, K) temporary in x's dtype.
    """
    if not isinstance(weight, PackedWeight):
        raise TypeError(
            f"weight: expected a fusenas.quant.PackedWeight, got {type(weight).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != weight.in_features:
        raise ValueError(f"x: expected shape (..., {weight.in_features}), got {tuple(x.shape)}")
    return kbit_matmul_tensors(
        x, weight.codes, weight.scales, weight.zeros, bias, weight.bits, weight.ternary,
        weight.group_size,
    )  # fmt: skip


def kbit_matmul_tensors(x, codes, scales, zeros, bias, bits, ternary, group_size) -> torch.Tensor:
    """torch.ops.fusenas.kbit_matmul on the packed weight's tensors (QuantLinear and
    QuantConv2d call this). Eager inference on plain tensors (no autograd, not tracing
    or compiling) goes straight to the kernel: the dispatcher's Python round trips
    cost about 10 us a call, which dominates small batch-1 layers."""
    args = (x, codes, scales, zeros, bias, bits, ternary, group_size)
    if _eager_inference(x, codes):
        if x.device.type == "cpu":
            return _kbit_matmul_cpu(*args)
        if x.device.type == "cuda":
            return _kbit_matmul_cuda(*args)
    return torch.ops.fusenas.kbit_matmul.default(*args)


def _eager_inference(x: torch.Tensor, codes: torch.Tensor) -> bool:
    return (
        _native.is_plain(x)
        and _native.is_plain(codes)
        and not (x.requires_grad and torch.is_grad_enabled())
        and _native.eager_mode()
    )


def dequantize_weight(weight: PackedWeight) -> torch.Tensor:
    """float32 (N, K) weight through the native dequantize kernel (reference as fallback)."""
    return torch.ops.fusenas.kbit_dequantize(
        weight.codes, weight.scales, weight.zeros, weight.in_features, weight.bits,
        weight.ternary, weight.group_size,
    )  # fmt: skip

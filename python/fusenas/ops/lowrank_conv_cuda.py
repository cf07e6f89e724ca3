"""CUDA kernels of torch.ops.fusenas.lowrank_conv2d and lowrank_conv2d_backward.

Registers the "CUDA" implementations of the two ops that fusenas.ops.lowrank_conv
defines (schema, fake kernels, autograd and the CPU kernel live there). The
arguments are validated by that module's ``check_lowrank_args`` before any
native call, and shapes the kernels do not cover (float64, tiles too large for
shared memory, more than 65535 images) run ``lowrank_conv2d_reference`` with a
one-time warning, as does a build without ``fusenas._C_cuda``.

By default the CUDA op runs the two factors as cuDNN convs (the reference),
not the fused kernels: on an H100 the fused kernels were slower than cuDNN in
every benchmarked case (docs/benchmarks/cuda.md). FUSENAS_LOWRANK_CUDA
=fused selects them (read at each call).

The native launch helpers take the extension module as an argument, so the
tests drive the same code with ``fusenas._C_cuda_emu`` (the kernels' block
bodies run on the host) on machines without a GPU.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from types import ModuleType

import torch

from fusenas.ops import _native
from fusenas.ops.lowrank_conv import (
    apply_epilogue,
    check_backward_args,
    check_epilogue,
    check_lowrank_args,
    lowrank_conv2d_backward_reference,
    lowrank_conv2d_reference,
    output_size,
)

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_SCHEME_CODE = {"channel": 0, "spatial": 1}
_MAX_IMAGES = 65535  # the kernels put the image index in gridDim.z
_MAX_DIM = 1 << 22  # channels / rank / rows / columns: 32-bit index math with margin


CUDA_PATHS = ("cudnn", "fused")


def cuda_path() -> str:
    """The CUDA path FUSENAS_LOWRANK_CUDA selects: "cudnn" (default) or "fused"."""
    path = os.environ.get("FUSENAS_LOWRANK_CUDA", "cudnn").strip().lower() or "cudnn"
    if path not in CUDA_PATHS:
        raise ValueError(
            f"FUSENAS_LOWRANK_CUDA: expected one of {', '.join(CUDA_PATHS)}, got {path!r}"
        )
    return path


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when dense in NCHW or channels_last order, else an NCHW copy."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(t) else torch.contiguous_format


def lowrank_problem(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    kh: int,
    kw: int,
    sm_count: int,
) -> tuple:
    """The problem tuple of the native functions (pyext/fused_op_bindings.h).

    sm_count: the device's multiprocessors (sizes the grids).
    """
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    return (
        n, c, h, w, w1.shape[0], w2.shape[0], kh, kw, sh, sw, ph, pw, dh, dw,
        _SCHEME_CODE[scheme], _is_channels_last(x), _DTYPE_CODE.get(x.dtype, 0), sm_count,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def cuda_plan(ext: ModuleType, problem: tuple) -> dict:
    """ext.lowrank_conv2d_cuda_plan(problem), cached: tile sizes, Ho / Wo / Wt, ok (read-only)."""
    return ext.lowrank_conv2d_cuda_plan(problem)


def unsupported_reason(ext: ModuleType, x: torch.Tensor, problem: tuple) -> str | None:
    """Why the native kernels cannot run this problem, or None when they can."""
    if x.dtype not in _DTYPE_CODE:
        return f"no CUDA kernel for {x.dtype}"
    if x.shape[0] > _MAX_IMAGES:
        return f"more than {_MAX_IMAGES} images in a batch"
    n, c, h, w, r, o = problem[:6]
    if max(c, h, w, r, o) >= _MAX_DIM:
        return f"a dimension >= {_MAX_DIM}"
    if not cuda_plan(ext, problem)["ok"]:
        return "kernel / dilation too large for the shared-memory tiles"
    return None


def lowrank_forward_native(
    ext: ModuleType,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: torch.Tensor | None,
    problem: tuple,
    *,
    stream: int,
) -> torch.Tensor:
    """y through ext.lowrank_conv2d_forward_cuda; x dense, arguments validated."""
    n, o = problem[0], problem[5]
    plan = cuda_plan(ext, problem)
    ho, wo = plan["Ho"], plan["Wo"]
    y = torch.empty((n, o, ho, wo), dtype=x.dtype, device=x.device, memory_format=_format(x))
    if n == 0:
        return y
    w1c, w2c = w1.contiguous(), w2.contiguous()
    bc = None if bias is None else bias.contiguous()
    ext.lowrank_conv2d_forward_cuda(
        problem, x.data_ptr(), w1c.data_ptr(), w2c.data_ptr(),
        0 if bc is None else bc.data_ptr(), y.data_ptr(), stream,
    )  # fmt: skip
    return y


def lowrank_backward_native(
    ext: ModuleType,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    problem: tuple,
    output_mask: Sequence[bool],
    *,
    stream: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_w1, grad_w2, grad_bias) through ext.lowrank_conv2d_backward_cuda.

    Unrequested outputs are empty tensors. Weight gradients are reduced in
    float32 and cast to the weights' dtype here.
    """
    want_x, want_w1, want_w2, want_b = (bool(m) for m in output_mask)
    fmt = _format(x)
    empty = x.new_empty(0)
    f32 = {"dtype": torch.float32, "device": x.device}
    gx = torch.empty_like(x, memory_format=fmt) if want_x else None
    gw1 = torch.empty(w1.shape, **f32) if want_w1 else None
    gw2 = torch.empty(w2.shape, **f32) if want_w2 else None
    gb = torch.empty(w2.shape[0], **f32) if want_b else None
    if x.shape[0] == 0:
        for t in (gx, gw1, gw2, gb):
            if t is not None:
                t.zero_()
    elif want_x or want_w1 or want_w2 or want_b:
        plan = cuda_plan(ext, problem)
        n, r = x.shape[0], w1.shape[0]
        ws_shape = (n, r, plan["Ho"], plan["Wt"])
        # float32 rank-r tensors (R/O of grad_out): t for grad_w2, dL/dt for grad_x / grad_w1.
        t_ws = torch.empty(ws_shape, **f32, memory_format=fmt) if want_w2 else None
        gt_ws = torch.empty(ws_shape, **f32, memory_format=fmt) if want_x or want_w1 else None
        go = grad_out.contiguous(memory_format=fmt)
        w1c, w2c = w1.contiguous(), w2.contiguous()
        ext.lowrank_conv2d_backward_cuda(
            problem, go.data_ptr(), x.data_ptr(), w1c.data_ptr(), w2c.data_ptr(),
            *(0 if t is None else t.data_ptr() for t in (gx, gw1, gw2, gb, t_ws, gt_ws)),
            stream,
        )  # fmt: skip
    return (
        empty if gx is None else gx,
        empty if gw1 is None else gw1.to(x.dtype),
        empty if gw2 is None else gw2.to(x.dtype),
        empty if gb is None else gb.to(x.dtype),
    )


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_sm_count(x: torch.Tensor) -> int:
    """Multiprocessors of x's GPU; 1 when x is not on a CUDA device (reference path)."""
    if x.device.type != "cuda":
        return 1
    return _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())


def _lowrank_conv2d_cuda(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    kh, kw = check_lowrank_args(x, w1, w2, bias, scheme, stride, padding, dilation)
    ho, wo = output_size(x.shape, (kh, kw), _pair(stride), _pair(padding), _pair(dilation))
    check_epilogue(residual, activation, x, (x.shape[0], w2.shape[0], ho, wo))
    if cuda_path() == "cudnn":
        return lowrank_conv2d_reference(
            x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation
        )
    if residual is not None or activation != "none":
        # The CUDA kernel has no epilogue: the conv, then the add and ReLU by torch.
        y = _lowrank_conv2d_cuda(x, w1, w2, bias, scheme, stride, padding, dilation)
        return apply_epilogue(y, residual, activation)
    ext = _native.cuda()
    x = _dense(x)
    problem = lowrank_problem(
        x, w1, w2, scheme, stride, padding, dilation, kh, kw, _device_sm_count(x)
    )
    reason = "fusenas._C_cuda not built" if ext is None else unsupported_reason(ext, x, problem)
    if reason is not None:
        _native.warn_fallback("lowrank_conv2d", reason)
        return lowrank_conv2d_reference(x, w1, w2, bias, scheme, stride, padding, dilation)
    with torch.cuda.device(x.device):
        return lowrank_forward_native(
            ext, x, w1, w2, bias, problem, stream=torch.cuda.current_stream().cuda_stream
        )


def _lowrank_conv2d_backward_cuda(
    grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate=None
):
    # The CUDA forward keeps no intermediate (lowrank_conv2d routes only CPU tensors to
    # lowrank_conv2d_with_intermediate); a given one is not needed: the kernel recomputes it.
    kh, kw = check_backward_args(
        grad_out, x, w1, w2, scheme, stride, padding, dilation, intermediate
    )
    if len(output_mask) != 4:
        raise ValueError(f"output_mask: expected 4 booleans, got {list(output_mask)}")
    if cuda_path() == "cudnn":
        return lowrank_conv2d_backward_reference(
            grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate
        )
    ext = _native.cuda()
    x = _dense(x)
    problem = lowrank_problem(
        x, w1, w2, scheme, stride, padding, dilation, kh, kw, _device_sm_count(x)
    )
    reason = "fusenas._C_cuda not built" if ext is None else unsupported_reason(ext, x, problem)
    if reason is not None:
        _native.warn_fallback("lowrank_conv2d_backward", reason)
        return lowrank_conv2d_backward_reference(
            grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate
        )
    with torch.cuda.device(x.device):
        return lowrank_backward_native(
            ext, grad_out, x, w1, w2, problem, output_mask,
            stream=torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip


torch.library.impl("fusenas::lowrank_conv2d", "CUDA")(_lowrank_conv2d_cuda)
torch.library.impl("fusenas::lowrank_conv2d_backward", "CUDA")(_lowrank_conv2d_backward_cuda)

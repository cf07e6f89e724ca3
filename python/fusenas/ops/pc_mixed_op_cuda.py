"""CUDA kernels of torch.ops.fusenas.pc_mixed_op and pc_mixed_op_backward.

Registers the "CUDA" implementations of the two ops that fusenas.ops.pc_mixed_op
defines (schema, fake kernels, autograd and the CPU kernel live there).
Arguments are validated by that module's ``check_pc_mixed_args`` before any
native call; float64 (and a build without ``fusenas._C_cuda``) runs
``pc_mixed_op_reference`` with a one-time warning.

The native launch helpers take the extension module as an argument, so the
tests drive the same code with ``fusenas._C_cuda_emu`` (the kernels' block
bodies run on the host) on machines without a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType

import torch

from fusenas.ops import _native
from fusenas.ops.pc_mixed_op import (
    candidate_kinds,
    check_pc_mixed_args,
    memory_format_of,
    pc_mixed_op_backward_reference,
    pc_mixed_op_reference,
)

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_POOL_ROWS = {"max_pool_3x3": 0, "avg_pool_3x3": 1}
_MAX_PARAMS = 8  # parametric candidates the kernels take (PC-DARTS has at most 5)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when dense in NCHW or channels_last order, else an NCHW copy."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _view(t: torch.Tensor) -> tuple[int, int, int, int, int]:
    return (t.data_ptr(), *t.stride())


def pc_problem(x: torch.Tensor, ops: Sequence[str], k: int, stride: int, eps: float) -> tuple:
    """The problem tuple of the native functions (pyext/fused_op_bindings.h)."""
    n, c, h, w = x.shape
    kinds = list(candidate_kinds(tuple(ops), stride))
    return (n, c, h, w, k, stride, float(eps), kinds, _DTYPE_CODE.get(x.dtype, 0))


def unsupported_reason(x: torch.Tensor, param_outs: Sequence[torch.Tensor]) -> str | None:
    if x.dtype not in _DTYPE_CODE:
        return f"no CUDA kernel for {x.dtype}"
    if len(param_outs) > _MAX_PARAMS:
        return f"more than {_MAX_PARAMS} parametric candidates"
    if max(x.shape[1:]) >= 1 << 24 or x.shape[0] >= 1 << 31:
        return "a dimension too large for 32-bit indices"
    return None


def pc_forward_native(
    ext: ModuleType,
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    edge_scale: torch.Tensor | None,
    pool_stats: torch.Tensor | None,
    ops: Sequence[str],
    problem: tuple,
    ho: int,
    wo: int,
    *,
    sm_count: int,
    stream: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, stats) through ext.pc_mixed_forward_cuda; tensors dense, arguments validated."""
    n, c = x.shape[:2]
    ck = c // problem[4]
    out = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device,
                      memory_format=memory_format_of(x))  # fmt: skip
    stats = torch.zeros((2, 2, ck), dtype=torch.float32, device=x.device)
    ws = torch.empty(ext.pc_mixed_workspace(problem)[0], dtype=torch.float64, device=x.device)
    weights = weights.contiguous()
    pool = None if pool_stats is None else pool_stats.contiguous()
    ext.pc_mixed_forward_cuda(
        problem, _view(x), [_view(p) for p in param_outs], weights.data_ptr(),
        0 if edge_scale is None else edge_scale.data_ptr(), 0 if pool is None else pool.data_ptr(),
        _view(out), stats.data_ptr(), ws.data_ptr(), sm_count, stream,
    )  # fmt: skip
    if pool is not None:
        # The statistics used: the given ones, for the pools that are in ops.
        for name, row in _POOL_ROWS.items():
            if name in ops:
                stats[row] = pool[row]
    return out, stats


def pc_backward_native(
    ext: ModuleType,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    edge_scale: torch.Tensor | None,
    stats: torch.Tensor,
    batch_stats: bool,
    problem: tuple,
    *,
    sm_count: int,
    stream: int,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(grad_x, grad_param_outs, grad_weights, grad_edge_scale) through the native backward.

    grad_edge_scale is 0-dim when edge_scale is given, else empty (shape (0,)).
    """
    grad_x = torch.empty_like(x, memory_format=memory_format_of(x))
    grad_params = [torch.empty_like(p, memory_format=memory_format_of(p)) for p in param_outs]
    grad_w = torch.empty(weights.shape[0], dtype=x.dtype, device=x.device)
    grad_scale = x.new_empty((0,) if edge_scale is None else ())
    ws = torch.empty(ext.pc_mixed_workspace(problem)[1], dtype=torch.float64, device=x.device)
    weights = weights.contiguous()
    ext.pc_mixed_backward_cuda(
        problem, _view(grad_out), _view(x), [_view(p) for p in param_outs], weights.data_ptr(),
        0 if edge_scale is None else edge_scale.data_ptr(), stats.contiguous().data_ptr(),
        bool(batch_stats), _view(grad_x), [_view(g) for g in grad_params], grad_w.data_ptr(),
        0 if edge_scale is None else grad_scale.data_ptr(), ws.data_ptr(), sm_count, stream,
    )  # fmt: skip
    return grad_x, grad_params, grad_w, grad_scale


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pc_mixed_cuda(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps):
    _, ho, wo = check_pc_mixed_args(
        x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
    )
    ext = _native.cuda()
    reason = "fusenas._C_cuda not built" if ext is None else unsupported_reason(x, param_outs)
    if reason is not None:
        _native.warn_fallback("pc_mixed_op", reason)
        return pc_mixed_op_reference(
            x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
        )
    x = _dense(x)
    params = [_dense(p) for p in param_outs]
    with torch.cuda.device(x.device):
        return pc_forward_native(
            ext, x, params, weights, edge_scale, pool_stats, ops,
            pc_problem(x, ops, k, stride, eps), ho, wo,
            sm_count=_sm_count(torch.cuda.current_device()),
            stream=torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip


def check_backward_extras(grad_out, x, stats, ck: int, ho: int, wo: int) -> None:
    """Validates what pc_mixed_op_backward adds to pc_mixed_op's arguments."""
    if not isinstance(grad_out, torch.Tensor):
        raise TypeError(f"grad_out: expected a torch.Tensor, got {type(grad_out).__name__}")
    expected = (x.shape[0], x.shape[1], ho, wo)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(
            f"grad_out: expected {x.dtype} on {x.device} (x's), got {grad_out.dtype} on "
            f"{grad_out.device}"
        )
    if (
        not isinstance(stats, torch.Tensor)
        or stats.device != x.device
        or stats.dtype != torch.float32
        or tuple(stats.shape) != (2, 2, ck)
    ):
        got = f"{stats.dtype} {tuple(stats.shape)}" if isinstance(stats, torch.Tensor) else stats
        raise ValueError(f"stats: expected float32 of shape (2, 2, {ck}) on {x.device}, got {got}")


def _pc_mixed_backward_cuda(
    grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
):
    # Given (eval) statistics are checked as pool_stats: a 1x1 map is fine then.
    ck, ho, wo = check_pc_mixed_args(
        x, param_outs, weights, edge_scale, None if batch_stats else stats, ops, k, stride, eps
    )
    check_backward_extras(grad_out, x, stats, ck, ho, wo)
    ext = _native.cuda()
    reason = "fusenas._C_cuda not built" if ext is None else unsupported_reason(x, param_outs)
    if reason is not None:
        _native.warn_fallback("pc_mixed_op_backward", reason)
        return pc_mixed_op_backward_reference(
            grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
        )
    x = _dense(x)
    with torch.cuda.device(x.device):
        return pc_backward_native(
            ext, _dense(grad_out), x, [_dense(p) for p in param_outs], weights, edge_scale,
            stats, batch_stats, pc_problem(x, ops, k, stride, eps),
            sm_count=_sm_count(torch.cuda.current_device()),
            stream=torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip


torch.library.impl("fusenas::pc_mixed_op", "CUDA")(_pc_mixed_cuda)
torch.library.impl("fusenas::pc_mixed_op_backward", "CUDA")(_pc_mixed_backward_cuda)

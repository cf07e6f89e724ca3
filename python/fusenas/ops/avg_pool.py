"""Average pooling that sidesteps a torch CUDA bug on channels_last inputs.

torch's CUDA avg_pool2d backward returns silently wrong input gradients for
channels_last inputs when padding > 0 (pytorch/pytorch#188344: the NHWC backward
kernel drops the padding offset; seen here with torch 2.11.0+cu130 on an H100,
for dense channels_last tensors and channel slices of them). The forward, the
NCHW kernels and the CPU kernels are right. On CUDA, these helpers run padded
pools of non-NCHW tensors on an NCHW copy and hand back x's memory format; the
copy costs one pass over x, paid only where the torch kernel would be wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _needs_nchw(x: torch.Tensor, padding) -> bool:
    pads = padding if isinstance(padding, (tuple, list)) else (padding,)
    return x.is_cuda and any(p > 0 for p in pads) and not x.is_contiguous()


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def avg_pool2d(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """F.avg_pool2d with the same arguments and result, correct gradients on CUDA channels_last.

    x: (N, C, H, W) or (C, H, W), any float dtype; the result keeps x's memory
    format (channels_last when x is dense in it).
    """
    if not _needs_nchw(x, padding):
        return F.avg_pool2d(
            x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
    y = F.avg_pool2d(
        x.contiguous(), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    return y.contiguous(memory_format=_format_of(x))


def avg_pool2d_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """aten.avg_pool2d_backward (the grad of x, shaped like x), correct on CUDA channels_last."""
    if not _needs_nchw(x, padding):
        return torch.ops.aten.avg_pool2d_backward(
            grad_out, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
            divisor_override,
        )  # fmt: skip
    gx = torch.ops.aten.avg_pool2d_backward(
        grad_out.contiguous(), x.contiguous(), kernel_size, stride, padding, ceil_mode,
        count_include_pad, divisor_override,
    )  # fmt: skip
    return gx.contiguous(memory_format=_format_of(x))

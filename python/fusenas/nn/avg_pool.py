"""nn.AvgPool2d with correct CUDA channels_last gradients (see fusenas.ops.avg_pool)."""

from __future__ import annotations

import torch
from torch import nn

from fusenas.ops.avg_pool import avg_pool2d


class AvgPool2d(nn.AvgPool2d):
    """Drop-in nn.AvgPool2d (same arguments, no state) that pools padded CUDA
    channels_last inputs on an NCHW copy, around pytorch/pytorch#188344."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override,
        )  # fmt: skip

"""Candidate operations of the DARTS / PC-DARTS and NAS-Bench-201 cell spaces.

Each takes (B, C_in, H, W) and returns (B, C_out, H/stride, W/stride). Search
uses BatchNorm with ``affine=False``; the evaluation networks use ``affine=True``.
``CANDIDATES[name](C, stride, affine)`` builds one; the parameter-free ones
(none, pools, identity skip) are computed inside the fused mixed op during
search and exist here for the reference formulation and derived networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fusenas.nn.avg_pool import AvgPool2d


class ReLUConvBN(nn.Sequential):
    """ReLU, k x k conv, BN (the cells' input preprocessing and NAS-Bench-201's nor_conv)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise k x k conv (dilation d), pointwise 1 x 1 conv, BN."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two DilConv blocks at dilation 1; only the first is strided (DARTS' sep_conv)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """ReLU, then two 1 x 1 stride-2 convs on x and on x shifted by one pixel, concatenated, BN.

    Halves H and W (even sizes) without discarding every other pixel. The
    stride is taken by slicing (even pixels for conv_1, odd ones for conv_2),
    then 1 x 1 convs of stride 1: the same values as the strided convs, and
    torch 2.13's CPU backward of a strided 1 x 1 conv on a channels_last input
    with a few channels (2-4, as PC-DARTS' partial channels give) returns wrong
    weight gradients and can corrupt the heap or hang on AVX2 CPUs (seen on an
    AMD Zen 3).
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"c_out: FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        even, odd = x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]
        return self.bn(torch.cat([self.conv_1(even), self.conv_2(odd)], dim=1))


class Zero(nn.Module):
    """The "none" candidate: zeros at the output resolution."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


CANDIDATES: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, stride, affine: Zero(stride),
    # In search, the mixed op follows each pool with BN(affine=False); derived cells do not.
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride, 1),
    "avg_pool_3x3": lambda c, stride, affine: AvgPool2d(3, stride, 1, count_include_pad=False),
    "skip_connect": lambda c, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    ),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
    # NAS-Bench-201's convolutions.
    "nor_conv_1x1": lambda c, stride, affine: ReLUConvBN(c, c, 1, stride, 0, affine),
    "nor_conv_3x3": lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 1, affine),
}

# Computed inside the fused mixed op (no parameters); skip_connect only at stride 1.
PARAMETER_FREE = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")


def is_parametric(name: str, stride: int) -> bool:
    """Whether candidate ``name`` at ``stride`` has weights (and so runs as a torch module)."""
    return name not in PARAMETER_FREE or (name == "skip_connect" and stride != 1)


def build_candidate(name: str, c: int, stride: int, affine: bool = True) -> nn.Module:
    """The module of candidate ``name`` on ``c`` channels at ``stride``."""
    if name not in CANDIDATES:
        raise ValueError(f"name: expected one of {sorted(CANDIDATES)}, got {name!r}")
    return CANDIDATES[name](c, stride, affine)

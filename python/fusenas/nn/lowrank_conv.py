"""LowRankConv2d: a conv stored as TRP's two factors, run by the fused op.

The module holds ``weight1`` (the first factor: kh x kw conv C -> r for the
"channel" scheme, kh x 1 for "spatial") and ``weight2`` (1 x 1, or 1 x kw,
r -> N), plus an optional bias on the second factor, and calls
``fusenas.ops.lowrank_conv2d``, which computes both factors in one pass with
the rank-r intermediate kept in cache. ``from_conv`` builds it from a dense
nn.Conv2d by truncated SVD; ``to_conv`` goes back.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from fusenas.nn.lowrank_factors import check_scheme, decompose_weight, reconstruct_weight
from fusenas.ops.lowrank_conv import lowrank_conv2d


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class LowRankConv2d(nn.Module):
    """A k x k conv factored into two convs through a rank-r bottleneck.

    Args:
        in_channels: C.
        out_channels: N.
        kernel_size: (kh, kw) of the equivalent dense conv (int or pair).
        rank: r >= 1, channels of the intermediate.
        scheme: "channel" (kh x kw conv C -> r, then 1 x 1 r -> N) or "spatial"
            (kh x 1 conv C -> r, then 1 x kw r -> N).
        stride, padding, dilation: those of the equivalent dense conv; the
            spatial scheme applies the vertical parts in factor 1 and the
            horizontal parts in factor 2.
        bias: add a learnable (N,) bias after factor 2.

    Input (B, C, H, W) float32 or bfloat16 (float16 too on CUDA), NCHW or
    channels_last; output (B, N, Ho, Wo) in the same dtype and memory format.

    Attribute ``save_intermediate`` (default None: automatic): when training on
    CPU, True keeps factor 1's output (float32, B x r x Ho x W) from the forward
    for weight2's gradient, as two separate convs would; False recomputes it in
    the backward instead (less memory held, one more factor-1 pass); None keeps
    it when factor 1 is costly to recompute. See :func:`fusenas.ops.lowrank_conv2d`.
    """

    save_intermediate: bool | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        scheme: str = "channel",
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_scheme(scheme)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("rank", rank)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        self.in_channels, self.out_channels, self.scheme = in_channels, out_channels, scheme
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        kh, kw = self.kernel_size
        if scheme == "channel":
            shape1, shape2 = (rank, in_channels, kh, kw), (out_channels, rank, 1, 1)
        else:
            shape1, shape2 = (rank, in_channels, kh, 1), (out_channels, rank, 1, kw)
        like = {"device": device, "dtype": dtype}
        self.weight1 = nn.Parameter(torch.empty(shape1, **like))
        self.weight2 = nn.Parameter(torch.empty(shape2, **like))
        self.bias = nn.Parameter(torch.empty(out_channels, **like)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default init on each factor.
        for w in (self.weight1, self.weight2):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight2[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def rank(self) -> int:
        return self.weight1.shape[0]

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, activation: str = "none"
    ) -> torch.Tensor:
        """activation(conv(x) + residual): the residual add and ReLU are optional
        and fused into the kernel's output pass (see :func:`fusenas.nn.fuse_epilogues_`,
        which rewrites ``relu(conv(x) + r)`` into this call). A residual that is not of
        the output's shape, dtype and device (e.g. a broadcast) is added after the
        conv instead, with torch's promotion rules."""
        if residual is not None and (
            residual.dtype != x.dtype or residual.device != x.device or tuple(residual.shape)
            != (x.shape[0], self.out_channels, *self.output_size((x.shape[-2], x.shape[-1])))
        ):  # fmt: skip
            y = self(x) + residual
            return torch.relu(y) if activation == "relu" else y
        return lowrank_conv2d(
            x, self.weight1, self.weight2, self.bias, scheme=self.scheme, stride=self.stride,
            padding=self.padding, dilation=self.dilation, residual=residual, activation=activation,
            save_intermediate=self.save_intermediate,
        )  # fmt: skip

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input."""
        h, w = input_size
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        return _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)

    def macs(self, input_size: tuple[int, int]) -> int:
        """Multiply-accumulates of both factors for one (H, W) input image."""
        h, w = input_size
        ho, wo = self.output_size(input_size)
        r, c, n = self.rank, self.in_channels, self.out_channels
        kh, kw = self.kernel_size
        if self.scheme == "channel":
            return ho * wo * (r * c * kh * kw + n * r)
        # Factor 1 keeps the full input width (its horizontal part is 1 x 1).
        return ho * w * r * c * kh + ho * wo * n * r * kw

    def dense_macs(self, input_size: tuple[int, int]) -> int:
        """Multiply-accumulates of the equivalent dense conv for one (H, W) input image."""
        ho, wo = self.output_size(input_size)
        kh, kw = self.kernel_size
        return ho * wo * self.out_channels * self.in_channels * kh * kw

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        scheme: str = "channel",
        *,
        rank: int | None = None,
        energy: float | None = None,
        value_threshold: float | None = None,
    ) -> LowRankConv2d:
        """Factors ``conv`` by truncated SVD; give exactly one of rank / energy / value_threshold.

        energy e keeps the smallest r whose top-r squared singular values reach
        e of the total; value_threshold t keeps the singular values >= t.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv: groups={conv.groups} is not supported (expected 1)")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"conv: expected numeric zero padding, got padding={conv.padding!r} "
                f"padding_mode={conv.padding_mode!r}"
            )
        w1, w2 = decompose_weight(conv.weight, scheme, rank, energy, value_threshold)
        module = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, w1.shape[0], scheme,
            conv.stride, conv.padding, conv.dilation, conv.bias is not None,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            module.weight1.copy_(w1)
            module.weight2.copy_(w2)
            if conv.bias is not None:
                module.bias.copy_(conv.bias)
        return module

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """The dense nn.Conv2d computing the same function (weight = factor product)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, bias=self.bias is not None, device=self.weight1.device,
            dtype=self.weight1.dtype,
        )  # fmt: skip
        dense = reconstruct_weight(
            self.weight1.to(torch.float64), self.weight2.to(torch.float64), self.scheme
        )
        conv.weight.copy_(dense)
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def describe(self) -> dict:
        """JSON-able description of the layer's structure (used by fusenas.quant.io)."""
        return {
            "type": "LowRankConv2d",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "rank": self.rank,
            "scheme": self.scheme,
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "has_bias": self.bias is not None,
        }

    @classmethod
    def from_description(cls, desc: dict) -> LowRankConv2d:
        """Module (uninitialised values) matching :meth:`describe`'s output."""
        return cls(
            desc["in_channels"], desc["out_channels"], tuple(desc["kernel_size"]), desc["rank"],
            desc["scheme"], tuple(desc["stride"]), tuple(desc["padding"]),
            tuple(desc["dilation"]), desc["has_bias"],
        )  # fmt: skip

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"rank={self.rank}, scheme={self.scheme!r}, stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")

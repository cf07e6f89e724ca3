"""QuantConv2d: a groups=1 Conv2d with a packed k-bit weight, run as a GEMM.

A convolution is a matmul of input patches (B * H' * W', K) against the weight
reshaped to (N, K), K = kh * kw * C, in (kh, kw, C) order: the weight is stored
as ``conv.weight.permute(0, 2, 3, 1).reshape(N, K)``, and the patches are
gathered in the same order from the channels-last input:
- 1 x 1 kernels without padding read pixels directly: the channels-last view
  ``x.permute(0, 2, 3, 1)`` already is the (pixels, C) matrix (no copy when the
  input is channels-last; strides > 1 subsample first);
- k x k kernels use an im2col built from one ``as_strided`` view of the padded
  (B, H, W, C) input, shaped (B, H', W', kh, kw, C), and one copy.
Why not ``F.unfold``: unfold's (C, kh, kw) column order makes the copy move one
float at a time (consecutive columns are pixels apart), it loops per image, and
its (B, K, L) result needs a transpose copy before the GEMM. Gathering (kh, kw, C)
rows copies runs of C contiguous floats instead: 4-10x faster on 3 x 3 convs
with 16-64 channels at batch 64 (measured on the 2-core AVX-512 dev machine),
for the same GEMM. Both feed the same ``kbit_matmul``; its (B, H', W', N)
output is returned as an NCHW-shaped view with channels-last strides (no copy),
as PyTorch's own conv does for channels-last input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn._packed_base import PackedWeightModule, check_positive_int
from fusenas.quant.packed import PackedWeight, dequantize, quantize_weight


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value)
    ):
        raise ValueError(f"{name}: expected an int >= {minimum} or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


class QuantConv2d(PackedWeightModule):
    """2-D convolution (groups=1, zero padding) with a packed k-bit weight.

    Args:
        in_channels, out_channels: C and N.
        kernel_size, stride, dilation: int or (h, w) pair.
        padding: int, (h, w) pair, ``"valid"`` or ``"same"`` (stride 1).
        bias: whether the module has a bias (float, cast to the input's dtype).
        bits: 2..8 or ``"ternary"``.
        group_size: elements of K = kh * kw * C per scale (a multiple of 16
            dividing K), or None for one scale per output channel.
        symmetric: symmetric codes or per-group zero points.
        device: where the (zero-initialised) buffers live.

    Build one from a trained layer with :meth:`from_float`.

    Buffers: ``codes`` uint8 (N, row_bytes(K, bits)), ``scales`` float32
    (N, K // group_size), ``zeros`` (asymmetric) or None, ``bias`` (N,) or None;
    the weight's K axis runs in (kh, kw, C) order (see :meth:`dequantized_weight`).

    ``dense_min_rows``: on CPU, a call with at least this many output pixels
    (B * H' * W') dequantizes the weight for the call and runs torch's dense
    conv, as bitsandbytes does for large batches. There the GEMM is compute
    bound, oneDNN's conv beats the k-bit GEMM (ResNet-20 at batch 64: 2x) and
    unpacking the weight once costs little. None: always ``kbit_matmul``.
    """

    dense_min_rows: int | None = 8192

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        bits: int | str = 4,
        group_size: int | None = None,
        symmetric: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                if self.stride != (1, 1):
                    raise ValueError("padding: 'same' needs stride=1")
            else:
                raise ValueError(f"padding: expected 'valid', 'same' or ints, got {padding!r}")
        if padding == "same":
            th, tw = dh * (kh - 1), dw * (kw - 1)
            # Like PyTorch: the odd extra pixel goes to the bottom / right.
            self._pad4 = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
            self.padding: tuple[int, int] | str = "same"
        else:
            ph, pw = _pair(padding, "padding", 0)
            self._pad4 = (pw, pw, ph, ph)
            self.padding = (ph, pw)
        k = in_channels * kh * kw
        self._init_packed(out_channels, k, bits, group_size, symmetric, bias, device)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        bits: int | str = 4,
        group_size: int | None = 128,
        symmetric: bool = True,
    ) -> QuantConv2d:
        """Quantizes ``conv.weight`` as (out_channels, kh * kw * in_channels), (kh, kw, C) order.

        Args:
            conv: a float ``nn.Conv2d`` with groups=1 and padding_mode='zeros'.
            bits, group_size, symmetric: as in :func:`fusenas.quant.quantize_weight`
                (``group_size`` must divide K = in_channels * kh * kw).
        Returns:
            QuantConv2d on ``conv``'s device with the same geometry.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv: only groups=1 is supported, got groups={conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"conv: only padding_mode='zeros' is supported, got {conv.padding_mode!r}"
            )
        w = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        pw = quantize_weight(w, bits, group_size, symmetric)
        mod = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.bias is not None, "ternary" if pw.ternary else pw.bits,
            pw.group_size, symmetric, conv.weight.device,
        )  # fmt: skip
        mod._load_packed(pw, conv.bias)
        return mod

    @classmethod
    def from_packed(
        cls,
        weight: PackedWeight,
        bias: torch.Tensor | None,
        in_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> QuantConv2d:
        """Wraps a PackedWeight (out_channels, kh * kw * in_channels), K in (kh, kw, C) order."""
        if not isinstance(weight, PackedWeight):
            raise TypeError(f"weight: expected a PackedWeight, got {type(weight).__name__}")
        bits: int | str = "ternary" if weight.ternary else weight.bits
        mod = cls(
            in_channels, weight.out_features, kernel_size, stride, padding, dilation,
            bias is not None, bits, weight.group_size, weight.symmetric, weight.device,
        )  # fmt: skip
        mod._load_packed(weight, bias)
        return mod

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H', W') for an (H, W) input."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        wl, wr, ht, hb = self._pad4
        ho = (h + ht + hb - dh * (kh - 1) - 1) // sh + 1
        wo = (w + wl + wr - dw * (kw - 1) - 1) // sw + 1
        return ho, wo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) or (C, H, W) float -> (B, N, H', W') (channels-last strides)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"x: expected shape (B, {self.in_channels}, H, W) or ({self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        b, _, h, w = x.shape
        ho, wo = self.output_size(h, w)
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"x: input of size {h}x{w} is smaller than the (dilated) kernel "
                f"{self.kernel_size} with padding {self.padding}"
            )
        if (
            self.dense_min_rows is not None
            and x.device.type == "cpu"
            and b * ho * wo >= self.dense_min_rows
        ):
            y = self._dense_conv(x)
            return y.squeeze(0) if unbatched else y
        if self.kernel_size == (1, 1) and self._pad4 == (0, 0, 0, 0):
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            rows = x.permute(0, 2, 3, 1).contiguous()  # (B, H', W', C): a view if channels-last
        else:
            rows = self._im2col(x, ho, wo)  # (B, H', W', kh * kw * C)
        y = self._kbit_matmul(rows).permute(0, 3, 1, 2)  # (B, N, H', W')
        return y.squeeze(0) if unbatched else y

    def _dense_conv(self, x: torch.Tensor) -> torch.Tensor:
        """torch's conv with the weight dequantized for this call (large batches)."""
        w = self.dequantized_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if any(self._pad4):
            x = F.pad(x, self._pad4)
        return F.conv2d(x, w, bias, self.stride, 0, self.dilation)

    def _im2col(self, x: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        """Patches of x (B, C, H, W) as contiguous (B, H', W', kh * kw * C) rows."""
        xh = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if any(self._pad4):
            wl, wr, ht, hb = self._pad4
            xh = F.pad(xh, (0, 0, wl, wr, ht, hb))
        xh = xh.contiguous()
        b, _, _, c = xh.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        s_b, s_h, s_w, _ = xh.stride()
        patches = xh.as_strided(
            (b, ho, wo, kh, kw, c), (s_b, sh * s_h, sw * s_w, dh * s_h, dw * s_w, 1)
        )
        return patches.reshape(b, ho, wo, kh * kw * c).contiguous()  # the one gather copy

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the module applies, float32 (out_channels, in_channels, kh, kw)."""
        kh, kw = self.kernel_size
        w = dequantize(self.packed).view(self.out_channels, kh, kw, self.in_channels)
        return w.permute(0, 3, 1, 2).contiguous()

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the layer (used by fusenas.quant.io)."""
        return {
            "type": "QuantConv2d",
            **self._packed_description(),
            "conv": {
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation),
                "weight_layout": "N,kh,kw,C",
            },
        }

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> QuantConv2d:
        """Empty module (zero buffers) matching :meth:`describe`'s output."""
        c = desc["conv"]
        if c.get("weight_layout") != "N,kh,kw,C":
            raise ValueError(f"desc: unknown conv weight layout {c.get('weight_layout')!r}")
        padding = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
        bits = "ternary" if desc["ternary"] else desc["bits"]
        return cls(
            c["in_channels"], c["out_channels"], tuple(c["kernel_size"]), tuple(c["stride"]),
            padding, tuple(c["dilation"]), desc["has_bias"], bits, desc["group_size"],
            desc["symmetric"],
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            + self._packed_repr()
        )

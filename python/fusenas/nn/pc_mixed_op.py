"""PartialChannelMixedOp: one PC-DARTS edge, run by the fused ``pc_mixed_op``.

The parametric candidates (separable / dilated convs, FactorizedReduce on a
stride-2 skip) are ordinary torch modules applied to the first C/K channels;
everything else of the edge (the parameter-free candidates with their
batch-norm, the weighted sum, the bypass, concat, channel shuffle and the edge
scale) happens in one fused op that stores nothing for backward beyond its
inputs. The running statistics of the pools' batch-norms are buffers here,
updated from the batch statistics the op returns, so ``eval()`` behaves as
PC-DARTS' nn.BatchNorm2d modules do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusenas.nn.darts_ops import CANDIDATES, build_candidate, is_parametric
from fusenas.ops.avg_pool import avg_pool2d
from fusenas.ops.pc_mixed_op import PC_DARTS_PRIMITIVES, pc_mixed_op


class PartialChannelMixedOp(nn.Module):
    """One edge of a PC-DARTS cell.

    Args:
        channels: C, channels of the edge's input and output.
        stride: 1, or 2 on reduction edges.
        k: proportion: C/k channels go through the candidates (C % k == 0).
        primitives: distinct candidate names in any order: PC_DARTS_PRIMITIVES, or
            NAS-Bench-201's (nor_conv_1x1 / nor_conv_3x3 run as parametric candidates).
        bn_momentum, bn_eps: of the pools' BatchNorm2d(affine=False).
        fused: run the fused op (default), or PC-DARTS' own formulation from
            eager torch ops (slice, every candidate, weighted sum, cat, shuffle),
            kept as the reference for tests and benchmarks. Both share
            parameters and buffers, so a state_dict moves between them.

    forward(x, weights, edge_scale=None): x (B, C, H, W) float32 (NCHW or
    channels_last; H, W even at stride 2), weights (len(primitives),) (the
    softmax of the edge's alphas), edge_scale a 0-dim tensor (the edge's
    normalised beta) or None. Returns (B, C, H/stride, W/stride).
    """

    def __init__(
        self,
        channels: int,
        stride: int = 1,
        k: int = 4,
        primitives: Sequence[str] = PC_DARTS_PRIMITIVES,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels % k:
            raise ValueError(f"channels: expected a positive multiple of k={k}, got {channels!r}")
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride!r}")
        primitives = tuple(primitives)
        unknown = [p for p in primitives if p not in CANDIDATES]
        if not primitives or unknown or len(set(primitives)) != len(primitives):
            raise ValueError(
                f"primitives: expected distinct names from {sorted(CANDIDATES)}, got {primitives}"
            )
        self.channels, self.stride, self.k, self.primitives = channels, stride, k, primitives
        self.bn_momentum, self.bn_eps, self.fused = bn_momentum, bn_eps, fused
        part = channels // k
        self.candidates = nn.ModuleDict(
            {p: build_candidate(p, part, stride, affine=False) for p in primitives
             if is_parametric(p, stride)}
        )  # fmt: skip
        # [max_pool, avg_pool] x (Ck,): running statistics of the pools' BN.
        self.register_buffer("running_mean", torch.zeros(2, part))
        self.register_buffer("running_var", torch.ones(2, part))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, edge_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.fused:
            return self._reference_forward(x, weights, edge_scale)
        part = x[:, : self.channels // self.k]
        outs = [m(part) for m in self.candidates.values()]
        pool_stats = None
        if not self.training:
            pool_stats = torch.stack([self.running_mean, self.running_var], dim=1)
        out, stats = pc_mixed_op(
            x, outs, weights, ops=self.primitives, k=self.k, stride=self.stride,
            edge_scale=edge_scale, eps=self.bn_eps, pool_stats=pool_stats,
        )  # fmt: skip
        if self.training:
            self._update_running_stats(stats, x)
        return out

    @torch.no_grad()
    def _update_running_stats(self, stats: torch.Tensor, x: torch.Tensor) -> None:
        # As nn.BatchNorm2d: the running variance takes the unbiased batch variance.
        ho = (x.shape[2] + self.stride - 1) // self.stride
        wo = (x.shape[3] + self.stride - 1) // self.stride
        n = x.shape[0] * ho * wo
        unbias = n / (n - 1) if n > 1 else 1.0
        m = self.bn_momentum
        self.running_mean.mul_(1 - m).add_(stats[:, 0].detach().float(), alpha=m)
        self.running_var.mul_(1 - m).add_(stats[:, 1].detach().float() * unbias, alpha=m)
        self.num_batches_tracked += 1

    def _reference_forward(
        self, x: torch.Tensor, weights: torch.Tensor, edge_scale: torch.Tensor | None
    ) -> torch.Tensor:
        # PC-DARTS' MixedOp, op for op; the pools' BN are F.batch_norm on this
        # module's buffers, which behaves (and updates them) as nn.BatchNorm2d.
        part_c = self.channels // self.k
        xa, xb = x[:, :part_c], x[:, part_c:]
        s = self.stride
        terms = []
        for i, name in enumerate(self.primitives):
            if name in self.candidates:
                y = self.candidates[name](xa)
            elif name == "none":
                y = xa[:, :, ::s, ::s].mul(0.0)
            elif name == "skip_connect":
                y = xa
            else:
                row = 0 if name == "max_pool_3x3" else 1
                y = (F.max_pool2d(xa, 3, s, 1) if row == 0
                     else avg_pool2d(xa, 3, s, 1, count_include_pad=False))  # fmt: skip
                y = F.batch_norm(
                    y, self.running_mean[row], self.running_var[row], training=self.training,
                    momentum=self.bn_momentum, eps=self.bn_eps,
                )  # fmt: skip
            terms.append(weights[i] * y)
        if self.training:
            self.num_batches_tracked += 1
        mixed = sum(terms)
        if self.k == 1:  # plain DARTS: no bypassed channels
            out = mixed
        else:
            out = torch.cat([mixed, F.max_pool2d(xb, 2, 2) if s == 2 else xb], dim=1)
        b, c, h, w = out.shape
        out = out.view(b, self.k, c // self.k, h, w).transpose(1, 2).reshape(b, c, h, w)
        return out if edge_scale is None else out * edge_scale

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, k={self.k}"

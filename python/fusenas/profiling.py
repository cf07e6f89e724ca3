"""Counting a model's multiply-accumulates and parameters, and timing it.

``count_macs`` runs one forward pass with hooks on the layers that do the
arithmetic (convs, linears, and fusenas' LowRankConv2d / QuantConv2d /
QuantLinear, which count what they really compute) and returns MACs per
image. Element-wise ops, pooling and batch-norm are not counted (the usual
convention of the papers' FLOP figures).
"""

from __future__ import annotations

import torch
from torch import nn

from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear
from fusenas.training import measure_latency


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    per_image_out = out[0].numel() if out.dim() > 1 else out.numel()
    if isinstance(module, LowRankConv2d):
        return module.macs((inp.shape[-2], inp.shape[-1]))
    if isinstance(module, (nn.Conv2d, QuantConv2d)):
        kh, kw = module.kernel_size
        groups = getattr(module, "groups", 1)
        return per_image_out * (module.in_channels // groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image_out * module.in_features
    if isinstance(module, QuantLinear):
        return per_image_out * module.packed.in_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one image through ``model`` (example: (B, C, H, W); B >= 1)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
            total += _layer_macs(module, inputs[0], output)

    kinds = (nn.Conv2d, nn.Linear, LowRankConv2d, QuantConv2d, QuantLinear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        model(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Parameters plus packed-weight elements (codes count as one each)."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        packed = getattr(m, "packed", None)
        if packed is not None:
            n += packed.out_features * packed.in_features
    return n


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` in milliseconds (eval mode)."""
    return 1e3 * measure_latency(model, x, repeats, warmup)


def largest_batch_within(points: list[tuple[int, float]], budget: float) -> int | None:
    """The largest batch whose memory fits ``budget``, from measured (batch, bytes) points.

    Peak memory is affine in the batch (weights + per-image activations): the
    line through the two largest measured batches is solved for ``budget``.
    None with fewer than two distinct batches or a non-increasing fit.
    """
    pts = sorted(points)
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return None
    (b0, m0), (b1, m1) = pts[-2], pts[-1]
    slope = (m1 - m0) / (b1 - b0)
    if slope <= 0:
        return None
    return int((budget - (m1 - slope * b1)) // slope)

"""Folding inference-mode batch norm into the convolution in front of it.

In eval mode a BatchNorm2d is a per-channel affine map,
``y = z * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, so it
can be merged into the conv that produces z: the conv's output rows are
scaled by s and its bias becomes ``bias * s + beta - mean * s``. Deployed
networks always do this (it removes one full pass over every activation);
it is exact up to float rounding.

Which BN follows which conv is read from the model's forward by torch.fx
(fusenas' modules and the convs kept as leaf modules; a forward fx cannot
trace is searched child by child): a BN is folded only when it has running
statistics, its input is a conv's output that nothing else reads, and neither
module is called anywhere else in that forward (shared weights). Folded BNs
are replaced by ``nn.Identity``, so the model keeps its own class and forward
code.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.pc_mixed_op import PartialChannelMixedOp
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear

_FOLDABLE = (nn.Conv2d, LowRankConv2d, QuantConv2d)
# fusenas modules validate their inputs in Python: fx must not trace into them.
_LEAVES = (*_FOLDABLE, QuantLinear, PartialChannelMixedOp)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def trace_leaves(model: nn.Module) -> torch.fx.Graph | None:
    """``model``'s forward as an fx graph, convs and fusenas' modules kept as single
    call_module nodes; None when fx cannot trace it (data-dependent control flow)
    or ``model`` is itself such a leaf: the graph passes then search
    :func:`inner_children` instead."""
    if isinstance(model, _LEAVES):
        return None
    try:
        return _LeafTracer().trace(model)
    except Exception:  # fx raises many kinds on control flow it cannot follow
        return None


def inner_children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children worth searching when ``model`` cannot be traced (leaves excluded)."""
    return [(n, c) for n, c in model.named_children() if not isinstance(c, _LEAVES)]


def conv_bn_pairs(model: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """(conv name, BN name) for every BatchNorm2d fed only by a conv's output.

    A module whose forward torch.fx cannot trace (data-dependent control flow,
    e.g. a branch on the input's dtype) is searched child by child instead, so
    only pairs that cross such a forward are missed (they stay unfolded).
    """
    graph = trace_leaves(model)
    if graph is None:
        return [
            pair
            for name, child in inner_children(model)
            for pair in conv_bn_pairs(child, f"{prefix}{name}.")
        ]
    modules = dict(model.named_modules())
    # A module called more than once (shared weights) cannot take one call's BN.
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
            continue  # without running statistics BN normalises by the batch: not foldable
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules[src.target], _FOLDABLE)
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
            and modules[src.target].out_channels == bn.num_features
        ):
            pairs.append((prefix + src.target, prefix + node.target))
    return pairs


@torch.no_grad()
def _fold_one(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    old_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    new_bias = old_bias * scale + shift
    if isinstance(conv, QuantConv2d):
        conv.scales.copy_((conv.scales.double() * scale[:, None]).float())
        if conv.bias is None:
            conv.bias = new_bias.float().to(conv.scales.device)
        else:
            conv.bias.copy_(new_bias)
        return
    weight = conv.weight2 if isinstance(conv, LowRankConv2d) else conv.weight
    weight.copy_(weight.double() * scale.view(-1, 1, 1, 1).to(weight.device))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(weight))
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Folds every eval-mode BatchNorm2d that directly follows a conv into that conv, in place.

    Handles ``nn.Conv2d`` (weight and bias), :class:`LowRankConv2d` (its second
    factor and bias) and :class:`QuantConv2d` (its per-row scales and bias;
    the integer codes are unchanged). Each folded BN becomes ``nn.Identity``.

    Args:
        model: in eval mode (training-mode BN normalises with batch statistics
            and cannot be folded).
    Returns:
        The (conv name, BN name) pairs folded (see :func:`conv_bn_pairs`).
    Raises:
        ValueError: model is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        raise ValueError("model: batch norm is folded in eval mode only; call model.eval() first")
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        _fold_one(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent_name, _, attr = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())
    return pairs

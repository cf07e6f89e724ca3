"""Fusing a residual block's add and ReLU into the low-rank conv before them.

After batch norm is folded (:func:`fusenas.nn.fold_batchnorm_`), a residual
block is ``relu(conv1(x))`` and ``relu(conv2(h) + shortcut)``: two extra passes
over each activation for the ReLU and the add. :class:`LowRankConv2d` takes both
as an epilogue (``conv(x, residual=r, activation="relu")``) that the CPU
kernel applies while writing its output, so this pass rewrites those patterns
in the model's fx graph:

- ``relu(conv(x))``            -> ``conv(x, activation="relu")``
- ``conv(x) + r``              -> ``conv(x, residual=r)``
- ``relu(conv(x) + r)``        -> ``conv(x, residual=r, activation="relu")``

(``nn.Identity`` calls, e.g. folded BNs, are dropped first; a conv's output
must have no other reader). Submodules whose graph changed are replaced by the
``torch.fx.GraphModule`` of that graph; a forward fx cannot trace is searched
child by child, as in :func:`fold_batchnorm_`.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fusenas.nn.fold_bn import fold_batchnorm_, inner_children, trace_leaves
from fusenas.nn.lowrank_conv import LowRankConv2d

_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and not node.kwargs.get("inplace", False)
    if node.op == "call_method" and node.target == "relu":
        return len(node.args) == 1
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)


def _is_add(node: torch.fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in _ADD_FUNCTIONS
        and len(node.args) == 2
        and not node.kwargs
    )


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _drop_identities(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> None:
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


def _fuse_graph(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Rewrites the patterns in place; returns how many convs took an epilogue."""
    _drop_identities(graph, modules)
    fused = 0
    for conv in list(graph.nodes):
        if not (
            conv.op == "call_module"
            and isinstance(modules.get(conv.target), LowRankConv2d)
            and len(conv.args) == 1
            and not conv.kwargs
        ):
            continue
        kwargs = {}
        user = _only_user(conv)
        if user is not None and _is_add(user):
            other = user.args[1] if user.args[0] is conv else user.args[0]
            if isinstance(other, torch.fx.Node) and other is not conv:
                user.prepend(conv)  # the shortcut may be computed after the conv
                user.replace_all_uses_with(conv)
                graph.erase_node(user)
                kwargs["residual"] = other
                user = _only_user(conv)
        if user is not None and _is_relu(user, modules):
            user.replace_all_uses_with(conv)
            graph.erase_node(user)
            kwargs["activation"] = "relu"
        if kwargs:
            conv.kwargs = kwargs
            fused += 1
    return fused


def fuse_epilogues_(model: nn.Module) -> tuple[nn.Module, int]:
    """Fuses residual adds and ReLUs into the LowRankConv2d calls before them.

    Args:
        model: any nn.Module (fold its batch norms first, or use
            :func:`optimize_for_inference`, so that convs feed the add / ReLU).
    Returns:
        (model, fused): the model (a new ``GraphModule`` when the top-level
        forward itself was rewritten, else ``model`` with rewritten submodules
        replaced in place) and the number of convs that took an epilogue.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    graph = trace_leaves(model)
    if graph is None:
        total = 0
        for name, child in inner_children(model):
            new, n = fuse_epilogues_(child)
            if new is not child:
                setattr(model, name, new)
            total += n
        return model, total
    fused = _fuse_graph(graph, dict(model.named_modules()))
    if not fused:
        return model, 0
    graph.lint()
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__), fused


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """The deployed form of a model: eval mode, batch norm folded, epilogues fused.

    In place where it can be (see :func:`fold_batchnorm_` and
    :func:`fuse_epilogues_`); returns the model to use. Outputs equal the
    eval-mode model's up to float rounding. The result is for running, not
    for training or saving: rewritten parts are ``GraphModule``s without the
    original classes' extra attributes, so save the model before this step.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    model.eval()
    fold_batchnorm_(model)
    return fuse_epilogues_(model)[0]

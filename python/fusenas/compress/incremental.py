"""Incremental quantization with re-training: the width and depth levels of SLQ / MLQ / DNQ.

Each selected layer (nn.Conv2d / nn.Linear) gets a fixed :class:`LayerGrid`
(its bit width may differ per layer). Quantization proceeds in stages; at a
stage a layer's weights are split into a quantized part (snapped to the grid
and frozen) and a float part that keeps training to absorb the loss:

- ``criterion="cluster"`` (SLQ / MLQ, width level): the weights nearest to
  each grid level form a cluster; clusters are quantized in increasing order
  of their quantization loss (sum of squared distances) until the stage's
  fraction of the layer is quantized;
- ``criterion="distance"`` (DNQ): individual weights in increasing order of
  their quantization distance |w - q(w)|, DNQ's importance criterion.

Depth level (MLQ's incremental layer compensation) is the driver's choice of
which layers advance at a stage. Frozen weights are kept on the grid: their
gradients are zeroed after backward and they are re-snapped after every
optimizer step (weight decay and momentum would otherwise move them).
"""

from __future__ import annotations

import torch
from torch import nn

from fusenas.compress.quant_grid import LayerGrid, export_layer

CRITERIA = ("cluster", "distance")


class IncrementalQuantizer:
    """Quantized / float partition of every selected layer of a model.

    Args:
        layers: {name: module} of nn.Conv2d / nn.Linear layers to quantize.
        bits: {name: 2..8 or "ternary"} per layer.
        criterion: "cluster" (SLQ/MLQ) or "distance" (DNQ).
    """

    def __init__(self, layers: dict[str, nn.Module], bits: dict[str, int | str],
                 criterion: str = "cluster") -> None:  # fmt: skip
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
        if not layers:
            raise ValueError("layers: no layer to quantize")
        missing = set(layers) - set(bits)
        if missing:
            raise ValueError(f"bits: no bit width for layers {sorted(missing)}")
        self.layers, self.criterion = layers, criterion
        self.grids = {n: LayerGrid.fit(m.weight, bits[n]) for n, m in layers.items()}
        self.masks = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
        self.values = {n: torch.zeros_like(m.weight) for n, m in layers.items()}

    def fraction(self, name: str) -> float:
        """Share of layer ``name``'s weights that are quantized."""
        return float(self.masks[name].float().mean())

    @torch.no_grad()
    def advance(self, fraction: float, names: list[str] | None = None) -> None:
        """Quantizes (at least) ``fraction`` of each named layer (all by default), freezing it."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction: expected a value in (0, 1], got {fraction!r}")
        for name in names if names is not None else list(self.layers):
            w = self.layers[name].weight
            grid, mask = self.grids[name], self.masks[name]
            target = int(round(fraction * w.numel()))
            have = int(mask.sum())
            if target <= have:
                continue
            if fraction >= 1.0:
                chosen = torch.ones_like(mask)
            elif self.criterion == "distance":
                dist = grid.distance(w).masked_fill(mask, -1.0)  # already quantized first
                order = torch.argsort(dist.flatten(), stable=True)
                chosen = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
                chosen[order[:target]] = True
                chosen = chosen.view_as(mask)
            else:
                chosen = self._by_cluster_loss(w, grid, mask, target)
            newly = chosen & ~mask
            self.values[name][newly] = grid.snap(w)[newly]
            mask |= chosen
            w.copy_(torch.where(mask, self.values[name], w))

    @staticmethod
    def _by_cluster_loss(w: torch.Tensor, grid: LayerGrid, mask: torch.Tensor,
                         target: int) -> torch.Tensor:  # fmt: skip
        # Clusters: (output channel, level) pairs, as each channel has its own scale.
        codes = grid.codes(w)
        levels = grid.qmax - grid.qmin + 1
        cluster = (codes - grid.qmin).long() + levels * torch.arange(
            w.shape[0], device=w.device).view(-1, *([1] * (w.dim() - 1)))  # fmt: skip
        err = (w - grid.snap(w)).square()
        n_clusters = w.shape[0] * levels
        loss = torch.zeros(n_clusters, dtype=err.dtype, device=w.device)
        loss.index_add_(0, cluster.flatten(), err.flatten())
        count = torch.bincount(cluster.flatten(), minlength=n_clusters)
        # Clusters already (partly) frozen come first; then by total loss.
        frozen = torch.zeros(n_clusters, dtype=torch.bool, device=w.device)
        frozen[cluster[mask]] = True
        key = torch.where(frozen, torch.full_like(loss, -1.0), loss)
        order = torch.argsort(key, stable=True)
        taken = torch.cumsum(count[order], 0)
        keep = order[: int(torch.searchsorted(taken, target)) + 1]
        selected = torch.zeros(n_clusters, dtype=torch.bool, device=w.device)
        selected[keep] = True
        return selected[cluster] | mask

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zeroes the gradients of frozen weights (call after backward)."""
        for name, module in self.layers.items():
            if module.weight.grad is not None:
                module.weight.grad.masked_fill_(self.masks[name], 0.0)

    @torch.no_grad()
    def restore(self) -> None:
        """Puts frozen weights back on their grid values (call after each optimizer step)."""
        for name, module in self.layers.items():
            module.weight.copy_(torch.where(self.masks[name], self.values[name], module.weight))

    def all_on_grid(self) -> bool:
        return all(self.grids[n].on_grid(m.weight) for n, m in self.layers.items())

    def export(self, model: nn.Module) -> list[dict]:
        """Replaces every fully quantized layer by its QuantConv2d / QuantLinear."""
        report = []
        for name, module in self.layers.items():
            if self.fraction(name) < 1.0:
                raise ValueError(f"layer {name!r}: only {self.fraction(name):.0%} quantized")
            grid = self.grids[name]
            model.set_submodule(name, export_layer(module, grid))
            report.append({"name": name, "bits": "ternary" if grid.ternary else grid.bits,
                           "params": module.weight.numel()})  # fmt: skip
        return report

    def state(self) -> dict:
        """Masks, frozen values and grids, for checkpoints."""
        return {
            n: {"mask": self.masks[n], "values": self.values[n], "scale": g.scale,
                "bits": g.bits, "ternary": g.ternary}
            for n, g in self.grids.items()
        }  # fmt: skip

    def load_state(self, state: dict) -> None:
        for n in self.grids:
            s = state[n]
            self.masks[n] = s["mask"].to(torch.bool)
            self.values[n] = s["values"]
            self.grids[n] = LayerGrid(s["scale"], int(s["bits"]), bool(s["ternary"]))

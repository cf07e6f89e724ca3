"""Pictures of a search: the derived cells, and the architecture weights over epochs.

``plot_search(history, out_dir)`` writes ``cells.png`` (the latest genotype's
cells as graphs: inputs, intermediate nodes, one labelled arrow per kept
edge) and ``alphas.png`` (per cell type, each candidate's softmax weight
averaged over the edges, and the betas, epoch by epoch). matplotlib only, no
graphviz, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fusenas._atomic import save_figure_atomic  # noqa: E402
from fusenas.search.spaces.nb201 import NB201_PRIMITIVES, parse_arch_str  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    save_figure_atomic(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _arrow(color: str, style: str) -> dict[str, Any]:
    return dict(arrowstyle="->", color=color, ls=style, shrinkA=12, shrinkB=12)


def _draw_cell(
    ax: Any, edges: list[tuple[str, int, int]], n_inputs: int, outputs: list[int], title: str
) -> None:
    """edges: (op, source node, target node); nodes 0..n_inputs-1 are inputs."""
    n_nodes = 1 + max([t for _, _, t in edges] + [n_inputs - 1])
    # Inputs on the left, intermediate nodes zig-zagging to the right, output last.
    pos = {i: (0.0, 1.5 - 3.0 * i / max(1, n_inputs - 1)) if n_inputs > 1 else (0.0, 0.0)
           for i in range(n_inputs)}  # fmt: skip
    for j in range(n_inputs, n_nodes):
        pos[j] = (2.2 * (j - n_inputs + 1), 1.2 if (j - n_inputs) % 2 == 0 else -1.2)
    out_node = n_nodes
    pos[out_node] = (2.2 * (n_nodes - n_inputs + 1), 0.0)
    for op, src, dst in edges:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=_arrow("0.3", "-"))
        label_at = (x0 + 0.6 * (x1 - x0), y0 + 0.6 * (y1 - y0))
        ax.text(*label_at, op, fontsize=7, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="lightyellow", ec="0.7"))  # fmt: skip
    for j in outputs:
        (x0, y0), (x1, y1) = pos[j], pos[out_node]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=_arrow("0.7", "--"))
    for node, (x, y) in pos.items():
        if node < n_inputs:
            label, color = f"in{node}", "lightblue"
        elif node == out_node:
            label, color = "out", "lightgreen"
        else:
            label, color = str(node - n_inputs if n_inputs > 1 else node), "white"
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="circle,pad=0.35", fc=color, ec="0.2"))  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.5, pos[out_node][0] + 0.5)
    ax.set_ylim(-2.0, 2.0)
    ax.axis("off")


def plot_cells(genotype: dict[str, Any] | str, path: Path) -> None:
    """Draws a DARTS genotype dict (normal + reduce) or a NAS-Bench-201 arch string."""
    if isinstance(genotype, str):
        fig, ax = plt.subplots(figsize=(8, 4))
        edges = parse_arch_str(genotype)
        _draw_cell(ax, edges, 1, [3], "NAS-Bench-201 cell")
    else:
        fig, axes = plt.subplots(2, 1, figsize=(10, 8))
        for ax, kind in zip(axes, ("normal", "reduce"), strict=True):
            edges = [(op, src, 2 + i // 2) for i, (op, src) in enumerate(genotype[kind])]
            _draw_cell(ax, edges, 2, list(genotype[f"{kind}_concat"]), f"{kind} cell")
    _save(fig, path)


def plot_arch_weights(history: list[dict[str, Any]], path: Path) -> None:
    """Each candidate's softmax weight (mean over edges) and the betas, per epoch."""
    epochs = [h["epoch"] for h in history]
    names = sorted(k for k in history[-1]["arch"] if k.startswith("alphas"))
    betas = sorted(k for k in history[-1]["arch"] if k.startswith("betas"))
    rows = len(names)
    fig, axes = plt.subplots(rows, 2 if betas else 1, figsize=(12 if betas else 7, 3.2 * rows),
                             squeeze=False)  # fmt: skip
    genotype = history[-1]["genotype"]
    n_ops = len(history[-1]["arch"][names[0]][0])
    prims = NB201_PRIMITIVES if isinstance(genotype, str) else None
    if prims is None:
        from fusenas.ops import PC_DARTS_PRIMITIVES

        prims = PC_DARTS_PRIMITIVES
    for r, name in enumerate(names):
        ax = axes[r][0]
        for o in range(n_ops):
            series = [sum(e[o] for e in h["arch"][name]) / len(h["arch"][name]) for h in history]
            ax.plot(epochs, series, label=prims[o] if o < len(prims) else str(o))
        ax.set_title(f"{name}: softmax weight, mean over edges", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, ncol=2)
        if betas:
            bname = name.replace("alphas", "betas")
            ax = axes[r][1]
            if bname in history[-1]["arch"]:
                for e in range(len(history[-1]["arch"][bname])):
                    ax.plot(epochs, [h["arch"][bname][e] for h in history], lw=1)
            ax.set_title(f"{bname} (one line per edge)", fontsize=10)
            ax.set_xlabel("epoch")
    _save(fig, path)


def plot_search(history: list[dict[str, Any]], out_dir: str | Path) -> None:
    """cells.png and alphas.png in ``out_dir`` from a search's per-epoch history."""
    out = Path(out_dir)
    plot_cells(history[-1]["genotype"], out / "cells.png")
    plot_arch_weights(history, out / "alphas.png")

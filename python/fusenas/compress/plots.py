"""Training curves of compression runs (``fusenas compress trp`` / ``baseline``).

``plot_training(runs, path)`` draws, epoch by epoch, each run's held-out
accuracy, its training loss and, for TRP runs, the sum of its convs' ranks
(the energy rank of the last projection), one line per run, so a TRP run can
be read against its baseline in one picture. The driver writes ``curves.png``
of its own run after every epoch; experiments/trp_curves.py overlays runs.
matplotlib's object API only (no pyplot), so drawing neither needs a display nor
changes the backend of a notebook that imports the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fusenas._atomic import save_figure_atomic


def plot_training(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Writes the curves of ``runs`` (label -> the run's log.jsonl records) to ``path``.

    Each record needs ``epoch``, ``test_acc`` (%) and ``train_loss``; records with
    ``ranks`` (layer name -> rank) add the third panel. Returns ``path``.
    """
    if not runs or not all(runs.values()):
        raise ValueError("runs: expected at least one run, each with at least one epoch record")
    for label, history in runs.items():
        missing = {"epoch", "test_acc", "train_loss"} - set(history[0])
        if missing:
            raise ValueError(f"runs[{label!r}]: records lack {sorted(missing)}")
    with_ranks = {k: h for k, h in runs.items() if "ranks" in h[-1]}
    panels = 3 if with_ranks else 2
    fig = Figure(figsize=(4.2 * panels, 3.4))
    axes = fig.subplots(1, panels)
    # One colour per run in every panel (the rank panel skips the baselines).
    colors = {label: f"C{i % 10}" for i, label in enumerate(runs)}
    style = dict(lw=1.2, marker=".", ms=3)
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        axes[0].plot(
            epochs, [r["test_acc"] for r in history], color=colors[label], label=label, **style
        )
        axes[1].plot(epochs, [r["train_loss"] for r in history], color=colors[label], **style)
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[1].set_ylabel("training loss")
    for label, history in with_ranks.items():
        rec = [r for r in history if "ranks" in r]
        ranks = [sum(r["ranks"].values()) for r in rec]
        axes[2].plot([r["epoch"] for r in rec], ranks, color=colors[label], **style)
    if with_ranks:
        axes[2].set_ylabel("sum of the convs' ranks")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure_atomic(fig, path, dpi=110, bbox_inches="tight")
    return Path(path)

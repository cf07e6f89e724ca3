"""The report of a compression run: accuracy, size, MACs and measured latency per stage."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusenas._atomic import atomic_write_bytes
from fusenas.data.batches import evaluate
from fusenas.data.datasets import ImageDataset
from fusenas.nn.fuse_epilogues import optimize_for_inference
from fusenas.profiling import count_macs, count_params, latency_ms
from fusenas.runtime import freed_memory_retained


def measure(
    stage: str, model: nn.Module, test: ImageDataset, batches: tuple[int, ...]
) -> dict[str, Any]:
    """One row: accuracy on ``test``, parameters, MACs per image, latency per batch size (ms).

    Latency is that of the deployed form, for every stage alike: a copy of the
    model through :func:`fusenas.nn.optimize_for_inference` (batch norms folded
    into the convs before them, residual adds / ReLUs fused into the low-rank
    convs before them; dense convs run as torch's, unfused). ``model`` itself is
    left in eval mode.
    """
    _, acc = evaluate(model, test, torch.device("cpu"))
    model.eval()  # evaluate() leaves train mode
    x = test.x[: max(batches)].float() / 255.0
    deployed = optimize_for_inference(copy.deepcopy(model))
    row: dict[str, Any] = {
        "stage": stage,
        "accuracy": acc,
        "params": count_params(model),
        "macs": count_macs(model, x[:1]),
        "latency_ms": {},
        "threads": torch.get_num_threads(),
        "freed_memory_retained": freed_memory_retained(),
    }
    for b in batches:
        xb = x[:b] if x.shape[0] >= b else x[:1].expand(b, *x.shape[1:]).contiguous()
        row["latency_ms"][b] = latency_ms(deployed, xb, repeats=10 if b > 8 else 30)
    return row


def format_report(rows: list[dict[str, Any]], export: list[dict[str, Any]]) -> str:
    """Markdown: one line per stage with ratios against the first; says when nothing is gained."""
    base = rows[0]
    batches = list(base["latency_ms"])
    head = ("| stage | accuracy (%) | params | MACs (M) | file (KB) | "
            + " | ".join(f"latency b{b} (ms)" for b in batches) + " |")  # fmt: skip
    lines = [head, "|" + " --- |" * (5 + len(batches))]
    for r in rows:
        lat = " | ".join(
            f"{r['latency_ms'][b]:.2f} ({base['latency_ms'][b] / r['latency_ms'][b]:.2f}x)"
            for b in batches
        )
        lines.append(
            f"| {r['stage']} | {r['accuracy']:.2f} | {r['params']:,} | {r['macs'] / 1e6:.1f} "
            f"({base['macs'] / r['macs']:.2f}x) | {r.get('file_bytes', 0) / 1024:.0f} | {lat} |"
        )
    last = rows[-1]
    notes = [
        "Latency: the deployed form of each stage (batch norm folded into the conv before it; "
        "residual add and ReLU fused into the low-rank convs before them), "
        f"{base.get('threads', '?')} threads, median wall time"
        + (
            "; freed memory retained for reuse (fusenas.runtime.retain_freed_memory)."
            if base.get("freed_memory_retained")
            else "; glibc malloc at its defaults (every pass faults in its activations' pages)."
        )
    ]
    smaller = last["macs"] < base["macs"] or last.get("file_bytes", 0) < base.get("file_bytes", 0)
    if not smaller:
        notes.append("The compressed model is not smaller than the original.")
    slower = [b for b in batches if last["latency_ms"][b] >= base["latency_ms"][b]]
    if len(slower) == len(batches):
        notes.append("The compressed model is not faster than the original at any batch size.")
    elif slower:
        speed = ", ".join(
            f"batch {b}: {base['latency_ms'][b] / last['latency_ms'][b]:.2f}x" for b in slower
        )
        notes.append(f"The compressed model is not faster than the original at {speed}.")
    if export:
        ranks = ", ".join(f"{e['name']}: {e['rank']}/{e['max_rank']}" for e in export)
        notes.append(f"Exported layers (rank / full rank): {ranks}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    files: list[Path],
    export: list[dict[str, Any]],
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """Adds each row's file size, writes report.md / report.json in ``out``; returns the text."""
    for row, path in zip(rows, files, strict=True):
        row["file_bytes"] = os.path.getsize(path)
    text = format_report(rows, export) + note
    atomic_write_bytes(out / "report.md", text.encode())
    summary = {"stages": rows, "export": export, **(extra or {})}
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=1).encode())
    return text

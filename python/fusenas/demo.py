"""The README's main job: train a small CNN on digits, quantize it, compare.

Trains ``SmallCNN`` on scikit-learn's 8 x 8 digits with a fixed seed, then for
8, 4, 3, 2 bits and ternary converts a copy with ``fusenas.quantize_`` and
measures test accuracy, model bytes and latency per batch (batch 1 and 64,
median of repeats, at a fixed thread count, restored afterwards) against the float32 model. The
table is printed and written as Markdown; the fp32 and 4-bit models are saved.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fusenas._atomic import write_text_atomic
from fusenas.data.datasets import ImageDataset, load_splits
from fusenas.models import small_cnn_for
from fusenas.quant.convert import QuantConfig, quantize_
from fusenas.quant.io import save_float, save_packed
from fusenas.quant.packed import parse_bits
from fusenas.training import accuracy, fit, measure_latency, state_bytes

DEFAULT_BITS = ("8", "4", "3", "2", "ternary")


def _measure(
    model: torch.nn.Module, test_x: torch.Tensor, batches: Sequence[int], repeats: int
) -> dict[int, float]:
    out = {}
    for b in batches:
        n = max(repeats * 64 // b, repeats)  # more runs for small, fast batches
        out[b] = measure_latency(model, test_x[:b].contiguous(), repeats=min(n, 4 * repeats))
    return out


def _row(
    label: str, model: torch.nn.Module, test: ImageDataset, batches: Sequence[int], repeats: int
) -> dict[str, Any]:
    return {
        "weights": label,
        "accuracy": accuracy(model, test),
        "bytes": state_bytes(model),
        "latency": _measure(model, test.x, batches, repeats),
    }


def run_demo(
    out_dir: str | Path = "fusenas_demo",
    bits: Sequence[int | str] = DEFAULT_BITS,
    group_size: int | None = 128,
    threads: int = 2,
    seed: int = 0,
    epochs: int = 20,
    repeats: int = 50,
    batches: Sequence[int] = (1, 64),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs the demo; returns one row per model (fp32 first).

    Each row: ``weights`` ("fp32", "8", ..., "ternary"), ``accuracy`` (%),
    ``bytes`` (all tensors of the state dict), ``latency`` {batch: seconds}.
    Writes ``results.md``, ``digits_fp32.safetensors`` and, when 4 bits is among
    ``bits``, ``digits_4bit.safetensors`` to ``out_dir``.
    """
    for b in bits:
        parse_bits(b)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train, test = load_splits("digits", seed=seed)
    model = small_cnn_for("digits")
    log(f"digits: {len(train)} train / {len(test)} test images, 1x8x8; SmallCNN, seed {seed}")
    t0 = time.perf_counter()
    fit(model, train, epochs=epochs, seed=seed, progress=progress, threads=1)
    log(f"trained {epochs} epochs in {time.perf_counter() - t0:.1f} s")
    meta = {"dataset": "digits", "split_seed": seed, "test_fraction": 0.2}

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = [_row("fp32", model, test, batches, repeats)]
        save_float(
            model, out / "digits_fp32.safetensors", {**meta, "accuracy": rows[0]["accuracy"]}
        )
        for b in bits:
            qmodel = copy.deepcopy(model)
            quantize_(qmodel, QuantConfig(bits=b, group_size=group_size))
            nbits, ternary = parse_bits(b)
            rows.append(_row("ternary" if ternary else str(nbits), qmodel, test, batches, repeats))
            if rows[-1]["weights"] == "4":
                meta4 = {**meta, "accuracy": rows[-1]["accuracy"], "bits": 4}
                save_packed(qmodel, out / "digits_4bit.safetensors", meta4)
    finally:
        torch.set_num_threads(threads_before)
    table = format_table(rows, threads, group_size)
    log(table)
    write_text_atomic(
        out / "results.md",
        "# fusenas demo: k-bit post-training quantization of a small CNN on digits\n\n"
        f"{len(train)} train / {len(test)} test images, seed {seed}, {epochs} epochs, "
        f"torch {torch.__version__}, {threads} threads, group size "
        f"{group_size or 'per-channel'} (per-channel where it does not divide K).\n\n"
        + table
        + "\n",
    )
    log(f"wrote {out / 'results.md'} and the fp32 / 4-bit models to {out}/")
    return rows


def format_table(rows: list[dict[str, Any]], threads: int, group_size: int | None) -> str:
    """Markdown table of :func:`run_demo`'s rows (fp32 first)."""
    base = rows[0]
    batches = list(base["latency"])
    head = ["weights", "test acc %", "Δ acc", "bytes", "× smaller"]
    for b in batches:
        head += [f"ms/batch b={b}", f"× fp32 b={b}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["weights"],
            f"{r['accuracy']:.2f}",
            f"{r['accuracy'] - base['accuracy']:+.2f}",
            f"{r['bytes']:,}",
            f"{base['bytes'] / r['bytes']:.2f}",
        ]
        for b in batches:
            cells += [f"{r['latency'][b] * 1e3:.3f}", f"{base['latency'][b] / r['latency'][b]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"latency: median wall time per batch, torch.set_num_threads({threads}); "
        "× fp32 > 1 means faster than the float32 model."
    )
    return "\n".join(lines)

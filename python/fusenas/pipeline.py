"""The whole pipeline on the built-in digits set: search, train + TRP, quantize, low-bit inference.

1. PC-DARTS search of a NAS-Bench-201 cell (fused partial-channel edges).
2. The found cell's network trained from scratch with Trained Rank Pruning,
   then exported to fused LowRankConv2d layers (no fine-tuning).
3. SLQ: the remaining convs and the linear head quantized to k bits with
   re-training, exported to the fused k-bit kernels (packed safetensors).
4. The packed file loaded back and timed (low-bit inference).

One table of accuracy / size / MACs / latency per stage is printed and
written to ``<out>/pipeline.md``; each step's own outputs (logs,
checkpoints, reports, plots) stay in its sub-directory. A few minutes on 2
CPU cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from fusenas._atomic import atomic_write_bytes
from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import load_split, run_compress
from fusenas.compress.quantize_driver import run_quantize
from fusenas.compress.report import measure
from fusenas.quant.io import load_model
from fusenas.search.config import SearchConfig
from fusenas.search.pcdarts import run_search


def run_pipeline(
    out: str | Path = "fusenas_pipeline",
    bits: int | str = 4,
    seed: int = 0,
    threads: int = 2,
    quick: bool = False,
    progress: bool = True,
) -> str:
    """Runs the four steps into ``out``; returns the Markdown table."""
    out = Path(out)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    epochs = (1, 2, 1) if quick else (8, 20, 2)
    stages = (0.5, 1.0) if quick else (0.5, 0.75, 0.875, 1.0)
    say("1/4 PC-DARTS search of a NAS-Bench-201 cell on digits")
    search = run_search(
        SearchConfig(
            space="nb201",
            dataset="digits",
            channels=8,
            layers=1,
            k=2,
            epochs=epochs[0],
            warmup_epochs=epochs[0] // 4,
            batch_size=64,
            seed=seed,
            threads=threads,
            out_dir=str(out / "search"),
        ),
        progress=progress,
    )
    genotype = str(out / "search" / "genotype.json")
    say(f"    cell: {search.genotype}")
    say("2/4 training the cell's network with Trained Rank Pruning, exporting low-rank layers")
    common = dict(
        dataset="digits",
        test_size=360,
        batch_size=64,
        seed=seed,
        threads=threads,
        latency_batches=(1, 64),
    )
    trp = run_compress(
        CompressConfig(
            method="trp",
            model="nb201",
            genotype=genotype,
            channels=16,
            layers=2,
            epochs=epochs[1],
            lr=0.05,
            out_dir=str(out / "trp"),
            **common,
        ),
        progress=progress,
    )
    say(f"3/4 quantizing the remaining layers to {bits} bits (SLQ, re-trained)")
    quant_config = CompressConfig(
        method="slq",
        bits=bits,
        init=str(out / "trp" / "compressed.safetensors"),
        epochs_per_stage=epochs[2],
        retrain_lr=0.005,
        stages=stages,
        out_dir=str(out / "quant"),
        **common,
    )
    quant = run_quantize(quant_config, progress=progress)
    say("4/4 low-bit inference from the packed file")
    model, _ = load_model(out / "quant" / "quantized.safetensors")
    _, test = load_split(quant_config)  # the split every step held out
    final = measure("packed file, reloaded", model, test, (1, 64))
    final["file_bytes"] = os.path.getsize(out / "quant" / "quantized.safetensors")
    rows = [trp.report[0], trp.report[1], quant.report[1], final]
    rows[0]["stage"] = "searched cell, trained (fp32)"
    rows[1]["stage"] = "+ TRP low-rank (fused LowRankConv2d)"
    rows[2]["stage"] = f"+ {bits}-bit SLQ (fused k-bit kernels)"
    base = rows[0]
    lines = [
        "| stage | accuracy (%) | file (KB) | MACs (M) | latency b1 (ms) | latency b64 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['accuracy']:.2f} | {r['file_bytes'] / 1024:.0f} "
            f"({base['file_bytes'] / r['file_bytes']:.1f}x) | {r['macs'] / 1e6:.2f} | "
            f"{r['latency_ms'][1]:.3f} | {r['latency_ms'][64]:.2f} |"
        )
    text = (
        f"Pipeline on digits ({threads} threads, {time.perf_counter() - t0:.0f} s). "
        f"Cell: `{search.genotype}`\n\n" + "\n".join(lines) + "\n"
    )
    atomic_write_bytes(out / "pipeline.md", text.encode())
    print(text)
    return text

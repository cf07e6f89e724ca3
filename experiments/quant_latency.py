"""Re-measure finished quantization runs side by side: accuracy, file size and CPU latency.

Each ``fusenas compress slq|mlq|dnq`` run measures its own latency when it
ends, whatever else the machine is doing then. This loads every given run's
float and packed models (``float.safetensors`` / ``quantized.safetensors``),
checks the packed model's accuracy on the run's test split, and times both at
batch 1 and 64 (2 threads) in one process, one after another, so the rows
compare. ``--kbit-only`` keeps QuantConv2d on the k-bit GEMM at every batch
(QuantConv2d.dense_min_rows = None) to show what the large-batch dense path buys.

    python experiments/quant_latency.py runs/quant_r20/slq4 runs/quant_r20/slq3 \
        runs/quant_r20/mlq_ternary runs/quant_r20/dnq3 --out docs/quant_latency.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import build_model, load_split
from fusenas.compress.report import measure
from fusenas.config_file import load_config
from fusenas.nn import QuantConv2d
from fusenas.quant.io import load_float, load_packed


def measure_run(run_dir: Path, batches: tuple[int, ...]) -> list[dict]:
    config = load_config(CompressConfig, run_dir / "config.yaml")
    train, test = load_split(config)
    rows = []
    for name, loader in (("float", load_float), ("quantized", load_packed)):
        path = run_dir / f"{name}.safetensors"
        model = build_model(config, train.x.shape[1], len(train.classes))
        loader(path).load_into(model)
        row = measure(f"{run_dir.name}: {name}", model, test, batches)
        row["file_bytes"] = path.stat().st_size
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--kbit-only", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.kbit_only:
        QuantConv2d.dense_min_rows = None
    rows = [r for run in args.runs for r in measure_run(run, (1, 64))]
    lines = [
        "| model | test acc (%) | file (KB) | latency b1 (ms) | latency b64 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['stage']} | {r['accuracy']:.2f} | {r['file_bytes'] / 1024:.0f} | "
            f"{lat[1]:.2f} | {lat[64]:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    publish(text, rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy against MACs of a TRP-trained network exported at several singular-value thresholds.

TRP exports with no fine-tuning, so the threshold alone sets the trade-off:
this loads a finished ``fusenas compress trp`` run (its ``config.yaml`` and
``dense.safetensors``), exports a copy at each threshold and measures test
accuracy (the run's held-out split), MACs, parameters and CPU latency (batch
1 and 64, 2 threads), next to the dense TRP-trained network.

    python experiments/trp_export_sweep.py runs/trp_r20_e099/trp \
        --thresholds 0.01 0.02 0.05 0.1 0.2 --out docs/trp_export_sweep.md
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import load_split, load_trained, trp_settings
from fusenas.compress.report import measure
from fusenas.compress.trp import TRPRegularizer
from fusenas.config_file import load_config


def sweep(run_dir: Path, thresholds: list[float]) -> list[dict]:
    config = load_config(CompressConfig, run_dir / "config.yaml")
    if config.method != "trp":
        raise ValueError(f"run_dir: {run_dir} is a {config.method!r} run, not 'trp'")
    torch.set_num_threads(config.threads or 2)
    train, test = load_split(config)
    model = load_trained(run_dir, config, train.x.shape[1], len(train.classes))
    rows = [measure("TRP-trained, dense", model, test, config.latency_batches)]
    for t in thresholds:
        settings = trp_settings(config, model)
        settings.export_threshold = t
        compressed = copy.deepcopy(model)
        export = TRPRegularizer(compressed, settings).export(compressed)
        row = measure(f"exported, threshold {t:g}", compressed, test, config.latency_batches)
        row["ranks"] = {e["name"]: e["rank"] for e in export} if export else {}
        rows.append(row)
        print(
            f"threshold {t:g}: {row['accuracy']:.2f}% "
            f"{rows[0]['macs'] / row['macs']:.2f}x fewer MACs",
            flush=True,
        )
    return rows


def to_markdown(rows: list[dict], baseline_acc: float | None) -> str:
    dense = rows[0]
    lines = [
        "| network | test acc (%) | vs baseline (pts) | MACs (M) | params | "
        "latency b1 (ms) | latency b64 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lat = r["latency_ms"]
        b1, b64 = lat.get(1, lat.get("1")), lat.get(64, lat.get("64"))
        d1, d64 = dense["latency_ms"].get(1), dense["latency_ms"].get(64)
        gap = "" if baseline_acc is None else f"{r['accuracy'] - baseline_acc:+.2f}"
        lines.append(
            f"| {r['stage']} | {r['accuracy']:.2f} | {gap} | {r['macs'] / 1e6:.1f} "
            f"({dense['macs'] / r['macs']:.2f}x fewer) | {r['params']:,} | "
            f"{b1:.2f} ({d1 / b1:.2f}x) | {b64:.2f} ({d64 / b64:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--baseline", type=Path, help="a baseline run's report.json (accuracy gap)")
    ap.add_argument("--out", type=Path, help="markdown table to write (and a .json beside it)")
    args = ap.parse_args(argv)
    rows = sweep(args.run_dir, args.thresholds)
    baseline_acc = None
    if args.baseline is not None:
        baseline_acc = json.loads(args.baseline.read_text())["stages"][0]["accuracy"]
    text = to_markdown(rows, baseline_acc)
    publish(text, rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PC-DARTS search epochs with fused edges vs PC-DARTS' eager formulation: time and memory.

Runs ``fusenas search pcdarts`` on the DARTS space (8 cells, C=16, K=4, edge
normalisation) on CIFAR-10 from ../shared/data, the architecture updated from
the first step (no warm-up, so every step is a full first-order iteration:
an architecture step on the validation half, then a weight step), once per
(variant, batch) in a fresh process, 2 threads, the same images and seed. Reads
the epoch's wall time and the process' peak resident memory from each run's
log, and fits peak memory linearly in the batch (weights + per-image
activations) to say which batch each variant fits in the memory the
reference needs at the smallest batch.

    python experiments/search_speed_memory.py --batches 64 96 --limit 2560 \
        --out docs/search_speed_memory.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas.profiling import largest_batch_within
from fusenas.run_dir import read_log

VARIANTS = ("reference", "fused")


def run(variant: str, batch: int, limit: int, epochs: int, root: Path) -> dict:
    out = root / f"{variant}_b{batch}"
    cmd = [
        sys.executable, "-m", "fusenas", "search", "pcdarts",
        "--set", "space=darts", "--set", "dataset=cifar10", "--set", f"limit={limit}",
        "--set", f"batch_size={batch}", "--set", f"epochs={epochs}", "--set", "warmup_epochs=0",
        "--set", "eval_limit=500", "--set", "threads=2", "--set", "device=cpu",
        "--set", f"fused={'true' if variant == 'fused' else 'false'}",
        "--set", f"out_dir={out}",
    ]  # fmt: skip
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    log = read_log(out)
    return {
        "variant": variant,
        "batch": batch,
        "epoch_seconds": [r["seconds"] for r in log],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in log),
    }


def to_markdown(rows: list[dict]) -> str:
    gib = 1024**3
    lines = [
        "| batch | variant | epoch time (s) | peak RSS (GiB) |",
        "| ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['variant']} | {min(r['epoch_seconds']):.1f} | "
            f"{r['peak_rss_bytes'] / gib:.2f} |"
        )
    lines += ["", "| batch | epoch time fused / reference | peak RSS fused / reference |",
              "| ---: | ---: | ---: |"]  # fmt: skip
    by = {(r["batch"], r["variant"]): r for r in rows}
    for b in sorted({r["batch"] for r in rows}):
        f, ref = by[(b, "fused")], by[(b, "reference")]
        lines.append(
            f"| {b} | {min(f['epoch_seconds']) / min(ref['epoch_seconds']):.2f} | "
            f"{f['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f} |"
        )
    b_ref = min(r["batch"] for r in rows)
    budget = by[(b_ref, "reference")]["peak_rss_bytes"]
    fits = {
        v: largest_batch_within(
            [(r["batch"], r["peak_rss_bytes"]) for r in rows if r["variant"] == v], budget
        )
        for v in VARIANTS
    }
    if all(fits.values()):
        lines += [
            "",
            f"In the memory the reference search needs at batch {b_ref} ({budget / gib:.2f} GiB "
            f"peak RSS), the fused search fits batch {fits['fused']} (the reference "
            f"{fits['reference']}; linear fit of peak RSS through the measured batches).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--limit", type=int, default=2560, help="CIFAR-10 training images used")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--root", type=Path, default=Path("runs/search_speed_memory"))
    ap.add_argument("--out", type=Path, help="markdown table (and a .json beside it)")
    args = ap.parse_args(argv)
    rows = [run(v, b, args.limit, args.epochs, args.root) for b in args.batches for v in VARIANTS]
    text = to_markdown(rows)
    publish(text, rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

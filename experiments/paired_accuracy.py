"""Is one packed model really more accurate than another? A paired test on one test split.

Two runs scored on the same held-out images differ by a few tenths of a point
that a per-model standard error (about 0.4-0.6 points on 5,000 images) cannot
resolve. Pairing them can: only the images that exactly one model gets right
carry information. This loads the packed (or ``--float``) model of every given
run, checks that all runs share one test split (same images, same labels),
and prints for each run against the first: accuracy, the difference, its
paired 95% interval (normal approximation on the per-image differences) and
McNemar's exact two-sided p-value (a binomial test on the discordant images).
``--file`` scores another file of each run, e.g. a TRP run's exported network
against its baseline's (``compressed.safetensors``, float files with LowRankConv2d
layers).

    python experiments/paired_accuracy.py runs/quant_r20_40ep/slq3 runs/quant_r20_40ep/dnq3 \
        --out docs/dnq_paired_40ep.md
    python experiments/paired_accuracy.py runs/trp_r20_40ep/baseline_s1 \
        runs/trp_r20_40ep/trp_e099_s1 --file compressed.safetensors
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import build_model, load_split
from fusenas.config_file import load_config
from fusenas.data.batches import make_batch
from fusenas.quant.io import load_checkpoint


def correct_per_image(run_dir: Path, file: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool (n,) correct per test image, int64 (n,) labels) of the run's model in
    ``file`` (packed or float) on its split."""
    config = load_config(CompressConfig, run_dir / "config.yaml")
    train, test = load_split(config)
    model = build_model(config, train.x.shape[1], len(train.classes))
    load_checkpoint(run_dir / file).load_into(model)
    model.eval()
    hits = []
    with torch.no_grad():
        for i in range(0, len(test), 256):
            idx = torch.arange(i, min(i + 256, len(test)))
            x, y = make_batch(test, idx, False, torch.Generator(), torch.device("cpu"), False)
            hits.append(model(x).argmax(1) == y)
    return torch.cat(hits), torch.as_tensor(test.y)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(Binomial(n, 1/2) as or more extreme than observed)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare(ref: torch.Tensor, other: torch.Tensor) -> dict:
    """Paired statistics of ``other`` against ``ref`` (bool correctness per image)."""
    n = ref.numel()
    diff = other.double() - ref.double()
    mean = float(diff.mean())
    half = 1.96 * float(diff.std(unbiased=True)) / math.sqrt(n)
    only_other = int((other & ~ref).sum())
    only_ref = int((ref & ~other).sum())
    return {
        "accuracy": 100.0 * float(other.double().mean()),
        "diff_points": 100.0 * mean,
        "ci95_points": [100.0 * (mean - half), 100.0 * (mean + half)],
        "only_this_right": only_other,
        "only_reference_right": only_ref,
        "mcnemar_p": mcnemar_exact_p(only_other, only_ref),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories, the first the reference")
    ap.add_argument(
        "--file",
        default="quantized.safetensors",
        help="which file of each run to score (default quantized.safetensors)",
    )
    ap.add_argument("--float", action="store_true", help="same as --file float.safetensors")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        ap.error("runs: expected at least two run directories (the first is the reference)")
    torch.set_num_threads(2)
    file = "float.safetensors" if args.float else args.file
    results = [correct_per_image(r, file) for r in args.runs]
    ref, labels = results[0]
    for run, (hits, y) in zip(args.runs[1:], results[1:], strict=True):
        if hits.numel() != ref.numel() or not torch.equal(y, labels):
            raise SystemExit(f"runs: {run} has a different test split than {args.runs[0]}")
    rows = [{"run": str(args.runs[0]), "accuracy": 100.0 * float(ref.double().mean())}]
    lines = [
        f"Paired against `{args.runs[0]}` on the same {ref.numel()} test images "
        f"(each run's `{file}`).",
        "",
        "| run | test acc (%) | diff (pts) | paired 95% interval | only this right | "
        "only reference right | McNemar p |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
        f"| {args.runs[0]} | {rows[0]['accuracy']:.2f} | | | | | |",
    ]
    for run, (hits, _) in zip(args.runs[1:], results[1:], strict=True):
        row = {"run": str(run), **compare(ref, hits)}
        rows.append(row)
        lo, hi = row["ci95_points"]
        lines.append(
            f"| {run} | {row['accuracy']:.2f} | {row['diff_points']:+.2f} | "
            f"[{lo:+.2f}, {hi:+.2f}] | {row['only_this_right']} | "
            f"{row['only_reference_right']} | {row['mcnemar_p']:.3f} |"
        )
    publish("\n".join(lines) + "\n", rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

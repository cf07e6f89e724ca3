"""PC-DARTS on the NAS-Bench-201 space, searched on CIFAR-10, several seeds.

Each seed runs ``fusenas search pcdarts`` (space nb201, K=4, edge
normalisation, the architecture frozen for the first ``--warmup`` epochs) on
``--limit`` CIFAR-10 training images from ../shared/data (half for the
weights, half for the architecture), 2 threads. The found cell is looked up
in the NAS-Bench-201 table (CIFAR-10 test accuracy after 200 epochs, and its
percentile among the 15,625 cells); a cell made only of skip / none counts
as collapsed. Writes ``<out>/results.json``, ``<out>/results.md`` and a plot of
each seed's table accuracy of the derived cell per epoch (``search_curves.png``).

    python experiments/pcdarts_nb201_seeds.py --seeds 0 1 2 --epochs 15 --warmup 5 \
        --layers 2 --limit 20000 --out runs/pcdarts_nb201
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas._atomic import save_figure_atomic
from fusenas.search.config import SearchConfig
from fusenas.search.nb201_table import Nb201Table
from fusenas.search.pcdarts import run_search

PARAMETER_FREE = ("none", "skip_connect")


def collapsed(arch: str) -> bool:
    """Every edge of the cell is none or skip_connect (DARTS' failure mode)."""
    ops = [tok.split("~")[0] for tok in arch.split("|") if "~" in tok]
    return all(op in PARAMETER_FREE for op in ops)


def plot(curves: dict[int, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for seed, accs in curves.items():
        ax.plot(range(1, len(accs) + 1), accs, marker="o", label=f"seed {seed}")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc (%)")
    ax.set_title("derived cell after each epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--layers", type=int, default=2, help="cells per stage (NAS-Bench-201: 5)")
    p.add_argument("--limit", type=int, default=20000, help="CIFAR-10 training images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("runs/pcdarts_nb201"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    table = Nb201Table.load()
    rows, curves = [], {}
    for seed in args.seeds:
        config = SearchConfig(
            space="nb201", dataset="cifar10", limit=args.limit, layers=args.layers,
            epochs=args.epochs, warmup_epochs=args.warmup, batch_size=args.batch, seed=seed,
            threads=2, device="cpu", out_dir=str(args.out / f"seed{seed}"),
        )  # fmt: skip
        result = run_search(config, resume=True)
        arch = result.genotype
        curves[seed] = [table.accuracy(r["genotype"]) for r in result.history]
        rows.append({
            "seed": seed,
            "arch": arch,
            "nb201_test_acc": table.accuracy(arch),
            "percentile": table.percentile(arch),
            "collapsed": collapsed(arch),
            "search_seconds": sum(r["seconds"] for r in result.history),
            "per_epoch_table_acc": curves[seed],
        })  # fmt: skip
        print(f"seed {seed}: {arch} -> {rows[-1]['nb201_test_acc']:.2f}%", flush=True)
    accs = [r["nb201_test_acc"] for r in rows]
    summary = {
        "mean": statistics.mean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "any_collapsed": any(r["collapsed"] for r in rows),
        "settings": vars(args) | {"out": str(args.out)},
    }
    lines = [
        "| seed | cell | NB201 CIFAR-10 test acc (%) | percentile | collapsed | search (min) |",
        "| ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | `{r['arch']}` | {r['nb201_test_acc']:.2f} | "
            f"{r['percentile']:.1f} | {'yes' if r['collapsed'] else 'no'} | "
            f"{r['search_seconds'] / 60:.1f} |"
        )
    lines += ["", f"Mean {summary['mean']:.2f} +- {summary['std']:.2f} over {len(rows)} seeds."]
    text = "\n".join(lines) + "\n"
    publish(text, {"rows": rows, "summary": summary}, args.out / "results.md")
    plot(curves, args.out / "search_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

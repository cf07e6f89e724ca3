"""Latency-aware PC-DARTS on NAS-Bench-201, on this CPU: predictor error and the trade-off curve.

1. Time ``--n`` random NAS-Bench-201 networks (C=16, N=5, batch ``--batch``,
   2 threads) and fit the latency predictor; report its relative error on
   the held-out 20%.
2. Search the NAS-Bench-201 space with PC-DARTS on CIFAR-10
   (../shared/data) for each latency weight in ``--weights``; for each found
   cell, look up its CIFAR-10 test accuracy (200 epochs) in the NAS-Bench-201
   table and measure its latency; predicted vs measured side by side.

Writes ``<out>/latency_records.jsonl``, ``predictor.safetensors``,
``results.json``, ``tradeoff.png`` and a Markdown table ``results.md``.

    python experiments/latency_aware_nb201.py --out runs/latency_nb201 \
        [--n 200] [--weights 0 0.02 0.1] [--epochs 10] [--limit 10000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from results_io import publish, write_json  # experiments/results_io.py

from fusenas._atomic import save_figure_atomic
from fusenas.search import latency
from fusenas.search.config import SearchConfig
from fusenas.search.nb201_table import Nb201Table
from fusenas.search.pcdarts import run_search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/latency_nb201")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.02, 0.1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--cells", type=int, default=1, help="cells per stage of the supernet")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "latency_records.jsonl"
    if not records_path.is_file():
        latency.collect("nb201", args.n, records_path, channels=16, layers=5,
                        batch_size=args.batch, repeats=10, seed=args.seed)  # fmt: skip
    records = latency.read_records(records_path)
    predictor, report = latency.fit(records, seed=args.seed)
    predictor.save(out / "predictor.safetensors")
    err, worst = 100 * report.test_mean_rel_error, 100 * report.test_max_rel_error
    print(f"predictor: held-out mean relative error {err:.1f}% (max {worst:.1f}%) "
          f"on {report.n_test} architectures")  # fmt: skip
    table = Nb201Table.load()
    results = {"predictor": vars(report), "searches": []}
    x = torch.rand(args.batch, 3, 32, 32)
    for w in args.weights:
        cfg = SearchConfig(space="nb201", dataset="cifar10", limit=args.limit, channels=16,
                           layers=args.cells, k=4, epochs=args.epochs,
                           warmup_epochs=args.warmup, batch_size=64, threads=2,
                           latency_weight=w, seed=args.seed,
                           latency_predictor=str(out / "predictor.safetensors") if w else None,
                           out_dir=str(out / f"search_w{w}"))  # fmt: skip
        res = run_search(cfg, progress=True)
        arch = res.genotype
        net = latency.build_network("nb201", arch, 16, 5)
        measured = latency.time_network(net, x, repeats=20, warmup=3)
        with torch.no_grad():
            predicted = float(predictor(latency.encode("nb201", arch)))
        row = {"latency_weight": w, "arch": arch, "nb201_test_acc": table.accuracy(arch),
               "measured_ms": measured, "predicted_ms": predicted,
               "search_seconds": sum(h["seconds"] for h in res.history)}  # fmt: skip
        print(row)
        results["searches"].append(row)
        write_json(out / "results.json", results)  # after every search: a kill loses one
    lines = ["| latency weight | cell | NB201 test acc (%) | measured (ms) | predicted (ms) |",
             "| ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in results["searches"]:
        lines.append(f"| {r['latency_weight']} | `{r['arch']}` | {r['nb201_test_acc']:.2f} | "
                     f"{r['measured_ms']:.2f} | {r['predicted_ms']:.2f} |")  # fmt: skip
    publish("\n".join(lines) + "\n", results, out / "results.md")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results["searches"]:
        ax.scatter(r["measured_ms"], r["nb201_test_acc"])
        ax.annotate(f"w={r['latency_weight']}", (r["measured_ms"], r["nb201_test_acc"]))
    ax.set_xlabel(f"measured latency, batch {args.batch}, 2 threads (ms)")
    ax.set_ylabel("NAS-Bench-201 CIFAR-10 test accuracy (%)")
    save_figure_atomic(fig, out / "tradeoff.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()

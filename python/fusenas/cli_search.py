"""``fusenas search`` and ``fusenas latency``: the search side of the command line.

    fusenas search pcdarts [--config search.yaml] [--set epochs=3 --set space=nb201] [--resume]
    fusenas latency collect --space darts --n 200 -o latency.jsonl
    fusenas latency fit latency.jsonl -o predictor.safetensors

Search settings are fusenas.search.config.SearchConfig's fields (YAML file,
then ``--set`` overrides). Launch with ``torchrun --nproc_per_node=P -m
fusenas search pcdarts ...`` for a data-parallel search.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="architecture search (PC-DARTS, latency-aware)")
    algo = p.add_subparsers(dest="algorithm", required=True)
    s = algo.add_parser("pcdarts", help="PC-DARTS on the DARTS or NAS-Bench-201 space")
    s.add_argument("--config", default=None, help="YAML file of SearchConfig settings")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set epochs=5")  # fmt: skip
    s.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
    s.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("latency", help="measure architectures' latency and fit a predictor")
    step = p.add_subparsers(dest="step", required=True)
    c = step.add_parser("collect", help="time sampled architectures on this machine")
    c.add_argument("--space", choices=("darts", "nb201"), default="darts")
    c.add_argument("--n", type=int, default=200, help="architectures to sample (default 200)")
    c.add_argument("-o", "--out", required=True, help="JSONL file of records to write")
    c.add_argument("--channels", type=int, default=16)
    c.add_argument("--layers", type=int, default=8,
                   help="darts: cells; nb201: cells per stage (default 8)")  # fmt: skip
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("--image-size", type=int, default=32)
    c.add_argument("--repeats", type=int, default=10, help="calls per timing (median)")
    c.add_argument("--passes", type=int, default=1,
                   help="interleaved passes over all architectures; fastest counts")  # fmt: skip
    c.add_argument("--device", default="cpu")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-progress", action="store_true")
    f = step.add_parser("fit", help="fit the latency predictor on collected records")
    f.add_argument("records", help="JSONL file written by `fusenas latency collect`")
    f.add_argument("-o", "--out", required=True, help="predictor file (.safetensors) to write")
    f.add_argument("--test-fraction", type=float, default=0.2)
    f.add_argument("--steps", type=int, default=3000)
    f.add_argument("--weight-decay", type=float, default=1e-2)
    f.add_argument("--seed", type=int, default=0)


def cmd_search(args: argparse.Namespace) -> int:
    from fusenas import distributed
    from fusenas.config_file import load_config
    from fusenas.search.config import SearchConfig
    from fusenas.search.pcdarts import run_search

    config = load_config(SearchConfig, args.config, args.set)
    try:
        result = run_search(config, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.shutdown()
    if distributed_rank() != 0:
        return 0
    last = result.history[-1] if result.history else {}
    print(f"search done: {len(result.history)} epochs, valid accuracy "
          f"{last.get('valid_acc', float('nan')):.2f}%  -> {result.out_dir}")  # fmt: skip
    g = result.genotype
    print("genotype:", g if isinstance(g, str) else json.dumps(g.to_dict()))
    if isinstance(g, str):
        try:
            from fusenas.search.nb201_table import Nb201Table

            table = Nb201Table.load()
            print(f"NAS-Bench-201 CIFAR-10 test accuracy (200 epochs): {table.accuracy(g):.2f}% "
                  f"(better than {table.percentile(g):.1f}% of the space)")  # fmt: skip
        except (FileNotFoundError, KeyError):
            pass
    return 0


def distributed_rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def cmd_latency(args: argparse.Namespace) -> int:
    import torch

    from fusenas.search import latency

    if args.step == "collect":
        torch.set_num_threads(args.threads)
        recs = latency.collect(args.space, args.n, args.out, channels=args.channels,
                               layers=args.layers, batch_size=args.batch_size,
                               image_size=args.image_size, repeats=args.repeats, seed=args.seed,
                               passes=args.passes,
                               device=args.device, progress=not args.no_progress)  # fmt: skip
        ms = sorted(r["latency_ms"] for r in recs)
        print(f"{len(recs)} architectures timed: {ms[0]:.2f} .. {ms[-1]:.2f} ms "
              f"(median {ms[len(ms) // 2]:.2f}) -> {args.out}")  # fmt: skip
        return 0
    records = latency.read_records(args.records)
    model, report = latency.fit(records, test_fraction=args.test_fraction, steps=args.steps,
                                weight_decay=args.weight_decay, seed=args.seed)  # fmt: skip
    model.save(args.out)
    print(f"fitted on {report.n_train} architectures; held-out {report.n_test}: mean relative "
          f"error {100 * report.test_mean_rel_error:.1f}% (max "
          f"{100 * report.test_max_rel_error:.1f}%), train "
          f"{100 * report.train_mean_rel_error:.1f}%  -> {Path(args.out)}")  # fmt: skip
    return 0

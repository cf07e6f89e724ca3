"""``fusenas compress``: the compression side of the command line.

    fusenas compress trp [--config trp.yaml] [--set scheme=spatial --set epochs=30] [--resume]
    fusenas compress baseline ...        the same training without TRP (the reference)

Settings are fusenas.compress.config.CompressConfig's fields (YAML file, then
``--set`` overrides). ``torchrun --nproc_per_node=P -m fusenas compress trp ...``
trains data-parallel.
"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a network (TRP) and report what it gained")
    method = p.add_subparsers(dest="method", required=True)
    methods = {
        "trp": "Trained Rank Pruning, exported to fused LowRankConv2d layers",
        "baseline": "the same training without compression (reference)",
    }
    for name, text in methods.items():
        m = method.add_parser(name, help=text)
        m.add_argument("--config", default=None, help="YAML file of CompressConfig settings")
        m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting (repeatable), e.g. --set epochs=30")  # fmt: skip
        m.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
        m.add_argument("--no-progress", action="store_true")


def cmd_compress(args: argparse.Namespace) -> int:
    from fusenas import distributed
    from fusenas.compress.config import CompressConfig
    from fusenas.compress.driver import run_compress
    from fusenas.config_file import load_config

    config = load_config(CompressConfig, args.config, [f"method={args.method}", *args.set])
    try:
        result = run_compress(config, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.shutdown()
    print(f"wrote {result.out_dir / 'compressed.safetensors'} and {result.out_dir / 'report.md'}")
    return 0

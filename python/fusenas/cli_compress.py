"""``fusenas compress``: the compression side of the command line.

    fusenas compress trp [--config trp.yaml] [--set scheme=spatial --set epochs=30] [--resume]
    fusenas compress baseline ...        the same training without TRP (the reference)
    fusenas compress slq|mlq|dnq [--set init=runs/base/dense.safetensors --set bits=4 ...]
    fusenas compress export RUN_DIR [--threshold 0.02]   export a finished TRP run again

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
        "slq": "single-level k-bit quantization with re-training (SLQ)",
        "mlq": "multi-level quantization, layer groups one after another (MLQ; ternary)",
        "dnq": "per-layer bit widths from a policy-gradient controller (DNQ)",
    }
    for name, text in methods.items():
        m = method.add_parser(name, help=text)
        m.add_argument("--config", default=None, help="YAML file of CompressConfig settings")
        m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting (repeatable), e.g. --set epochs=30")  # fmt: skip
        m.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
        m.add_argument("--no-progress", action="store_true")
    e = method.add_parser("export", help="export a finished TRP run again (this version's export)")
    e.add_argument("run_dir", help="the run's out_dir (config.yaml, dense.safetensors)")
    e.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep singular values >= this (default: the run's export_threshold)",
    )
    e.add_argument("--no-progress", action="store_true")


def cmd_compress(args: argparse.Namespace) -> int:
    from fusenas import distributed
    from fusenas.compress.config import QUANT_METHODS, CompressConfig
    from fusenas.compress.driver import run_compress
    from fusenas.compress.quantize_driver import run_quantize
    from fusenas.config_file import load_config

    if args.method == "export":
        from fusenas.compress.driver import export_run

        result = export_run(args.run_dir, args.threshold, progress=not args.no_progress)
        print(f"wrote {result.out_dir} (compressed.safetensors, report.md)")
        return 0
    config = load_config(CompressConfig, args.config, [f"method={args.method}", *args.set])
    try:
        run = run_quantize if config.method in QUANT_METHODS else run_compress
        result = run(config, resume=args.resume, progress=not args.no_progress)
    finally:
        distributed.shutdown()
    print(f"wrote {result.out_dir} (report.md, the compressed model's .safetensors)")
    return 0

"""The ``fusenas`` command: demo, train, quantize, infer, info, search, latency.

    fusenas demo [--out DIR]        train on digits, quantize to 8/4/3/2/ternary, compare
    fusenas train --dataset digits -o fp32.safetensors
    fusenas quantize fp32.safetensors -o 4bit.safetensors --bits 4 --group-size 128
    fusenas infer 4bit.safetensors [--dataset digits]
    fusenas info                    same as python -m fusenas.info
    fusenas search pcdarts --set space=nb201 --set epochs=5   (see fusenas.cli_search)
    fusenas latency collect|fit ...
    fusenas compress trp --set scheme=spatial --set epochs=30   (see fusenas.cli_compress)

Bad arguments and bad files end with ``fusenas: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from fusenas import cli_compress, cli_search
from fusenas.quant.packed import parse_bits
from fusenas.runtime import retain_freed_memory_from_env

_DEFAULT_EPOCHS = {"digits": 20, "fashion-mnist": 3, "cifar10": 5}


def _bits(text: str) -> str:
    try:
        parse_bits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _bits_list(text: str) -> list[str]:
    return [_bits(t.strip()) for t in text.split(",") if t.strip()]


def _group_size(text: str) -> int | None:
    if text.lower() in ("none", "channel", "per-channel", "-1"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or value % 16:
        raise argparse.ArgumentTypeError(
            f"group size: expected a positive multiple of 16 or 'channel', got {text!r}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        p.add_argument(
            "--dataset",
            choices=("digits", "cifar10", "fashion-mnist"),
            default=None,
            help="dataset (default: digits, or the one recorded in the checkpoint)",
        )
        p.add_argument(
            "--data-path", default=None, help="CIFAR-10 .npz file or Fashion-MNIST IDX directory"
        )
        p.add_argument(
            "--limit",
            type=_positive_int,
            default=None,
            help="use a random subset of at most this many images",
        )
    p.add_argument("--threads", type=_positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusenas", description="k-bit quantization of small CNNs with fusenas' kernels"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train on digits, quantize to 8/4/3/2/ternary, compare")
    p.add_argument(
        "--out", default="fusenas_demo", help="output directory (default ./fusenas_demo)"
    )
    p.add_argument(
        "--bits",
        type=_bits_list,
        default=None,
        help="comma-separated widths (default 8,4,3,2,ternary)",
    )
    p.add_argument("--group-size", type=_group_size, default=128)
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--repeats", type=_positive_int, default=50, help="latency repeats")
    p.add_argument("--no-progress", action="store_true")
    _add_common(p, dataset=False)

    p = sub.add_parser(
        "train",
        help="train the demo CNN, or a searched cell (--genotype), save an fp32 checkpoint",
    )
    p.add_argument(
        "--genotype",
        default=None,
        help="genotype.json of a search: train its DARTS / NAS-Bench-201 network",
    )
    p.add_argument("--channels", type=_positive_int, default=16, help="derived network's C")
    p.add_argument("--layers", type=_positive_int, default=8,
                   help="derived network: cells (DARTS) or cells per stage (NB201)")  # fmt: skip
    p.add_argument("--auxiliary", action="store_true", help="DARTS auxiliary head (weight 0.4)")
    p.add_argument("--cutout", type=int, default=0, help="cutout square size (0: off)")
    p.add_argument("--drop-path", type=float, default=0.0, help="final drop-path probability")
    p.add_argument(
        "-o",
        "--out",
        default=None,
        help="checkpoint path (default ./fusenas_<dataset>_fp32.safetensors)",
    )
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default 3e-3 AdamW for the CNN, 0.025 SGD for --genotype)",
    )
    p.add_argument("--no-progress", action="store_true")
    _add_common(p)

    p = sub.add_parser("quantize", help="fp32 checkpoint in, packed k-bit file out")
    p.add_argument("checkpoint", help="fp32 checkpoint written by `fusenas train`")
    p.add_argument("-o", "--out", required=True, help="packed file to write")
    p.add_argument("--bits", type=_bits, default="4", help="2..8 or ternary (default 4)")
    p.add_argument("--group-size", type=_group_size, default=128)
    p.add_argument("--asymmetric", action="store_true", help="per-group zero points")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="fnmatch pattern of layer names to keep in float (repeatable)",
    )
    _add_common(p, dataset=False)

    p = sub.add_parser("infer", help="accuracy and latency of a packed (or fp32) model")
    p.add_argument("model", help="file written by `fusenas quantize` or `fusenas train`")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--repeats", type=_positive_int, default=50, help="latency repeats")
    _add_common(p)

    sub.add_parser("info", help="build and dispatch information (python -m fusenas.info)")
    p = sub.add_parser(
        "pipeline", help="search a cell, train it with TRP, quantize, time low-bit inference"
    )
    p.add_argument("--out", default="fusenas_pipeline", help="output directory")
    p.add_argument("--bits", type=_bits, default="4", help="k of the quantized layers (default 4)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    p.add_argument("--no-progress", action="store_true")
    _add_common(p, dataset=False)
    cli_search.add_parsers(sub)
    cli_compress.add_parsers(sub)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from fusenas.demo import DEFAULT_BITS, run_demo

    run_demo(
        args.out, args.bits or DEFAULT_BITS, args.group_size, args.threads, args.seed,
        args.epochs, args.repeats, progress=not args.no_progress,
    )  # fmt: skip
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fusenas.data.datasets import load_splits
    from fusenas.models import small_cnn_for
    from fusenas.quant.io import save_float
    from fusenas.training import accuracy, fit

    dataset = args.dataset or "digits"
    args.lr_set = args.lr is not None
    if args.lr is None:
        args.lr = 3e-3
    torch.set_num_threads(args.threads)
    train, test = load_splits(dataset, args.data_path, args.seed, limit=args.limit)
    print(f"{dataset}: {len(train)} train / {len(test)} test images, {tuple(train.x.shape[1:])}")
    torch.manual_seed(args.seed)
    epochs = args.epochs or _DEFAULT_EPOCHS[dataset]
    if args.genotype:
        model = _derived_network(args, train)
        from fusenas.search.train_derived import train_from_scratch

        result = train_from_scratch(
            model, train, test, epochs, args.batch_size, lr=args.lr if args.lr_set else 0.025,
            drop_path_prob=args.drop_path, cutout_size=args.cutout, seed=args.seed,
            progress=not args.no_progress,
        )  # fmt: skip
        acc = result.test_accuracy
    else:
        model = small_cnn_for(dataset, num_classes=len(train.classes))
        fit(model, train, epochs, args.batch_size, args.lr, seed=args.seed,
            augment=dataset == "cifar10", progress=not args.no_progress)  # fmt: skip
        acc = accuracy(model, test)
    out = Path(args.out or f"fusenas_{dataset}_fp32.safetensors")
    meta = {
        "dataset": dataset, "split_seed": args.seed, "test_fraction": 0.2, "limit": args.limit,
        "fp32_accuracy": acc, "epochs": epochs,
    }  # fmt: skip
    save_float(model, out, meta)
    print(f"test accuracy {acc:.2f}%  saved {out} ({out.stat().st_size:,} bytes)")
    return 0


def _derived_network(args: argparse.Namespace, train) -> torch.nn.Module:
    import json

    path = Path(args.genotype)
    if not path.is_file():
        raise FileNotFoundError(f"--genotype: no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--genotype: {path} is not JSON ({exc})") from exc
    in_ch, classes = train.x.shape[1], len(train.classes)
    if isinstance(data, dict) and "arch_str" in data:
        from fusenas.models.nb201_network import Nb201Network

        return Nb201Network(data["arch_str"], args.channels, args.layers, classes, in_ch)
    from fusenas.models.darts_network import DartsNetwork

    return DartsNetwork(data, args.channels, classes, args.layers, args.auxiliary, in_ch)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from fusenas.quant.convert import QuantConfig, format_report, quantize_
    from fusenas.quant.io import load_float, save_packed

    state = load_float(args.checkpoint)
    model = state.build_model()
    before = os.path.getsize(args.checkpoint)
    config = QuantConfig(
        bits=args.bits, group_size=args.group_size, symmetric=not args.asymmetric,
        exclude=tuple(args.exclude),
    )  # fmt: skip
    report = quantize_(model, config)
    if not report:
        raise ValueError("exclude: every layer was excluded; nothing to quantize")
    meta = {**state.metadata, "bits": args.bits, "source": str(args.checkpoint)}
    out = save_packed(model, args.out, meta)
    after = os.path.getsize(out)
    print(format_report(report))
    fp32_w = sum(r["fp32_bytes"] for r in report)
    packed_w = sum(r["packed_bytes"] for r in report)
    print(f"weights of quantized layers: {fp32_w:,} -> {packed_w:,} bytes "
          f"({fp32_w / packed_w:.2f}x smaller)")  # fmt: skip
    print(f"file: {before:,} -> {after:,} bytes ({before / after:.2f}x smaller)  wrote {out}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from fusenas.data.datasets import load_splits
    from fusenas.quant.io import load_model
    from fusenas.training import accuracy, measure_latency

    torch.set_num_threads(args.threads)
    model, state = load_model(args.model)
    meta = state.metadata
    dataset = args.dataset or meta.get("dataset", "digits")
    seed = (
        meta.get("split_seed", args.seed)
        if args.dataset in (None, meta.get("dataset"))
        else args.seed
    )
    limit = args.limit if args.limit is not None else meta.get("limit")
    _, test = load_splits(dataset, args.data_path, seed, meta.get("test_fraction", 0.2), limit)
    acc = accuracy(model, test)
    print(f"{args.model}: {state.kind} model, {len(state.layers)} k-bit layers")
    print(f"{dataset} test split ({len(test)} images): accuracy {acc:.2f}%")
    for b in sorted({1, args.batch_size}):
        x = test.x[:b].contiguous()
        t = measure_latency(model, x, repeats=args.repeats)
        print(
            f"latency batch {x.shape[0]:>4}: {t * 1e3:8.3f} ms  ({torch.get_num_threads()} threads)"
        )
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from fusenas.pipeline import run_pipeline

    bits = args.bits if args.bits == "ternary" else int(args.bits)
    run_pipeline(args.out, bits, args.seed, args.threads, args.quick, not args.no_progress)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fusenas.info import main as info_main

    return info_main([])


_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "quantize": _cmd_quantize,
    "infer": _cmd_infer,
    "info": _cmd_info,
    "pipeline": _cmd_pipeline,
    "search": lambda args: cli_search.cmd_search(args),
    "latency": lambda args: cli_search.cmd_latency(args),
    "compress": lambda args: cli_compress.cmd_compress(args),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fusenas`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Every command runs forward passes whose activations would otherwise
        # fault in fresh pages on each call (fusenas/runtime.py says how much).
        retain_freed_memory_from_env()
        return _COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fusenas {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

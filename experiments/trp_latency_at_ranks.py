"""Latency of a TRP-decomposed CIFAR ResNet-20 at given ranks, without its training run.

Latency depends on the ranks, not on the trained values, so this rebuilds the network a
TRP run exported (the per-layer ranks in a ``trp_layer_latency.py`` JSON, by default
the seed-1 energy-0.99 run's, ``docs/trp_r20_layer_latency.json``) from random weights
and times it against the dense ResNet-20, both deployed with
:func:`fusenas.nn.optimize_for_inference` (BN folded; residual add and ReLU fused into
the low-rank convs), at batch 64 and 1, channels_last and NCHW, 2 threads, rounds
interleaved round-robin so drift of the shared machine hits both alike. Use it to follow
the issue's latency target (at least 1.5x at batch 64) as the kernels change; accuracy
needs the real run (``trp_speed.py``).

    python experiments/trp_latency_at_ranks.py --out docs/trp_r20_latency_at_ranks.md
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
from pathlib import Path

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)
from trp_runs import time_interleaved

from fusenas.compress.decompose import DecomposeConfig, decompose_
from fusenas.models.resnet_cifar import resnet20
from fusenas.nn import optimize_for_inference
from fusenas.profiling import count_macs

DEFAULT_RANKS = Path(__file__).resolve().parents[1] / "docs" / "trp_r20_layer_latency.json"


def read_ranks(path: Path) -> dict[str, tuple[str, int]]:
    """{layer name: (scheme, rank)} from the "module" column ("spatial r=15 (...)")."""
    ranks = {}
    for row in json.loads(path.read_text()):
        m = re.match(r"(channel|spatial) r=(\d+)", row["module"])
        if m:
            ranks[row["layer"]] = (m.group(1), int(m.group(2)))
    if not ranks:
        raise ValueError(f"{path}: no 'channel|spatial r=N' modules to read ranks from")
    return ranks


def build(ranks: dict[str, tuple[str, int]]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(dense ResNet-20, the same network with the listed convs decomposed), eval mode."""
    torch.manual_seed(0)
    dense = resnet20(num_classes=10).eval()
    for mod in dense.modules():  # BN statistics as a trained network has them, not 0 / 1
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    low = resnet20(num_classes=10).eval()
    low.load_state_dict(dense.state_dict())
    for name, (scheme, rank) in ranks.items():
        cfg = DecomposeConfig(scheme=scheme, rank=rank, include=(name,), strided=True,
                              keep_if_not_smaller=False)  # fmt: skip
        if not decompose_(low, cfg):
            raise ValueError(f"layer {name!r} is not a decomposable conv of ResNet-20")
    return dense, low


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ranks", type=Path, default=DEFAULT_RANKS,
        help="a trp_layer_latency.py JSON whose 'module' column gives the ranks",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="Markdown table (and its .json) to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ranks = read_ranks(args.ranks)
    dense, low = build(ranks)
    x1 = torch.rand(1, 3, 32, 32)
    macs = {"dense": count_macs(dense, x1), "trp": count_macs(low, x1)}
    eager = {"dense": dense, "trp": low}
    nets = {k: optimize_for_inference(copy.deepcopy(m)) for k, m in eager.items()}
    inputs = {}
    for batch in (64, 1):
        x = torch.rand(batch, 3, 32, 32)
        inputs[(batch, "NCHW")] = x
        inputs[(batch, "CL")] = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # the deployed networks compute what the eval-mode ones do
        for k, x in ((k, x) for k in nets for x in inputs.values()):
            torch.testing.assert_close(nets[k](x), eager[k](x), rtol=1e-3, atol=1e-3)
    times = time_interleaved(nets, inputs, args.rounds, args.calls)
    med = {k: statistics.median(v) for k, v in times.items()}
    low_ = {k: min(v) for k, v in times.items()}  # the least disturbed round
    dense_m, trp_m = macs["dense"] / 1e6, macs["trp"] / 1e6
    rows: list[dict] = []
    lines = [
        f"ResNet-20 at the ranks of `{args.ranks.name}` ({len(ranks)} decomposed convs), "
        "random weights; both networks deployed (optimize_for_inference); "
        f"{args.threads} threads; median (and min) of {args.rounds} interleaved rounds of "
        f"{args.calls} calls; MACs {dense_m:.1f}M dense, {trp_m:.1f}M TRP "
        f"({dense_m / trp_m:.2f}x fewer).",
        "",
        "| batch | layout | dense (ms) | TRP (ms) | speed-up | min dense / TRP (ms) | speed-up |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, layout in inputs:
        d, t = med[("dense", (batch, layout))], med[("trp", (batch, layout))]
        dm, tm = low_[("dense", (batch, layout))], low_[("trp", (batch, layout))]
        rows.append({"batch": batch, "layout": layout, "dense_ms": d, "trp_ms": t,
                     "dense_min_ms": dm, "trp_min_ms": tm})  # fmt: skip
        lines.append(f"| {batch} | {layout} | {d:.3f} | {t:.3f} | {d / t:.2f}x | "
                     f"{dm:.3f} / {tm:.3f} | {dm / tm:.2f}x |")  # fmt: skip
    for batch in (64, 1):
        ratio = []
        for stat in (med, low_):
            best = {n: min(stat[(n, (batch, lay))] for lay in ("NCHW", "CL")) for n in nets}
            ratio.append(best["dense"] / best["trp"])
        lines.append(f"\nBatch {batch}, each network in its faster layout: {ratio[0]:.2f}x "
                     f"(medians), {ratio[1]:.2f}x (mins).")  # fmt: skip
    publish("\n".join(lines) + "\n", {"ranks": ranks, "macs": macs, "rows": rows}, args.out)


if __name__ == "__main__":
    main()

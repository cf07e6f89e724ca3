"""Training-step time of a TRP-decomposed network: fused low-rank convs against the same
factors as two torch convs, and against the dense network it came from.

Fine-tuning or training a decomposed model runs forward and backward through every
LowRankConv2d. This times one SGD step (forward, backward, no optimizer) at batch 128
on 2 threads, channels_last input as the data set stores it, for:

- the exported TRP network with fusenas' fused kernel (``save_intermediate`` automatic,
  and forced on / off);
- the same network with each LowRankConv2d run as its two torch convs (oneDNN);
- the dense baseline network.

Rounds are interleaved over the variants (round-robin) so host drift hits them alike;
the table gives each variant's median over the rounds.

    python experiments/lowrank_train_step.py runs/trp_r20_40ep/baseline \\
        runs/trp_r20_40ep/trp_e099 --out docs/lowrank_train_step.md

Without the run directories (they are not in the repository), ``--ranks`` rebuilds the
exported network from a run's per-layer ranks with random weights and input, as
trp_latency_at_ranks.py does (step time depends on the ranks, not on the values):

    python experiments/lowrank_train_step.py --ranks docs/trp_r20_layer_latency.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import publish  # experiments/results_io.py (the script's directory)
from trp_latency_at_ranks import build, read_ranks

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import load_split, load_trained
from fusenas.config_file import load_config
from fusenas.nn import LowRankConv2d
from fusenas.ops.lowrank_conv import factor_params
from fusenas.quant.io import load_model


class TwoConvs(torch.nn.Module):
    """A LowRankConv2d's factors as two torch convs (the unfused sequence)."""

    def __init__(self, low: LowRankConv2d) -> None:
        super().__init__()
        self.low = low
        self.params = factor_params(low.scheme, low.stride, low.padding, low.dilation)

    def forward(self, x, residual=None, activation="none"):
        (s1, p1, d1), (s2, p2, d2) = self.params
        t = F.conv2d(x, self.low.weight1, None, s1, p1, d1)
        y = F.conv2d(t, self.low.weight2, self.low.bias, s2, p2, d2)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if activation == "relu" else y


def swap_two_convs(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces every LowRankConv2d of model (in place) by TwoConvs over the same weights."""
    for name, child in list(model.named_children()):
        if isinstance(child, LowRankConv2d):
            setattr(model, name, TwoConvs(child))
        else:
            swap_two_convs(child)
    return model


def set_save(model: torch.nn.Module, save: bool | None) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, LowRankConv2d):
            m.save_intermediate = save
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, nargs="?", help="a `compress baseline` run")
    ap.add_argument("trp", type=Path, nargs="?", help="a `compress trp` run")
    ap.add_argument("--ranks", type=Path, help="instead of the runs: a trp_layer_latency.py JSON")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if (args.ranks is None) == (args.baseline is None or args.trp is None):
        ap.error("give either the baseline and trp run directories or --ranks")
    torch.set_num_threads(2)
    if args.ranks is not None:
        dense, low = build(read_ranks(args.ranks))
        x = torch.rand(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(0))

        def trp() -> torch.nn.Module:  # a fresh copy of the rebuilt network
            return copy.deepcopy(low)
    else:
        base_cfg = load_config(CompressConfig, args.baseline / "config.yaml")
        train, test = load_split(base_cfg)
        c, k = test.x.shape[1], len(test.classes)
        dense = load_trained(args.baseline, base_cfg, c, k)
        x = train.x[: args.batch].float() / 255.0
        y = torch.as_tensor(train.y[: args.batch]).long()

        def trp() -> torch.nn.Module:  # a fresh copy of the exported network
            return load_model(args.trp / "compressed.safetensors")[0]

    variants = {
        "dense baseline (torch convs)": dense,
        "TRP, fused (automatic keep)": set_save(trp(), None),
        "TRP, fused (always keep t)": set_save(trp(), True),
        "TRP, fused (always recompute t)": set_save(trp(), False),
        "TRP, two torch convs per layer": swap_two_convs(trp()),
    }
    x = x.contiguous(memory_format=torch.channels_last)

    def step(net: torch.nn.Module) -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    for net in variants.values():
        net.train()
        for _ in range(2):
            step(net)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, net in variants.items():
            t0 = time.perf_counter()
            for _ in range(3):
                step(net)
            times[name].append((time.perf_counter() - t0) / 3 * 1e3)
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = med["TRP, two torch convs per layer"]
    lines = [
        f"Training step (forward + backward, batch {args.batch}, channels_last, "
        f"{torch.get_num_threads()} threads): median over {args.rounds} interleaved rounds of "
        "3 steps.",
        "",
        "| network | step (ms) | vs two torch convs per layer |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {t:.1f} | {ref / t:.2f}x |" for name, t in med.items()]
    publish("\n".join(lines) + "\n", {"median_ms": med, "rounds_ms": times}, args.out)


if __name__ == "__main__":
    main()

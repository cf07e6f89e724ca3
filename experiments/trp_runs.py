"""Loads a finished ``fusenas compress baseline`` run and a ``fusenas compress trp`` run
for the side-by-side TRP experiments (trp_speed.py, trp_layer_latency.py), and times
networks side by side (also trp_latency_at_ranks.py)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import load_split, load_trained
from fusenas.config_file import load_config
from fusenas.quant.io import load_model
from fusenas.runtime import retain_freed_memory


@dataclass
class TrpRuns:
    test: object  # the runs' held-out split (fusenas.data batches)
    baseline: torch.nn.Module  # dense, as trained, eval mode
    trp_trained: torch.nn.Module  # the TRP run's dense weights before export, eval mode
    exported: torch.nn.Module  # the TRP run's LowRankConv2d export, eval mode


def load_trp_runs(baseline: Path, trp: Path) -> TrpRuns:
    """Both runs' networks and the TRP run's test split; sets torch's threads to its config's."""
    base_cfg = load_config(CompressConfig, baseline / "config.yaml")
    trp_cfg = load_config(CompressConfig, trp / "config.yaml")
    torch.set_num_threads(trp_cfg.threads or 2)
    _, test = load_split(trp_cfg)
    c, k = test.x.shape[1], len(test.classes)
    return TrpRuns(
        test=test,
        baseline=load_trained(baseline, base_cfg, c, k).eval(),
        trp_trained=load_trained(trp, trp_cfg, c, k).eval(),
        exported=load_model(trp / "compressed.safetensors")[0].eval(),
    )


def timing_parser(description: str, rounds: int) -> argparse.ArgumentParser:
    """The arguments both TRP timing scripts take: the two run directories, --rounds,
    --out and --malloc-defaults."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("baseline", type=Path)
    ap.add_argument("trp", type=Path)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="glibc malloc at its defaults (each pass faults in its activations)",
    )
    return ap


def load_for_timing(args: argparse.Namespace) -> tuple[TrpRuns, str]:
    """Sets the allocator as --malloc-defaults says (before anything is timed), loads
    both runs; returns them and a sentence for the report saying which it was."""
    retained = not args.malloc_defaults and retain_freed_memory()
    note = (
        "Freed memory retained for reuse (fusenas.runtime)."
        if retained
        else "glibc malloc at its defaults."
    )
    return load_trp_runs(args.baseline, args.trp), note


@torch.no_grad()
def time_interleaved(nets: dict, inputs: dict, rounds: int, calls: int) -> dict:
    """{(net, input): [ms per call, one per round]}, round-robin over every pair."""
    times: dict = {}
    for _ in range(rounds):
        for name, net in nets.items():
            for key, x in inputs.items():
                net(x)  # warm: allocator, thread pool
                t0 = time.perf_counter()
                for _ in range(calls):
                    net(x)
                times.setdefault((name, key), []).append((time.perf_counter() - t0) / calls * 1e3)
    return times

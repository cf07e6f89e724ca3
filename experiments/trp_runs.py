"""Loads a finished ``fusenas compress baseline`` run and a ``fusenas compress trp`` run
for the side-by-side TRP experiments (trp_speed.py, trp_layer_latency.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import load_split, load_trained
from fusenas.config_file import load_config
from fusenas.quant.io import load_model


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

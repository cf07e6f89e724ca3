"""The compression driver: train (with TRP, or plainly as the baseline), export, report.

A run trains the chosen model on the training split with SGD, applying TRP's
projection and nuclear sub-gradient around each step (``method="trp"``), and
writes, under ``out_dir``: ``checkpoint.safetensors`` every epoch (atomic; no
pickle), ``log.jsonl`` (one line per epoch, with the layers' current ranks),
``config.yaml``, ``curves.png`` (accuracy, loss and TRP's ranks per epoch);
at the end ``dense.safetensors`` (the trained network),
``compressed.safetensors`` (TRP: its convs exported to fused LowRankConv2d
layers by the singular-value threshold, no fine-tuning) and ``report.md`` /
``report.json``: accuracy, parameters, MACs, file size and latency of each,
side by side. ``resume=True`` continues a killed run to the same result.
Data-parallel under torchrun, as the search driver.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fusenas import distributed
from fusenas._state_io import save_state
from fusenas.compress.config import CompressConfig
from fusenas.compress.loop import epoch_generator, train_epoch
from fusenas.compress.plots import plot_training
from fusenas.compress.report import measure, write_report
from fusenas.compress.trp import TRPRegularizer, TRPSettings
from fusenas.config_file import dump_config
from fusenas.data.batches import evaluate
from fusenas.data.datasets import ImageDataset, load_train_set, train_test_split
from fusenas.quant.io import load_float, save_float
from fusenas.run_dir import resume_state, start_run, write_config, write_log

logger = logging.getLogger("fusenas.compress")
CHECKPOINT = "checkpoint.safetensors"
_RUN_DEFINING = (
    "method",
    "model",
    "genotype",
    "channels",
    "layers",
    "dataset",
    "limit",
    "test_size",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "scheme",
    "energy",
    "period",
    "nuclear_weight",
    "seed",
    "split_seed",
)


@dataclass
class CompressResult:
    dense: nn.Module
    compressed: nn.Module
    report: list[dict[str, Any]]
    history: list[dict[str, Any]]
    out_dir: Path


def build_model(config: CompressConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The network ``config.model`` names, for ``in_channels`` and ``num_classes``."""
    if config.model == "nb201":
        from fusenas.models.nb201_network import Nb201Network

        arch = config.genotype
        if not arch.startswith("|"):
            arch = json.loads(Path(arch).read_text())["arch_str"]
        return Nb201Network(arch, config.channels, config.layers, num_classes, in_channels)
    if config.model == "darts":
        from fusenas.models.darts_network import DartsNetwork
        from fusenas.search.genotype import Genotype

        genotype = Genotype.load(config.genotype)
        return DartsNetwork(
            genotype, config.channels, num_classes, config.layers, in_channels=in_channels
        )
    from fusenas.models import CifarResNet

    depth = int(config.model.removeprefix("resnet"))
    mean = [0.5] * in_channels if in_channels != 3 else None
    return CifarResNet(depth, num_classes, in_channels, mean=mean, std=mean)


def load_trained(
    run_dir: Path, config: CompressConfig, in_channels: int, num_classes: int
) -> nn.Module:
    """The network a finished run trained (its ``dense.safetensors``), in eval mode."""
    model = build_model(config, in_channels, num_classes)
    load_float(Path(run_dir) / "dense.safetensors").load_into(model)
    return model.eval()


def trp_settings(config: CompressConfig, model: nn.Module) -> TRPSettings:
    """TRP's settings for ``model`` as ``config`` gives them (the first conv stays dense)."""
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    return TRPSettings(
        config.scheme,
        config.energy,
        config.period,
        config.nuclear_weight,
        config.export_threshold,
        exclude=(stem,),
        min_kernel=config.min_kernel,
    )


def load_split(config: CompressConfig) -> tuple[ImageDataset, ImageDataset]:
    """(train, test): ``test_size`` images of the training set held out, stratified, seeded
    by ``split_seed`` (``seed`` when None)."""
    seed = config.seed if config.split_seed is None else config.split_seed
    data = load_train_set(config.dataset, config.data_dir, config.limit, seed)
    if config.test_size >= len(data):
        raise ValueError(f"test_size: {config.test_size} leaves no training images of {len(data)}")
    return train_test_split(data, config.test_size / len(data), seed)


def run_compress(
    config: CompressConfig,
    resume: bool = False,
    progress: bool = True,
    model: nn.Module | None = None,
) -> CompressResult:
    """Runs (or resumes) the compression ``config`` describes; see the module docstring.

    ``model``: any nn.Module taking (B, C, H, W) images in [0, 1] to logits, used
    instead of ``config.model`` (TRP then applies to its eligible convs, chosen as
    for the built-in models; the first conv stays dense).
    """
    if not isinstance(config, CompressConfig):
        raise TypeError(f"config: expected a CompressConfig, got {type(config).__name__}")
    run = start_run(config, torch.device(config.device))
    device, rank, world, out = run.device, run.rank, run.world, run.out
    train, test = load_split(config)

    torch.manual_seed(config.seed)
    if model is None:
        model = build_model(config, train.x.shape[1], len(train.classes))
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module or None, got {type(model).__name__}")
    model = model.to(device)
    trp = TRPRegularizer(model, trp_settings(config, model)) if config.method == "trp" else None
    opt = torch.optim.SGD(
        model.parameters(), config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps = max(1, len(train) // config.batch_size)
    milestones = [int(m * config.epochs) for m in config.milestones]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)

    history: list[dict[str, Any]] = []
    start = 0
    ckpt = out / CHECKPOINT
    if resume:
        parts = {"model": model, "opt": opt, "sched": sched}
        resumed = resume_state(ckpt, config, _RUN_DEFINING, parts, "model")
        if resumed is not None:
            history, start = resumed
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        hooks = {}
        if trp is not None:
            hooks = {"before_forward": trp.before_forward, "after_backward": trp.after_backward}
        train_loss, train_acc = train_epoch(
            model,
            train,
            opt,
            config.batch_size,
            epoch_generator(config.seed, epoch),
            device,
            f"epoch {epoch + 1}/{config.epochs}",
            progress,
            epoch * steps,
            **hooks,
        )
        lr = sched.get_last_lr()[0]
        sched.step()
        test_loss, test_acc = evaluate(model, test, device)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": time.perf_counter() - t0,
            "world_size": world,
            "weights_rank_max_diff": distributed.max_deviation_from_rank0(model.parameters()),
        }
        if trp is not None:
            record["ranks"] = dict(trp.ranks)
        history.append(record)
        if rank == 0:
            save_state(
                ckpt,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "history": history,
                    "config": dump_config(config),
                },
            )
            write_log(out, history)
            plot_training({config.method: history}, out / "curves.png")
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}: train {record['train_acc']:.1f}% "
                    f"test {test_acc:.2f}% ({record['seconds']:.0f} s)"
                )
        distributed.barrier()

    model.eval()
    compressed, report = _export_and_report(model, config, trp, test, out, progress, rank == 0)
    return CompressResult(model, compressed, report, history, out)


def _export_and_report(
    model: nn.Module,
    config: CompressConfig,
    trp: TRPRegularizer | None,
    test: ImageDataset,
    out: Path,
    progress: bool,
    write: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The compressed copy of ``model`` (TRP: exported); with ``write`` (rank 0) also
    dense.safetensors, compressed.safetensors and the report."""
    compressed = copy.deepcopy(model)
    export = trp.export(compressed) if trp is not None else []
    if not write:
        return compressed, []
    dense_path, comp_path = out / "dense.safetensors", out / "compressed.safetensors"
    save_float(model, dense_path, {"config": dump_config(config)})
    save_float(compressed, comp_path, {"config": dump_config(config), "export": export})
    stage = "TRP, exported" if trp is not None else "baseline"
    report = [
        measure("dense (trained)", model, test, config.latency_batches),
        measure(stage, compressed, test, config.latency_batches),
    ]
    text = write_report(out, report, [dense_path, comp_path], export)
    if progress:
        print(text)
    return compressed, report


def export_run(
    run_dir: str | Path, export_threshold: float | None = None, progress: bool = True
) -> CompressResult:
    """Exports a finished TRP run again: its ``dense.safetensors`` through this
    version's export (e.g. after a change to what is exported) or at another
    ``export_threshold``; rewrites ``compressed.safetensors`` and the report, and
    the run's ``config.yaml`` when the threshold changes. The history is empty."""
    from fusenas.config_file import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "dense.safetensors").is_file():
        raise FileNotFoundError(
            f"run_dir: expected a finished run (config.yaml and dense.safetensors) in {run_dir}"
        )
    config = load_config(CompressConfig, run_dir / "config.yaml")
    if config.method != "trp":
        raise ValueError(f"run_dir: {run_dir} is a {config.method!r} run; only TRP runs export")
    if export_threshold is not None:
        config = dataclasses.replace(config, export_threshold=export_threshold)
        write_config(run_dir, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    _, test = load_split(config)
    model = load_trained(run_dir, config, test.x.shape[1], len(test.classes))
    trp = TRPRegularizer(model, trp_settings(config, model))
    compressed, report = _export_and_report(model, config, trp, test, run_dir, progress)
    return CompressResult(model, compressed, report, [], run_dir)

"""The PC-DARTS search driver: first-order bilevel search on real data, resumable, data-parallel.

One run, as PC-DARTS publishes it: the training images are split in two
halves (weights / architecture); every iteration takes an architecture step
(Adam on alphas and betas, on an architecture-half batch; skipped during the
warm-up epochs), then a weight step (SGD with momentum, gradient clipping, on
a weights-half batch); the weights' learning rate follows a cosine schedule
over the epochs. With ``latency_weight`` > 0 the architecture loss adds that
weight times the latency the fitted predictor gives for the current
(softmax) architecture, as latency-aware DARTS does.

Every epoch writes, under ``out_dir``: ``checkpoint.safetensors`` (model,
both optimisers, scheduler, history; written atomically, so a killed run
loses at most the epoch in progress), ``log.jsonl`` (one line per epoch),
``genotype.json`` and ``genotypes/epoch_NNN.json``, and the plots
(``cells.png``, ``alphas.png``). Each epoch's data order and augmentation
come from a generator seeded by (seed, epoch), so ``resume=True`` continues
to exactly the result of an uninterrupted run.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fusenas import distributed
from fusenas._atomic import write_json_atomic
from fusenas._state_io import save_state
from fusenas.config_file import dump_config
from fusenas.data.batches import evaluate, make_batch
from fusenas.data.datasets import ImageDataset, load_train_set
from fusenas.run_dir import resume_state, start_run, write_log
from fusenas.search.config import SearchConfig
from fusenas.search.genotype import Genotype
from fusenas.search.spaces.darts import DartsSupernet
from fusenas.search.spaces.nb201 import Nb201Supernet

logger = logging.getLogger("fusenas.search")

CHECKPOINT = "checkpoint.safetensors"
# Settings a resumed run must share with the checkpoint (the rest, e.g.
# threads or eval_limit, may change between sessions).
_RUN_DEFINING = ("space", "dataset", "limit", "channels", "layers", "k", "edge_normalization",
                 "epochs", "warmup_epochs", "batch_size", "lr", "lr_min", "momentum",
                 "weight_decay", "grad_clip", "arch_lr", "arch_weight_decay", "arch_betas",
                 "augment", "latency_weight", "seed")  # fmt: skip


@dataclass
class SearchResult:
    """What a search returns: the final architecture, the per-epoch log, the supernet."""

    genotype: Genotype | str
    history: list[dict[str, Any]]
    model: nn.Module
    out_dir: Path


def peak_rss_bytes() -> int:
    """This process' peak resident memory so far (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_supernet(config: SearchConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The supernet of ``config.space`` (fused edges unless ``config.fused`` is False)."""
    if config.space == "darts":
        return DartsSupernet(config.channels, num_classes, config.layers, config.k,
                             edge_normalization=config.edge_normalization,
                             in_channels=in_channels, fused=config.fused)  # fmt: skip
    return Nb201Supernet(config.channels, num_classes, config.layers, config.k,
                         config.edge_normalization, in_channels, fused=config.fused)  # fmt: skip


def split_halves(ds: ImageDataset, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """PC-DARTS' 50/50 split of the training images: (weights half, architecture half)."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    half = len(ds) // 2
    return ds.subset(perm[:half].sort().values), ds.subset(perm[half:].sort().values)


def _device(config: SearchConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _arch_snapshot(model: nn.Module) -> dict[str, list]:
    """Softmaxed alphas (and raw betas) for the log and the plots."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("alphas"):
            out[name] = F.softmax(p.detach().float().cpu(), dim=-1).tolist()
        elif name.startswith("betas"):
            out[name] = p.detach().float().cpu().tolist()
    return out


def run_search(config: SearchConfig, resume: bool = False, progress: bool = True) -> SearchResult:
    """Runs (or resumes) a PC-DARTS search as ``config`` says; see the module docstring."""
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config: expected a SearchConfig, got {type(config).__name__}")
    run = start_run(config, _device(config))
    device, rank, world, out = run.device, run.rank, run.world, run.out
    if rank == 0:
        (out / "genotypes").mkdir(exist_ok=True)

    train = load_train_set(config.dataset, config.data_dir, config.limit, config.seed)
    w_half, a_half = split_halves(train, config.seed)
    if len(w_half) < config.batch_size:
        raise ValueError(
            f"batch_size: {config.batch_size} exceeds the {len(w_half)} images of each half "
            f"of the {len(train)} training images"
        )
    eval_set = a_half if config.eval_limit is None else a_half.subset(
        torch.arange(min(config.eval_limit, len(a_half))))  # fmt: skip
    augment = config.augment and train.x.shape[-1] >= 32

    torch.manual_seed(config.seed)
    model = build_supernet(config, train.x.shape[1], len(train.classes)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(model.weight_parameters(), config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, config.epochs, config.lr_min)
    a_opt = torch.optim.Adam(model.arch_parameters(), config.arch_lr, betas=config.arch_betas,
                             weight_decay=config.arch_weight_decay)  # fmt: skip
    latency = None
    if config.latency_weight > 0:
        from fusenas.search.latency import LatencyPredictor

        latency = LatencyPredictor.load(config.latency_predictor)
        latency.check_space(config.space)

    history: list[dict[str, Any]] = []
    start = 0
    ckpt = out / CHECKPOINT
    if resume:
        parts = {"model": model, "w_opt": w_opt, "a_opt": a_opt, "sched": sched}
        resumed = resume_state(ckpt, config, _RUN_DEFINING, parts, "supernet")
        if resumed is not None:
            history, start = resumed
            logger.info("resuming %s at epoch %d", ckpt, start)

    steps = len(w_half) // config.batch_size
    per_rank = config.batch_size // world
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm_w = torch.randperm(len(w_half), generator=gen)
        perm_a = torch.randperm(len(a_half), generator=gen)
        search_arch = epoch >= config.warmup_epochs
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        desc = f"epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress or rank != 0,
                   leave=False)  # fmt: skip
        for s in bar:
            sl = slice(s * config.batch_size, (s + 1) * config.batch_size)
            idx_w, idx_a = perm_w[sl], perm_a[sl]
            # Augment the global batch, then take this rank's share: every rank
            # draws the same random numbers, so the generators stay in step.
            xw, yw = make_batch(w_half, idx_w, augment, gen, device, config.channels_last)
            xa, ya = make_batch(a_half, idx_a, augment, gen, device, config.channels_last)
            mine = slice(rank * per_rank, (rank + 1) * per_rank)
            xw, yw, xa, ya = xw[mine], yw[mine], xa[mine], ya[mine]
            if search_arch:
                a_opt.zero_grad(set_to_none=True)
                arch_loss = F.cross_entropy(model(xa), ya)
                if latency is not None:
                    arch_loss = arch_loss + config.latency_weight * latency.expected(model)
                arch_loss.backward()
                distributed.average_gradients(model.arch_parameters())
                a_opt.step()
            w_opt.zero_grad(set_to_none=True)
            logits = model(xw)
            loss = F.cross_entropy(logits, yw)
            loss.backward()
            distributed.average_gradients(model.weight_parameters())
            nn.utils.clip_grad_norm_(model.weight_parameters(), config.grad_clip)
            w_opt.step()
            totals += torch.tensor([float(loss.detach()) * yw.numel(),
                                    float((logits.argmax(1) == yw).sum()), yw.numel()],
                                   dtype=torch.float64)  # fmt: skip
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        bar.close()
        lr = sched.get_last_lr()[0]
        sched.step()
        totals = distributed.all_reduce_sum(totals)
        valid_loss, valid_acc = evaluate(
            model, eval_set, device, channels_last=config.channels_last
        )
        genotype = model.genotype()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "arch_updates": search_arch,
            "train_loss": float(totals[0] / totals[2]),
            "train_acc": float(100.0 * totals[1] / totals[2]),
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "seconds": time.perf_counter() - t0,
            "peak_rss_bytes": peak_rss_bytes(),
            "world_size": world,
            "arch_rank_max_diff": distributed.max_deviation_from_rank0(model.arch_parameters()),
            "genotype": genotype if isinstance(genotype, str) else genotype.to_dict(),
            "arch": _arch_snapshot(model),
        }
        if latency is not None:
            with torch.no_grad():
                record["predicted_latency_ms"] = float(latency.expected(model))
        history.append(record)
        if rank == 0:
            _write_epoch(out, model, w_opt, a_opt, sched, history, config)
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}: train {record['train_acc']:.1f}% "
                    f"valid {valid_acc:.1f}% ({record['seconds']:.0f} s) {_short(genotype)}"
                )
        distributed.barrier()
    final = model.genotype()
    if latency is not None and rank == 0 and latency.measured_on and history:
        # The found (discrete) architecture, timed as the predictor's records were.
        with torch.no_grad():
            from fusenas.search.latency import encode

            history[-1]["final_predicted_ms"] = float(latency(encode(config.space, final)))
        history[-1]["final_measured_ms"] = latency.measure(final)
        write_log(out, history)
        if progress:
            tqdm.write(f"found architecture: predicted {history[-1]['final_predicted_ms']:.2f} ms, "
                       f"measured {history[-1]['final_measured_ms']:.2f} ms")  # fmt: skip
    return SearchResult(final, history, model, out)


def _short(genotype: Genotype | str) -> str:
    if isinstance(genotype, str):
        return genotype
    return " ".join(f"{op}~{j}" for op, j in genotype.normal)


def _write_epoch(out: Path, model: nn.Module, w_opt, a_opt, sched, history, config) -> None:
    # Checkpoint first: the log and genotype files are rebuilt from its history.
    state = {
        "epoch": len(history) and history[-1]["epoch"],
        "model": model.state_dict(),
        "w_opt": w_opt.state_dict(),
        "a_opt": a_opt.state_dict(),
        "sched": sched.state_dict(),
        "history": history,
        "config": dump_config(config),
    }
    save_state(out / CHECKPOINT, state)
    write_log(out, history)
    g = history[-1]["genotype"]
    payload = {"arch_str": g} if isinstance(g, str) else g
    write_json_atomic(out / "genotypes" / f"epoch_{history[-1]['epoch']:03d}.json", payload)
    write_json_atomic(out / "genotype.json", payload)
    try:
        from fusenas.search.plots import plot_search

        plot_search(history, out)
    except ImportError:  # matplotlib is optional
        logger.info("matplotlib not installed; skipping plots")

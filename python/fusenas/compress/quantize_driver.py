"""k-bit quantization drivers: SLQ, MLQ and DNQ, exported to the fused k-bit kernels.

1. A float model: loaded from ``init`` or trained for ``epochs`` epochs.
2. Bit widths: ``bits`` for every layer (SLQ: 4 by default; MLQ: ternary), or
   DNQ's controller within ``budget_bits`` (fusenas.compress.dnq).
3. Incremental quantization with re-training (fusenas.compress.incremental):
   at each fraction of ``stages`` every layer's quantized part grows (SLQ /
   MLQ: by cluster loss; DNQ: by quantization distance) and the float rest is
   re-trained for ``epochs_per_stage`` epochs. MLQ also goes layer group by
   layer group (``depth_groups``, in forward order): the depth level.
4. Export: every layer becomes a QuantConv2d / QuantLinear holding exactly
   the trained grid values; ``quantized.safetensors`` (packed), plus
   ``report.md`` / ``report.json`` comparing it with the float model.

Checkpoints after every pre-training epoch and every stage (atomic, no
pickle); ``resume=True`` continues from the last one. Data-parallel under
torchrun.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fusenas._layer_select import selects
from fusenas._state_io import load_state, save_state
from fusenas.compress.config import CompressConfig
from fusenas.compress.dnq import search_bit_widths
from fusenas.compress.driver import CompressResult, build_model, load_split
from fusenas.compress.incremental import IncrementalQuantizer
from fusenas.compress.loop import epoch_generator, train_epoch
from fusenas.compress.report import measure, write_report
from fusenas.config_file import dump_config
from fusenas.data.batches import evaluate
from fusenas.data.datasets import random_subset
from fusenas.quant.io import load_float, save_float, save_packed
from fusenas.run_dir import start_run, write_log

CHECKPOINT = "checkpoint.safetensors"


def quantizable_layers(model: nn.Module, exclude: tuple[str, ...]) -> dict[str, nn.Module]:
    """Conv (groups 1) and linear layers in forward-definition order, minus ``exclude``."""
    layers = {
        n: m
        for n, m in model.named_modules()
        if (type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1))
        and selects(n, ("*",), exclude)
    }
    if not layers:
        raise ValueError("model: no conv / linear layer left to quantize (check quant_exclude)")
    return layers


def _groups(names: list[str], n_groups: int) -> list[list[str]]:
    size = -(-len(names) // n_groups)
    return [names[i : i + size] for i in range(0, len(names), size)]


def run_quantize(
    config: CompressConfig,
    resume: bool = False,
    progress: bool = True,
    model: nn.Module | None = None,
) -> CompressResult:
    """Runs (or resumes) an SLQ / MLQ / DNQ quantization; see the module docstring.

    ``model``: any (trained or not) nn.Module used instead of ``config.init`` /
    ``config.model``; its convs (groups 1) and linears are quantized, minus
    ``config.quant_exclude`` patterns on their names.
    """
    if config.method not in ("slq", "mlq", "dnq"):
        raise ValueError(f"method: expected slq, mlq or dnq, got {config.method!r}")
    run = start_run(config, torch.device(config.device))
    device, rank, out = run.device, run.rank, run.out
    train, test = load_split(config)

    torch.manual_seed(config.seed)
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module or None, got {type(model).__name__}")
        model = model.to(device)
    elif config.init:
        model = load_float(config.init).build_model().to(device)
    else:
        model = build_model(config, train.x.shape[1], len(train.classes)).to(device)
    state = load_state(out / CHECKPOINT) if resume and (out / CHECKPOINT).is_file() else None
    history: list[dict[str, Any]] = list(state["history"]) if state else []

    def checkpoint(extra: dict[str, Any]) -> None:
        if rank == 0:
            save_state(
                out / CHECKPOINT,
                {
                    **extra,
                    "model": model.state_dict(),
                    "history": history,
                    "config": dump_config(config),
                },
            )
            write_log(out, history)

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if progress and rank == 0:
            tqdm.write(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                    if k != "bits"
                )
            )

    # 1. The float model.
    start_epoch = 0
    if state is not None:
        if state["config"].get("method") != config.method:
            raise ValueError(
                f"resume: {out / CHECKPOINT} belongs to a {state['config'].get('method')} run"
            )
        model.load_state_dict(state["model"])
        start_epoch = int(state.get("pretrain_epoch", config.epochs))
    if not config.init and start_epoch < config.epochs:
        opt = torch.optim.SGD(
            model.parameters(),
            config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
        if state is not None and "opt" in state:
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            loss, acc = train_epoch(
                model,
                train,
                opt,
                config.batch_size,
                epoch_generator(config.seed, epoch),
                device,
                f"float {epoch + 1}/{config.epochs}",
                progress,
            )
            sched.step()
            log(
                {
                    "phase": "float",
                    "epoch": epoch + 1,
                    "train_loss": loss,
                    "train_acc": acc,
                    "test_acc": evaluate(model, test, device)[1],
                    "seconds": time.perf_counter() - t0,
                }
            )
            checkpoint(
                {"pretrain_epoch": epoch + 1, "opt": opt.state_dict(), "sched": sched.state_dict()}
            )
    float_model = copy.deepcopy(model) if state is None or "float_model" not in state else None
    if float_model is None:
        float_model = copy.deepcopy(model)
        float_model.load_state_dict(state["float_model"])

    # 2. Bit widths.
    layers = quantizable_layers(model, config.quant_exclude)
    names = list(layers)
    if state is not None and "bits" in state:
        bits = dict(state["bits"])
    elif config.method == "dnq":
        bits = _dnq_bits(model, layers, train, config, device)
        log({"phase": "dnq", "average_bits": _avg_bits(bits, layers), "bits": bits})
    else:
        bits = {n: config.bits for n in names}

    # 3. Incremental quantization with re-training.
    quantizer = IncrementalQuantizer(
        layers, bits, "distance" if config.method == "dnq" else "cluster"
    )
    groups = _groups(names, config.depth_groups) if config.method == "mlq" else [names]
    plan = [(g, f) for g in range(len(groups)) for f in config.stages]
    done = 0
    opt = torch.optim.SGD(
        model.parameters(),
        config.retrain_lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    if state is not None and "stage" in state:
        quantizer.load_state(state["quantizer"])
        opt.load_state_dict(state["retrain_opt"])
        done = int(state["stage"])
    for step in range(done, len(plan)):
        g, fraction = plan[step]
        t0 = time.perf_counter()
        quantizer.advance(fraction, groups[g])
        for e in range(config.epochs_per_stage):
            loss, acc = train_epoch(
                model,
                train,
                opt,
                config.batch_size,
                epoch_generator(config.seed + 7919 * (step + 1), e),
                device,
                f"stage {step + 1}/{len(plan)}",
                progress,
                after_backward=quantizer.mask_gradients,
                after_step=quantizer.restore,
            )
        quantizer.restore()
        log(
            {
                "phase": "quantize",
                "stage": step + 1,
                "group": g,
                "fraction": fraction,
                "quantized": sum(quantizer.fraction(n) * layers[n].weight.numel() for n in names)
                / sum(layers[n].weight.numel() for n in names),
                "train_loss": loss,
                "test_acc": evaluate(model, test, device)[1],
                "seconds": time.perf_counter() - t0,
            }
        )
        checkpoint(
            {
                "stage": step + 1,
                "quantizer": quantizer.state(),
                "bits": bits,
                "retrain_opt": opt.state_dict(),
                "float_model": float_model.state_dict(),
                "pretrain_epoch": config.epochs,
            }
        )
    if not quantizer.all_on_grid():
        raise RuntimeError("quantization left weights off the grid")  # a bug, not bad input

    # 4. Export and report.
    model.eval()
    quantized = copy.deepcopy(model)
    quantizer.export(quantized)
    quantized.eval()
    report: list[dict[str, Any]] = []
    if rank == 0:
        float_path, quant_path = out / "float.safetensors", out / "quantized.safetensors"
        widths = {k: str(v) for k, v in bits.items()}
        save_float(float_model, float_path, {"config": dump_config(config)})
        save_packed(quantized, quant_path, {"config": dump_config(config), "bits": widths})
        report = [
            measure("float", float_model.eval(), test, config.latency_batches),
            measure(f"{config.method} ({_bits_label(bits, layers)})", quantized, test,
                    config.latency_batches),
        ]  # fmt: skip
        average = _avg_bits(bits, layers)
        per_layer = ", ".join(f"{n}: {b}" for n, b in bits.items())
        note = f"\nBit widths: {per_layer} (parameter-weighted average {average:.2f}).\n"
        text = write_report(out, report, [float_path, quant_path], [], note,
                            {"bits": widths, "average_bits": average})  # fmt: skip
        if progress:
            print(text)
    return CompressResult(float_model, quantized, report, history, out)


def _width(b: int | str) -> float:
    return 1.58 if b == "ternary" else float(b)  # log2(3) bits of information per ternary weight


def _avg_bits(bits: dict[str, int | str], layers: dict[str, nn.Module]) -> float:
    total = sum(layers[n].weight.numel() for n in bits)
    return sum(_width(b) * layers[n].weight.numel() for n, b in bits.items()) / total


def _bits_label(bits: dict[str, int | str], layers: dict[str, nn.Module]) -> str:
    widths = set(bits.values())
    return f"{widths.pop()} bits" if len(widths) == 1 else f"{_avg_bits(bits, layers):.2f} bits avg"


def _dnq_bits(
    model: nn.Module,
    layers: dict[str, nn.Module],
    train,
    config: CompressConfig,
    device: torch.device,
) -> dict[str, int]:
    from fusenas.compress.quant_grid import LayerGrid

    names = list(layers)
    val = random_subset(train, min(1000, len(train)), config.seed + 1)
    originals = {n: layers[n].weight.detach().clone() for n in names}
    grids = {(n, b): LayerGrid.fit(originals[n], b) for n in names for b in config.bit_choices}

    def accuracy(widths: list[int]) -> float:
        with torch.no_grad():
            for n, b in zip(names, widths, strict=True):
                layers[n].weight.copy_(grids[(n, b)].snap(originals[n]))
            acc = evaluate(model, val, device)[1] / 100.0
            for n in names:
                layers[n].weight.copy_(originals[n])
        return acc

    result = search_bit_widths(
        [layers[n].weight.numel() for n in names],
        accuracy,
        config.budget_bits,
        config.bit_choices,
        config.dnq_episodes,
        tradeoff=config.dnq_tradeoff,
        seed=config.seed,
    )
    return dict(zip(names, result.bits, strict=True))

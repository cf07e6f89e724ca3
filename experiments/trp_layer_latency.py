"""Where a TRP network's latency goes: each layer of the deployed TRP export against the
same layer of the deployed same-budget baseline, at batch 64, channels_last, 2 threads.

Both networks go through :func:`fusenas.nn.optimize_for_inference` (BN folded, residual
add and ReLU fused into the low-rank convs). Forward hooks time every leaf module with
parameters; the networks alternate round by round, so drift of the shared machine hits
them alike. "MAC cut" is dense MACs / low-rank MACs of the layer, "realised" the measured
speed-up divided by it.

    python experiments/trp_layer_latency.py runs/trp_r20_40ep/baseline_s1 \\
        runs/trp_r20_40ep/trp_e099_s1 --out docs/trp_r20_layer_latency.md
"""

from __future__ import annotations

import statistics
import time

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)
from trp_runs import load_for_timing, timing_parser

from fusenas.nn import LowRankConv2d, optimize_for_inference


def _timed_leaves(net: torch.nn.Module, times: dict) -> list:
    """Hooks appending each parameterised leaf's forward time (ms) to times[name]."""
    hooks = []
    for name, mod in net.named_modules():
        if next(mod.children(), None) is None and any(True for _ in mod.parameters()):
            start = {}
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, s=start: s.__setitem__("t", time.perf_counter())))  # fmt: skip
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, s=start, n=name: times.setdefault(n, []).append(
                    (time.perf_counter() - s["t"]) * 1e3)))  # fmt: skip
    return hooks


def main() -> None:
    ap = timing_parser(__doc__.splitlines()[0], rounds=15)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    runs, memory = load_for_timing(args)
    test = runs.test
    nets = {
        "baseline": optimize_for_inference(runs.baseline),
        "trp": optimize_for_inference(runs.exported),
    }
    x = (test.x[: args.batch].float() / 255.0).contiguous(memory_format=torch.channels_last)
    times: dict = {key: {} for key in nets}
    sizes: dict = {}

    def record_size(name):  # a pre-hook must return None, or it replaces the inputs
        def hook(mod, args):
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    for net in nets.values():  # input sizes of the low-rank layers
        for name, mod in net.named_modules():
            if isinstance(mod, LowRankConv2d):
                mod.register_forward_pre_hook(record_size(name))
    with torch.no_grad():
        for net in nets.values():
            net(x)
        hooks = [h for key, net in nets.items() for h in _timed_leaves(net, times[key])]
        for _ in range(args.rounds):
            for net in nets.values():
                net(x)
        for h in hooks:
            h.remove()
    med = {key: {n: statistics.median(v) for n, v in t.items()} for key, t in times.items()}
    trp_mods = dict(nets["trp"].named_modules())
    lines = [
        f"Batch {args.batch}, channels_last, {torch.get_num_threads()} threads, deployed "
        f"form; median of {args.rounds} alternating rounds per layer (forward hooks).",
        "The TRP layers include their fused residual add and ReLU; the baseline's run outside "
        "its timed convs, so this view favours the baseline. @: the layer's input side. " + memory,
        "",
        "| layer | TRP module | baseline (ms) | TRP (ms) | speed-up | MAC cut | realised |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for name, t_base in med["baseline"].items():
        t_trp = med["trp"].get(name)
        mod = trp_mods.get(name)
        cut = None
        desc = type(mod).__name__ if mod is not None else "-"
        if isinstance(mod, LowRankConv2d):
            hw = sizes[name]
            cut = mod.dense_macs(hw) / mod.macs(hw)
            desc = f"{mod.scheme} r={mod.rank} ({mod.in_channels}->{mod.out_channels} @{hw[0]})"
        speed = t_base / t_trp if t_trp else None
        rows.append({"layer": name, "module": desc, "baseline_ms": t_base, "trp_ms": t_trp,
                     "mac_cut": cut})  # fmt: skip
        lines.append(
            f"| {name} | {desc} | {t_base:.3f} | {t_trp:.3f} | {speed:.2f}x | "
            + (f"{cut:.2f}x | {speed / cut:.0%} |" if cut else "- | - |")
        )
    tb, tt = sum(med["baseline"].values()), sum(med["trp"].values())
    lines += ["", f"Sum over layers: baseline {tb:.2f} ms, TRP {tt:.2f} ms ({tb / tt:.2f}x)."]
    publish("\n".join(lines) + "\n", rows, args.out)


if __name__ == "__main__":
    main()

"""A TRP run against its same-budget baseline: accuracy, MACs and CPU latency side by side.

Loads a finished ``fusenas compress baseline`` run and a ``fusenas compress trp`` run
(their ``config.yaml``, ``dense.safetensors`` and, for TRP, ``compressed.safetensors``),
measures test accuracy on the runs' held-out split, MACs and parameters, then times
every network in one process with the rounds interleaved (round-robin over networks,
so drift of the shared machine hits them alike): as trained (eval mode) and in the
deployed form (:func:`fusenas.nn.optimize_for_inference`: BN folded, residual add and
ReLU fused into the low-rank convs), at batch 1 and 64, in the layout the data comes
in (channels_last) and NCHW.

    python experiments/trp_speed.py runs/trp_r20_40ep/baseline runs/trp_r20_40ep/trp_e098 \\
        --out docs/trp_r20_40ep.md
"""

from __future__ import annotations

import copy
import statistics

import torch
from results_io import publish  # experiments/results_io.py (the script's directory)
from trp_runs import load_for_timing, time_interleaved, timing_parser

from fusenas.data.batches import evaluate
from fusenas.nn import optimize_for_inference
from fusenas.profiling import count_macs, count_params


def main() -> None:
    args = timing_parser(__doc__.splitlines()[0], rounds=7).parse_args()
    runs, memory = load_for_timing(args)
    test = runs.test
    nets = {
        "baseline (dense)": runs.baseline,
        "TRP-trained (dense)": runs.trp_trained,
        "TRP exported (LowRankConv2d)": runs.exported,
    }
    rows = []
    for name, net in nets.items():
        _, acc = evaluate(net, test, torch.device("cpu"))
        net.eval()
        rows.append({"network": name, "accuracy": acc, "params": count_params(net),
                     "macs": count_macs(net, test.x[:1].float() / 255.0)})  # fmt: skip
    timed = {
        "baseline": nets["baseline (dense)"],
        "baseline, deployed": optimize_for_inference(copy.deepcopy(nets["baseline (dense)"])),
        "TRP exported": nets["TRP exported (LowRankConv2d)"],
        "TRP exported, deployed": optimize_for_inference(
            copy.deepcopy(nets["TRP exported (LowRankConv2d)"])
        ),
    }
    x = test.x[:64].float() / 255.0  # channels_last, as the data set stores it
    inputs = {
        ("b1", "CL"): x[:1].contiguous(memory_format=torch.channels_last),
        ("b64", "CL"): x.contiguous(memory_format=torch.channels_last),
        ("b1", "NCHW"): x[:1].contiguous(),
        ("b64", "NCHW"): x.contiguous(),
    }
    times = time_interleaved(timed, inputs, args.rounds, calls=5)
    med = {key: statistics.median(v) for key, v in times.items()}
    lines = [
        f"Test split: {len(test)} held-out CIFAR-10 training images; latency: median over "
        f"{args.rounds} interleaved rounds of 5 calls, {torch.get_num_threads()} threads. "
        + memory,
        "",
        "| network | test acc (%) | vs baseline (pts) | MACs (M) | params |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    base = rows[0]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['accuracy']:.2f} | {r['accuracy'] - base['accuracy']:+.2f} | "
            f"{r['macs'] / 1e6:.1f} ({base['macs'] / r['macs']:.2f}x fewer) | {r['params']:,} |"
        )
    lines += ["", "| network (form) | " + " | ".join(f"{b} {f} (ms)" for b, f in inputs) + " |",
              "| --- |" + " ---: |" * len(inputs)]  # fmt: skip
    for name in timed:
        lines.append(f"| {name} | " + " | ".join(f"{med[(name, i)]:.2f}" for i in inputs) + " |")
    lines.append("")
    for batch in ("b1", "b64"):
        best = {
            form: min(med[(f"{net}{form}", (batch, lay))] for lay in ("CL", "NCHW"))
            for form, net in (("", "baseline"), (", deployed", "baseline"))
        }
        trp = min(med[("TRP exported, deployed", (batch, lay))] for lay in ("CL", "NCHW"))
        lines.append(
            f"- {batch}: TRP exported, deployed, is {best[''] / trp:.2f}x faster than the "
            f"baseline as trained and {best[', deployed'] / trp:.2f}x faster than the baseline "
            "deployed (each in its faster layout)."
        )
    data = {"rows": rows, "latency_ms": {f"{n} | {b} {f}": v for (n, (b, f)), v in times.items()}}
    publish("\n".join(lines) + "\n", data, args.out)


if __name__ == "__main__":
    main()

"""Whole PC-DARTS supernet: one training step, fused edges vs PC-DARTS' eager formulation.

Side by side in one run, 2 threads: DartsSupernet(C=16, 8 cells, K=4, edge
normalisation) on 32x32 inputs, at batch 64 and 96, with every edge running
the fused ``pc_mixed_op`` ("fused") or the reference formulation built from
torch ops ("reference", what PC-DARTS' code does). Both start from the same
weights; one step = forward, cross-entropy, backward (weights and
architecture parameters), as in a first-order search iteration.

Per case, in a fresh subprocess (so memory figures do not mix):
- time per step (median of --steps timed steps after one warm-up);
- activations saved for backward (bytes of distinct tensor storages the
  autograd graph keeps, counted with saved_tensors_hooks: deterministic);
- peak memory: growth of the process' peak RSS (ru_maxrss) over its RSS
  before the first step (torch's CPU allocator returns memory to malloc, so
  this follows the live tensors).

With --repeats R each case runs in R processes, alternating reference and
fused, and the step time is the median over all their timed steps (drift of
the machine then hits both variants alike).

    python benchmarks/bench_pc_supernet.py [--batches 64 96] [--steps 3] [--repeats 1] \
        [--json pc_supernet.json] [--md docs/benchmarks/pc_mixed_op_supernet.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fusenas._atomic import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(variant: str, batch: int, steps: int, threads: int) -> dict:
    """One (variant, batch) case in this process; returns its figures."""
    import torch

    from fusenas.search.spaces import DartsSupernet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = DartsSupernet(channels=16, layers=8, k=4, fused=variant == "fused")
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    saved: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def step(count_saved: bool) -> None:
        net.zero_grad(set_to_none=True)
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = torch.nn.functional.cross_entropy(net(x), y)
        else:
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()

    rss0 = _rss_bytes()
    step(count_saved=True)  # warm-up, and the count of saved activations
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(count_saved=False)
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "batch": batch,
        "threads": threads,
        "step_s": statistics.median(times),
        "step_s_all": times,
        "saved_bytes": sum(saved.values()),
        "peak_rss_growth_bytes": peak,
    }


def _merge(runs: list[dict]) -> dict:
    """One case's figures over its processes: the median of every timed step."""
    steps = [t for r in runs for t in r["step_s_all"]]
    merged = dict(runs[0])
    merged.update(
        step_s=statistics.median(steps),
        step_s_all=steps,
        processes=len(runs),
        peak_rss_growth_bytes=int(statistics.median(r["peak_rss_growth_bytes"] for r in runs)),
    )
    return merged


def _render(results: list[dict]) -> str:
    gib = 1024**3
    lines = [
        "| batch | variant | step time (s) | saved activations (GiB) | peak RSS growth (GiB) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['step_s']:.2f} | {r['saved_bytes'] / gib:.2f} "
            f"| {r['peak_rss_growth_bytes'] / gib:.2f} |"
        )
    lines += ["", "| batch | time fused / reference | saved ratio | peak memory ratio |",
              "| ---: | ---: | ---: | ---: |"]  # fmt: skip
    by = {(r["batch"], r["variant"]): r for r in results}
    for b in sorted({r["batch"] for r in results}):
        f, ref = by.get((b, "fused")), by.get((b, "reference"))
        if f and ref:
            lines.append(
                f"| {b} | {f['step_s'] / ref['step_s']:.2f} | "
                f"{f['saved_bytes'] / ref['saved_bytes']:.2f} | "
                f"{f['peak_rss_growth_bytes'] / ref['peak_rss_growth_bytes']:.2f} |"
            )
    lines += _largest_batches(results)
    return "\n".join(lines) + "\n"


def _largest_batches(results: list[dict]) -> list[str]:
    # Which batch fits in the memory the reference needs at its smallest measured batch.
    from fusenas.profiling import largest_batch_within

    points = {v: [(r["batch"], r["peak_rss_growth_bytes"]) for r in results if r["variant"] == v]
              for v in ("reference", "fused")}  # fmt: skip
    if not points["reference"] or not points["fused"]:
        return []
    b_ref, budget = min(points["reference"])
    largest = largest_batch_within(points["fused"], budget)
    if largest is None:
        return []
    return [
        "",
        f"In the memory the reference needs at batch {b_ref} ({budget / 1024**3:.2f} GiB of peak "
        f"RSS growth), the fused supernet fits batch {largest} (linear fit of its peak memory "
        f"through the measured batches; {largest / b_ref:.2f}x).",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 96])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="processes per case, alternating")
    p.add_argument("--json", default="pc_supernet.json")
    p.add_argument("--md", default=None, help="also write the Markdown table here")
    p.add_argument("--case", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.steps, args.threads)))
        return
    results = []
    for batch in args.batches:
        runs: dict[str, list[dict]] = {"reference": [], "fused": []}
        for rep in range(args.repeats):
            for variant in ("reference", "fused"):
                print(f"batch {batch}, {variant}, run {rep + 1}/{args.repeats} ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                out = subprocess.run(
                    [sys.executable, __file__, "--case", variant, str(batch), "--steps",
                     str(args.steps), "--threads", str(args.threads)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {runs[variant][-1]['step_s']:.2f} s/step", file=sys.stderr)
        results += [_merge(r) for r in runs.values()]
    write_json_atomic(args.json, results)
    table = _render(results)
    print(table)
    if args.md:
        write_text_atomic(args.md, table)


if __name__ == "__main__":
    main()

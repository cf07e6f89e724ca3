"""Cold batch-1 k-bit matmul on weights in huge-page memory against torch's memory.

fusenas places the codes it packs in 2 MiB-aligned memory advised for
transparent huge pages (fusenas/weight_memory.py). This script builds two rings
of copies of one quantized weight, each ring larger than the L3: one placed that
way, one from torch's allocator (FUSENAS_HUGE_PAGES=0 while it is built). It then
alternates the two, in bfloat16 and float32 x, with a torch.sum over as many
bytes as a reference for the memory speed of the moment, and prints the medians.

    python benchmarks/weight_memory_ab.py --k 4096 --n 4096 --bits 4 --rounds 40
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

import fusenas
from fusenas import weight_memory

RING_BYTES = 512 << 20
CALLS = 16  # per timed round, each on the next copy


def _ring(w: torch.Tensor, bits: int, huge: bool) -> tuple[list, int]:
    before = os.environ.get("FUSENAS_HUGE_PAGES")
    os.environ["FUSENAS_HUGE_PAGES"] = "1" if huge else "0"
    try:
        pw = fusenas.quantize_weight(w, bits, 128, True)
        count = max(2, -(-RING_BYTES // pw.nbytes()))
        ring = [pw] + [
            dataclasses.replace(
                pw, codes=weight_memory.place(pw.codes, copy=True), scales=pw.scales.clone()
            )
            for _ in range(count - 1)
        ]
        x0 = torch.zeros(1, w.shape[1])
        with torch.no_grad():
            for p in ring:  # builds 2- and 3-bit weights' table copies, placed the same way
                fusenas.ops.kbit_matmul(x0, p)
    finally:
        if before is None:
            os.environ.pop("FUSENAS_HUGE_PAGES")
        else:
            os.environ["FUSENAS_HUGE_PAGES"] = before
    return ring, pw.nbytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096, help="in_features (K)")
    ap.add_argument("--n", type=int, default=4096, help="out_features (N)")
    ap.add_argument("--bits", default="4", help="2..8 or ternary")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bits = args.bits if args.bits == "ternary" else int(args.bits)
    w = torch.randn(args.n, args.k) * 0.02
    rings = {"torch": _ring(w, bits, False)[0]}
    rings["huge"], nbytes = _ring(w, bits, True)
    placed = weight_memory.is_placed(rings["huge"][1].codes)
    sums = [torch.ones(nbytes // 4) for _ in range(max(2, RING_BYTES // nbytes))]
    xs = {"bfloat16": torch.randn(1, args.k).bfloat16(), "float32": torch.randn(1, args.k)}
    keys = [(r, d) for r in rings for d in xs] + [("torch.sum", "")]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    pos = 0
    with torch.no_grad():
        for i in range(args.rounds):
            for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    pos += 1
                    if key[0] == "torch.sum":
                        sums[pos % len(sums)].sum()
                    else:
                        ring = rings[key[0]]
                        fusenas.ops.kbit_matmul(xs[key[1]], ring[pos % len(ring)])
                times[key].append((time.perf_counter() - t0) / CALLS)
    print(
        f"K={args.k} N={args.n} bits={args.bits}: {nbytes / 1e6:.2f} MB per copy, "
        f"{args.threads} threads, huge-page ring placed: {placed}, "
        f"THP {weight_memory.thp_setting()}"
    )
    print("| weights | x | median ms | GB/s |\n| --- | --- | ---: | ---: |")
    for key in keys:
        t = statistics.median(times[key])
        print(f"| {key[0]} | {key[1]} | {t * 1e3:.4f} | {nbytes / t / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

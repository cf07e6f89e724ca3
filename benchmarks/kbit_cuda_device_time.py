"""GPU time of the k-bit matmul's CUDA paths against cuBLAS, with cold weights.

bench_kbit_cuda.py times one call plus a synchronisation, which on a fast GPU
is mostly host time (Python, dispatch, launch). This script measures what the
GPU spends: CUDA events around R back-to-back calls, each on the next of
several weight copies whose bytes together exceed the L2 cache (so every call
streams its weight from HBM, as one layer after another does in a model), the
median of 7 repeats. For each (K, N) of a 7B LLM's linear layers and each M:

- F.linear with a float16 weight (cuBLAS; the baseline);
- fusenas 4-bit and 8-bit (group 128), float16 x, through the native kernels
  (GEMV up to M = 64, the SIMT GEMM above) and through the large-M path
  (dequantize into float16, then F.linear).

It prints a markdown table (time in us, weight GB/s, and the ratio to
F.linear) and writes it with the raw numbers to --out (JSON + .md). It also
reports the host time of one synchronised call for M = 1. Needs a GPU.

    python benchmarks/kbit_cuda_device_time.py --out docs/benchmarks/kbit_cuda_device_time
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fusenas
from fusenas._atomic import write_json_atomic, write_text_atomic
from fusenas.ops import kbit_matmul

KBIT_OPS = importlib.import_module("fusenas.ops.kbit_matmul")
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K, N)
MS = [1, 8, 16, 32, 64, 128, 256, 512, 2048]
COLD_BYTES = 4 * 50 * 2**20  # weight copies per variant: 4x a 50 MiB L2
REPEATS, CALLS = 7, 20


def _device_time_us(fn, n_copies: int) -> float:
    """Median over REPEATS of (GPU time of CALLS calls) / CALLS, in microseconds."""
    for i in range(3):
        fn(i % n_copies)
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(CALLS):
            fn(i % n_copies)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def _host_time_us(fn) -> float:
    """Median wall time of one call + synchronize, in microseconds."""
    fn(0)
    torch.cuda.synchronize()
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        fn(0)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _clone_packed(pw: fusenas.PackedWeight) -> fusenas.PackedWeight:
    clone = lambda t: None if t is None else t.clone()  # noqa: E731
    return dataclasses.replace(pw, codes=clone(pw.codes), scales=clone(pw.scales),
                               zeros=clone(pw.zeros))  # fmt: skip


def _variants(k: int, n: int):
    g = torch.Generator(device="cuda").manual_seed(k * 31 + n)
    w = torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)
    dense = w.half()
    yield "F.linear fp16", dense, dense.numel() * 2, None
    for bits in (4, 8):
        pw = fusenas.quantize_weight(w, bits, 128, symmetric=True)
        for path, min_m in (("native", 1 << 62), ("dequant+cuBLAS", 1)):
            yield f"fusenas {bits}-bit {path}", pw, pw.nbytes(), min_m
    del w


def _measure(name: str, weight, nbytes: int, k: int, n: int) -> list[dict]:
    """Rows of one variant over MS; weight is a float16 tensor or a PackedWeight."""
    dense = isinstance(weight, torch.Tensor)
    copies = [weight] + [
        weight.clone() if dense else _clone_packed(weight)
        for _ in range(max(1, math.ceil(COLD_BYTES / nbytes)) - 1)
    ]
    rows = []
    for m in MS:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        if dense:
            fn = lambda i, x=x: F.linear(x, copies[i])  # noqa: E731
        else:
            fn = lambda i, x=x: kbit_matmul(x, copies[i])  # noqa: E731
        us = _device_time_us(fn, len(copies))
        host = _host_time_us(fn) if m == 1 else None
        rows.append(dict(k=k, n=n, m=m, variant=name, us=us, weight_bytes=nbytes, host_us=host))
        print(f"K={k} N={n} M={m} {name}: {us:.1f} us", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("kbit_cuda_device_time"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    rows = []
    default_min_m = KBIT_OPS.CUDA_DEQUANT_GEMM_MIN_M
    try:
        for k, n in SHAPES:
            for name, weight, nbytes, min_m in _variants(k, n):
                KBIT_OPS.CUDA_DEQUANT_GEMM_MIN_M = default_min_m if min_m is None else min_m
                rows += _measure(name, weight, nbytes, k, n)
                torch.cuda.empty_cache()
    finally:
        KBIT_OPS.CUDA_DEQUANT_GEMM_MIN_M = default_min_m
    table = _table(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                cuda=torch.version.cuda, calls=CALLS, repeats=REPEATS,
                cold_bytes=COLD_BYTES)  # fmt: skip
    write_json_atomic(args.out.with_suffix(".json"), dict(meta=meta, rows=rows))
    write_text_atomic(args.out.with_suffix(".md"), table + "\n")


def _table(rows: list[dict]) -> str:
    by = {(r["k"], r["n"], r["m"], r["variant"]): r for r in rows}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    head = "| K x N | M | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * 2 + " ---: |" * len(names)]
    for k, n in SHAPES:
        for m in MS:
            base = by[(k, n, m, "F.linear fp16")]["us"]
            cells = []
            for name in names:
                r = by[(k, n, m, name)]
                gbs = r["weight_bytes"] / r["us"] / 1e3
                cells.append(f"{r['us']:.1f} us, {gbs:.0f} GB/s, {base / r['us']:.2f}x")
            lines.append(f"| {k} x {n} | {m} | " + " | ".join(cells) + " |")
    host = [r for r in rows if r["host_us"] is not None]
    lines.append("")
    lines.append("Host time of one synchronised call at M = 1 (us): " + ", ".join(
        f"{r['variant']} {r['k']}x{r['n']}: {r['host_us']:.0f}" for r in host))  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()

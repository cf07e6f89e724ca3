"""This machine's DRAM read bandwidth, measured the way the k-bit GEMV uses it.

The M = 1 k-bit matmul is memory-bound: its floor is the time to stream the
packed weights from DRAM once. To say how close a kernel gets, the benchmark
needs the read bandwidth *these* threads can pull, not a datasheet figure: on
a 2-core VM two threads reach well under the socket's peak. So: reduce a
buffer many times larger than the L3 (1 GiB float32 by default) with torch on
the same number of threads as the benchmark, and keep the best of several runs
(the best run is the one least disturbed by other tenants).

Importable (``measure_read_bandwidth``, ``l3_cache_bytes``) by the benchmark
and the report; also a script:

    python benchmarks/dram_bandwidth.py --threads 2 --gib 1 --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DEFAULT_L3_BYTES = 32 << 20


@dataclass(frozen=True)
class DramBandwidth:
    """Result of a read-bandwidth measurement."""

    gbps: float  # best run, 1e9 bytes / s
    median_gbps: float
    nbytes: int
    threads: int
    runs: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def l3_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), or 32 MiB when it cannot be read."""
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if text[-1:].isalpha() else text
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or DEFAULT_L3_BYTES


def make_buffer(nbytes: int = 1 << 30) -> torch.Tensor:
    """A float32 buffer of ``nbytes`` with every page touched (first touch is not a read)."""
    buf = torch.empty(nbytes // 4, dtype=torch.float32)
    buf.fill_(1.0)
    return buf


def read_once(buf: torch.Tensor) -> float:
    """One full read of ``buf`` (a vectorised sum); returns the result so it is not elided."""
    return float(buf.sum())


def measure_read_bandwidth(
    threads: int = 2, nbytes: int = 1 << 30, runs: int = 7, buf: torch.Tensor | None = None
) -> DramBandwidth:
    """Best-of-``runs`` read bandwidth of ``threads`` torch threads over ``nbytes``."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if buf is None:
            buf = make_buffer(nbytes)
        nbytes = buf.numel() * buf.element_size()
        read_once(buf)  # warm up the thread pool and the TLB
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            read_once(buf)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return DramBandwidth(
        gbps=nbytes / min(times) / 1e9,
        median_gbps=nbytes / statistics.median(times) / 1e9,
        nbytes=nbytes,
        threads=threads,
        runs=runs,
        method=f"torch.sum over a {nbytes >> 20} MiB float32 buffer, best of {runs}",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gib", type=float, default=1.0, help="buffer size in GiB (default 1)")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    res = measure_read_bandwidth(args.threads, int(args.gib * (1 << 30)), args.runs)
    if args.json:
        print(json.dumps(res.as_dict()))
    else:
        print(
            f"DRAM read bandwidth ({res.threads} threads, {res.method}): "
            f"{res.gbps:.1f} GB/s best, {res.median_gbps:.1f} GB/s median; "
            f"L3 {l3_cache_bytes() >> 20} MiB; {os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()

"""Low-rank conv benchmarks: fusenas.ops.lowrank_conv2d against the same factors run as two
torch convs, and against the dense conv they approximate.

Side by side in one run, on 2 threads (torch.set_num_threads(2)), float32, for each conv
shape x scheme ("channel", "spatial") x rank (the rank giving 2x, 3x, 6x fewer MACs than
the dense conv), forward and forward+backward (gradients of x, both factors and the bias):

- fusenas lowrank_conv2d, input NCHW and channels_last;
- the two-conv sequence F.conv2d(F.conv2d(x, w1), w2) (oneDNN), NCHW and channels_last,
  eager and torch.compile (inductor; channels_last, the faster eager layout here);
- the dense conv (the layer before decomposition), NCHW and channels_last.

Shapes: the 3x3 convs of CIFAR ResNet-20/56 (C 16, 32, 64 at 32, 16, 8 px, batch 128) and
of ImageNet ResNet-18/50 (C 64, 128, 256, 512 at 56, 28, 14, 7 px, batch 32; the stage
convs of ResNet-50's bottlenecks have the same 3x3 shapes). The quick default grid takes
reductions 2x and 6x; FUSENAS_BENCH_FULL=1 adds 3x and the stride-2 downsampling convs.

Per case: median and min time over FUSENAS_BENCH_SECONDS (default 0.4) of calls, taken in
FUSENAS_BENCH_ROUNDS (default 4) rounds that visit every variant and layout of the case in
turn (so a slow phase of a shared machine hits them alike), the
realised fraction of the MAC reduction (dense time / low-rank time) / (dense MACs /
low-rank MACs) against the faster dense layout, and the peak memory of one call: the
growth of live heap bytes during the call, every malloc in the process counted (torch's
tensors, oneDNN's scratchpad, fusenas' kernel buffers alike; inputs excluded, outputs
and gradients included) through the LD_PRELOAD shim of heap_peak.py, which the script
loads by re-executing itself. Where the shim cannot be built (no C compiler, not
Linux) it falls back to torch's profiler memory events plus, for fusenas,
fusenas.ops.lowrank_conv.workspace_bytes: that misses oneDNN's scratchpad and can
count a free twice, and the results' meta says which was used.

    flock /tmp/fusenas_bench.lock python benchmarks/bench_lowrank.py --json lowrank.json
    python benchmarks/report_lowrank.py lowrank.json   # -> docs/benchmarks/lowrank.md

Other knobs: FUSENAS_BENCH_THREADS (default 2; with 1 the timings are process CPU time,
robust on a shared machine); FUSENAS_BENCH_COMPILE=0 skips torch.compile;
FUSENAS_BENCH_ONLY=<text> runs only the shapes whose name contains <text>.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import heap_peak  # benchmarks/heap_peak.py (the script's directory)
import torch
import torch.nn.functional as F

import fusenas
from fusenas._atomic import atomic_write_bytes
from fusenas.info import cpu_model
from fusenas.ops import _native, lowrank_conv2d
from fusenas.ops.lowrank_conv import workspace_bytes

THREADS = int(os.environ.get("FUSENAS_BENCH_THREADS", "2"))
FULL = os.environ.get("FUSENAS_BENCH_FULL", "0") == "1"
BUDGET_S = float(os.environ.get("FUSENAS_BENCH_SECONDS", "0.4"))
COMPILE = os.environ.get("FUSENAS_BENCH_COMPILE", "1") == "1"
ONLY = os.environ.get("FUSENAS_BENCH_ONLY", "")  # run only shapes whose name contains this
ROUNDS = max(1, int(os.environ.get("FUSENAS_BENCH_ROUNDS", "4")))


@dataclass(frozen=True)
class ConvShape:
    net: str
    batch: int
    c_in: int
    c_out: int
    size: int
    stride: int = 1

    @property
    def name(self) -> str:
        s = f"/s{self.stride}" if self.stride != 1 else ""
        return f"{self.net} {self.c_in}->{self.c_out} @{self.size}{s} N={self.batch}"


def shapes() -> list[ConvShape]:
    out = [ConvShape("cifar", 128, c, c, px) for c, px in ((16, 32), (32, 16), (64, 8))]
    out += [
        ConvShape("imagenet", 32, c, c, px) for c, px in ((64, 56), (128, 28), (256, 14), (512, 7))
    ]
    if FULL:
        out += [ConvShape("cifar", 128, 16, 32, 32, 2), ConvShape("cifar", 128, 32, 64, 16, 2)]
        out += [
            ConvShape("imagenet", 32, c, 2 * c, px, 2) for c, px in ((64, 56), (128, 28), (256, 14))
        ]
    return out


REDUCTIONS = (2, 3, 6) if FULL else (2, 6)


def rank_for(scheme: str, c: int, n: int, reduction: int) -> int:
    """Rank whose factors have about 1/reduction of the dense 3x3 conv's MACs."""
    dense = n * c * 9
    per_rank = 9 * c + n if scheme == "channel" else 3 * c + 3 * n
    return max(1, round(dense / reduction / per_rank))


def macs(scheme: str, c: int, n: int, r: int, ho: int, wo: int, batch: int) -> int:
    per_pixel = r * (9 * c + n) if scheme == "channel" else 3 * r * (c + n)
    return per_pixel * ho * wo * batch


def time_interleaved(fns: list[Callable[[], object]]) -> list[tuple[float, float, int]]:
    """(median, min, calls) seconds of each fn: about BUDGET_S of calls each, in ROUNDS
    rounds that visit every fn in turn (at least 2 calls per round), after one warm-up
    call each. Timed back to back instead, one variant could take a slow phase of a
    shared machine alone and the ratios between variants would move with it.

    One thread: process CPU time (immune to the time other jobs take the core away
    on a shared machine); more threads: wall time.
    """
    clock = time.process_time if THREADS == 1 else time.perf_counter
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(ROUNDS):
        for fn, got in zip(fns, samples, strict=True):
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < BUDGET_S / ROUNDS or n < 2:
                t0 = clock()
                fn()
                got.append(clock() - t0)
                n += 1
    return [(statistics.median(got), min(got), len(got)) for got in samples]


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by torch's CPU allocator during fn, relative to its start."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:  # fmt: skip
        fn()
    # Allocations are attributed to the op that made them (self), frees to "[memory]".
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


@dataclass
class Result:
    shape: str
    net: str
    scheme: str
    reduction: int
    rank: int
    variant: str  # fusenas / two_conv / two_conv_compile / dense
    layout: str  # nchw / channels_last
    mode: str  # fwd / fwdbwd
    median_ms: float
    min_ms: float
    calls: int
    peak_mb: float
    macs: int
    dense_macs: int


def run_case(shape: ConvShape, scheme: str, reduction: int, results: list[Result]) -> None:
    c, n, px, s = shape.c_in, shape.c_out, shape.size, shape.stride
    r = rank_for(scheme, c, n, reduction)
    g = torch.Generator().manual_seed(0)
    if scheme == "channel":
        w1 = torch.randn(r, c, 3, 3, generator=g) * 0.1
        w2 = torch.randn(n, r, 1, 1, generator=g) * 0.1
        p1, p2, s1, s2 = (1, 1), (0, 0), (s, s), (1, 1)
    else:
        w1 = torch.randn(r, c, 3, 1, generator=g) * 0.1
        w2 = torch.randn(n, r, 1, 3, generator=g) * 0.1
        p1, p2, s1, s2 = (1, 0), (0, 1), (s, 1), (1, s)
    bias = torch.randn(n, generator=g)
    dense_w = torch.randn(n, c, 3, 3, generator=g) * 0.1
    ho = (px + 2 - 3) // s + 1
    lr_macs = macs(scheme, c, n, r, ho, ho, shape.batch)
    dense_macs = n * c * 9 * ho * ho * shape.batch

    def two_conv(x, w1, w2, bias):
        return F.conv2d(F.conv2d(x, w1, None, s1, p1), w2, bias, s2, p2)

    def fused(x, w1, w2, bias):
        return lowrank_conv2d(x, w1, w2, bias, scheme=scheme, stride=s, padding=1)

    def dense(x, w, bias):
        return F.conv2d(x, w, bias, s, 1)

    compiled = None
    if COMPILE:
        torch._dynamo.reset()
        compiled = torch.compile(two_conv, backend="inductor")

    # Every variant x layout x mode of the case first, then timed together. Each entry
    # keeps its own copy of the input and its last gradients alive (at 64 ch @56, N = 32:
    # 14 copies of the 25.7 MB input and 7 input gradients, 0.54 GB by arithmetic); the
    # peak-memory figures are growth during one call, so unaffected.
    entries: list[tuple[str, str, str, torch.Tensor, Callable, Callable, list]] = []
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape.batch, c, px, px, generator=g).contiguous(memory_format=fmt)
        variants: list[tuple[str, Callable, tuple]] = [
            ("fusenas", fused, (w1, w2, bias)),
            ("two_conv", two_conv, (w1, w2, bias)),
            ("dense", dense, (dense_w, bias)),
        ]
        if compiled is not None and layout == "channels_last":
            variants.append(("two_conv_compile", compiled, (w1, w2, bias)))
        # Check once that every variant computes the same thing (a fast but wrong setup
        # must not report a number).
        ref = two_conv(x.double(), w1.double(), w2.double(), bias.double())
        for name, fn, params in variants:
            if name != "dense":
                with torch.no_grad():
                    torch.testing.assert_close(fn(x, *params).double(), ref, rtol=1e-3, atol=1e-3)
        for name, fn, params in variants:
            for mode in ("fwd", "fwdbwd"):
                leaves = [t.detach().clone().requires_grad_(mode == "fwdbwd") for t in (x, *params)]
                grad = None
                if mode == "fwdbwd":
                    grad = torch.randn(fn(*leaves).shape).contiguous(memory_format=fmt)

                def step(fn=fn, leaves=leaves, grad=grad):
                    if grad is None:
                        with torch.no_grad():
                            return fn(*leaves)
                    fn(*leaves).backward(grad)

                def call(step=step, leaves=leaves):  # a training step: fresh gradients
                    for t in leaves:
                        t.grad = None
                    step()

                entries.append((layout, name, mode, x, call, step, leaves))
    timings = time_interleaved([e[4] for e in entries])
    for (layout, name, mode, x, _, step, leaves), (med, best, calls) in zip(
        entries, timings, strict=True
    ):
        for t in leaves:
            t.grad = None
        if heap_peak.active():
            peak = heap_peak.peak_during(step)
        else:
            peak = peak_bytes(step)
            if name == "fusenas":
                peak += workspace_bytes(x, w1, w2, scheme=scheme, stride=s, padding=1,
                                        backward=mode == "fwdbwd")  # fmt: skip
        res = Result(
            shape.name, shape.net, scheme, reduction, r, name, layout, mode, med * 1e3,
            best * 1e3, calls, peak / 2**20,
            dense_macs if name == "dense" else lr_macs, dense_macs,
        )  # fmt: skip
        results.append(res)
        print(
            f"{shape.name:32s} {scheme:8s} {reduction}x r={r:<4d} {name:17s} "
            f"{layout:13s} {mode:6s} {med * 1e3:9.3f} ms  peak {peak / 2**20:8.1f} MiB",
            flush=True,
        )


def peak_gflops() -> float:
    """Best float32 multiply-add throughput torch reaches here, as GFLOP/s: oneDNN's dense 3x3
    conv of 256 -> 256 channels over 32 x 14 x 14 channels_last pixels (its best shape here;
    a 1x1 conv reaches about 0.7x of it and torch.mm, MKL on an AMD CPU, 0.4x), best of 5 on
    the benchmark's threads: the ceiling any conv kernel, fused or not, can approach."""
    x = torch.randn(32, 256, 14, 14).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3)
    F.conv2d(x, w, padding=1)
    clock = time.perf_counter if THREADS > 1 else time.process_time
    best_s = float("inf")
    for _ in range(5):
        t = clock()
        F.conv2d(x, w, padding=1)
        best_s = min(best_s, clock() - t)
    return 2 * 32 * 14 * 14 * 256 * 256 * 9 / best_s / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="lowrank.json", help="where to write the results")
    args = ap.parse_args()
    heap_peak.preload_or_fallback()  # may re-execute this script with the shim loaded
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    ext = _native.cpu()
    info = ext.build_info() if ext is not None else {}
    started = time.time()
    load_before = os.getloadavg()
    peak = peak_gflops()
    results: list[Result] = []
    for shape in shapes():
        if ONLY and ONLY not in shape.name:
            continue
        for scheme in ("channel", "spatial"):
            for red in REDUCTIONS:
                run_case(shape, scheme, red, results)
    meta = {
        "fusenas": fusenas.__version__,
        "torch": torch.__version__,
        "threads": THREADS,
        "clock": "process CPU time" if THREADS == 1 else "wall time",
        "full": FULL,
        "budget_s": BUDGET_S,
        "rounds": ROUNDS,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "build_info": {k: str(v) for k, v in info.items()},
        "peak_gflops": peak,
        "memory": "heap" if heap_peak.active() else "profiler",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    data = {"meta": meta, "results": [asdict(r) for r in results]}
    atomic_write_bytes(Path(args.json), json.dumps(data, indent=1).encode())
    print(f"wrote {args.json} ({len(results)} rows, {meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

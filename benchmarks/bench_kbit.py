"""k-bit matmul benchmarks: fusenas.ops.kbit_matmul against what a user would reach for.

Side by side in one run, on 2 threads (torch.set_num_threads(2)):

- fusenas kbit_matmul at 2, 3, 4, 8 bits and ternary (group 128, symmetric),
  float32 and bfloat16 activations;
- F.linear with float32 and bfloat16 weights;
- torch.ops.aten._weight_int8pack_mm (int8 per-channel weights);
- torch.ops.aten._weight_int4pack_mm_for_cpu (int4, group 128, scale + zero);
- bitsandbytes' CPU 4-bit matmul (nf4) in the CPU-packed layout Linear4bit
  switches to in eval mode (its AVX512-BF16 kernel; the plain layout would
  dequantize first). Skipped when bitsandbytes is not installed.

Each case runs with the weights cache-resident ("warm": the same copy every
call) and streamed from DRAM ("cold": a ring of copies totalling at least 8x
the L3 and 256 MiB, one call per round on the next copy, so every call reads
weights that have been evicted since it last saw them). Before timing, each
op's output is checked once against a float reference built from the weight
that op stores, so a wrong setup cannot report a fast but wrong number.

The DRAM read bandwidth is measured at the start of the run (test_dram_read_
bandwidth) and again right before and after each memory-bound case (cold,
M <= 8; extra_info dram_gbps_near): on a VM the host's memory bandwidth drifts
(from about 36 to 84 GB/s within minutes on the 2-core dev machine), so the
fraction of DRAM bandwidth is taken against the nearby figure.

Grid: the default is a quick subset (4096 x 4096; a couple of minutes). The
full grid, M in {1, 8, 32, 128, 512} x (K, N) in {(4096, 4096), (4096, 11008),
(11008, 4096), (1024, 1024)} x {cold, warm}, runs with FUSENAS_BENCH_FULL=1.

    python -m pytest benchmarks/bench_kbit.py --benchmark-only \
        --benchmark-json=kbit.json && python benchmarks/report.py kbit.json

Other knobs: FUSENAS_BENCH_SECONDS (time budget per case, default 0.5),
FUSENAS_BENCH_RING_MB (bytes of the cold ring), FUSENAS_BENCH_QUIET_WAIT
(seconds to wait, per case, for other processes to leave the CPUs before
timing; default 10). extra_info of every case records the
CPU share other processes took while it ran (foreign_load), since a shared
2-core machine is easily disturbed.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dram_bandwidth import l3_cache_bytes, make_buffer, measure_read_bandwidth, read_once

import fusenas
from fusenas import weight_memory
from fusenas.info import weight_memory_info
from fusenas.ops import _native
from fusenas.quant.packed import dequantize

THREADS = 2
torch.set_num_threads(THREADS)

FULL = os.environ.get("FUSENAS_BENCH_FULL", "0") == "1"
BUDGET_S = float(os.environ.get("FUSENAS_BENCH_SECONDS", "0.5"))
QUIET_WAIT_S = float(os.environ.get("FUSENAS_BENCH_QUIET_WAIT", "10"))
GROUP = 128
L3_BYTES = l3_cache_bytes()
# Cold runs cycle through copies of the weight totalling this many bytes (at least 8x the
# L3; FUSENAS_BENCH_RING_MB overrides). Caches with thrash-resistant replacement keep part
# of a cyclic working set only a little larger than the L3: on the 32 MiB-L3 dev machine a
# 40 MiB ring still let bitsandbytes' M = 1 call run 25% faster than a 96 MiB+ ring, and
# 96, 256, 512 and 1024 MiB rings gave the same times.
COLD_RING_BYTES = int(os.environ.get("FUSENAS_BENCH_RING_MB", "0")) << 20 or max(
    256 << 20, 8 * L3_BYTES
)

ALL_M = (1, 8, 32, 128, 512)
ALL_SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096), (1024, 1024))
FUSENAS_BITS: tuple[int | str, ...] = (2, 3, 4, 8, "ternary")
DTYPES = (torch.float32, torch.bfloat16)
DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16"}

# Human-readable op names (the report prints them).
OP_NAMES = {
    "fusenas": "fusenas.kbit_matmul",
    "linear": "F.linear",
    "int8pack": "aten._weight_int8pack_mm",
    "int4pack": "aten._weight_int4pack_mm_for_cpu",
    "bnb_nf4": "bitsandbytes matmul_4bit (nf4, CPU-packed)",
}


@dataclass(frozen=True)
class Case:
    op: str  # key of OP_NAMES
    bits: int | str  # code width, "ternary", or 32 / 16 for the float weights
    dtype: torch.dtype  # activation dtype (and the float weight's dtype for F.linear)
    m: int
    k: int
    n: int
    mode: str  # "cold" or "warm"

    @property
    def prep_key(self) -> tuple:
        # fusenas and bitsandbytes store the same weights whatever the activation dtype.
        shared = self.op in ("fusenas", "bnb_nf4")
        return (self.op, self.bits, None if shared else self.dtype, self.k, self.n, self.mode)

    @property
    def group_key(self) -> tuple:
        return (self.k, self.n, self.mode)

    @property
    def id(self) -> str:
        b = self.bits if isinstance(self.bits, str) else f"{self.bits}b"
        return f"{self.op}-{b}-{DTYPE_NAME[self.dtype]}-M{self.m}-{self.k}x{self.n}-{self.mode}"


def _variants() -> list[tuple[str, int | str, torch.dtype]]:
    out: list[tuple[str, int | str, torch.dtype]] = []
    for bits in FUSENAS_BITS:
        for dt in DTYPES:
            out.append(("fusenas", bits, dt))
    out += [("linear", 32, torch.float32), ("linear", 16, torch.bfloat16)]
    for op, bits in (("int8pack", 8), ("int4pack", 4), ("bnb_nf4", 4)):
        for dt in DTYPES:
            out.append((op, bits, dt))
    return out


def _in_quick_subset(op: str, bits: int | str, m: int, k: int, n: int, mode: str) -> bool:
    """4096 x 4096: every 4-bit op and alternative cold at M = 1, 8, 128, 512 and warm at
    M = 1; the other fusenas bit widths cold at M = 1 (the bit-width targets)."""
    if (k, n) != (4096, 4096):
        return False
    is_fusenas_other_bits = op == "fusenas" and bits != 4
    if is_fusenas_other_bits:
        return m == 1 and mode == "cold"
    if mode == "cold":
        return m in (1, 8, 128, 512)
    return m == 1


def _cases() -> list[Case]:
    # Ordered shape -> mode -> M -> op variant: every op of one (shape, M) is measured within
    # a minute or so (the host's memory bandwidth drifts over minutes on a shared VM); the
    # weight rings of one (shape, mode) are prepared once and kept until the next.
    cases = []
    for k, n in ALL_SHAPES:
        for mode in ("cold", "warm"):
            for m in ALL_M:
                for op, bits, dt in _variants():
                    if FULL or _in_quick_subset(op, bits, m, k, n, mode):
                        cases.append(Case(op, bits, dt, m, k, n, mode))
    return cases


CASES = _cases()


# --------------------------------------------------------------------------- machine state


class _CpuMeter:
    """CPU share that processes other than this one took between start() and stop()."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1

    @staticmethod
    def _busy_jiffies() -> int | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle

    def start(self) -> None:
        self._t = time.perf_counter()
        self._busy = self._busy_jiffies()
        t = os.times()
        self._own = t.user + t.system

    def stop(self) -> float:
        busy = self._busy_jiffies()
        t = os.times()
        wall = time.perf_counter() - self._t
        if busy is None or self._busy is None or wall <= 0:
            return float("nan")
        foreign = (busy - self._busy) / self.hz - (t.user + t.system - self._own)
        return min(1.0, max(0.0, foreign / (self.ncpu * wall)))


_QUIET_BUDGET = {"left": 10 * QUIET_WAIT_S}


def _wait_for_quiet() -> float:
    """Waits (bounded) until other processes use < 10% of the CPUs; returns the last sample."""
    meter = _CpuMeter()
    deadline = time.perf_counter() + min(QUIET_WAIT_S, _QUIET_BUDGET["left"])
    t0 = time.perf_counter()
    while True:
        meter.start()
        time.sleep(0.2)
        load = meter.stop()
        if not load > 0.1 or time.perf_counter() > deadline:
            break
    _QUIET_BUDGET["left"] -= time.perf_counter() - t0
    return load


_DRAM: dict[str, Any] = {}


def dram_info() -> dict[str, Any]:
    """The DRAM read bandwidth of this run (measured once, on first use)."""
    if not _DRAM:
        _DRAM.update(measure_read_bandwidth(THREADS).as_dict())
    return _DRAM


_NEAR_BUF: list[torch.Tensor] = []


def near_dram_gbps() -> float:
    """A quick DRAM read measurement (best of 3 reads of 512 MiB) to take next to a
    memory-bound case: on a VM the host's bandwidth drifts (36 to 74 GB/s within minutes on
    the dev machine), so the fraction of DRAM bandwidth is taken against this."""
    if not _NEAR_BUF:
        _NEAR_BUF.append(make_buffer(512 << 20))
    return measure_read_bandwidth(THREADS, runs=3, buf=_NEAR_BUF[0]).gbps


def _build_info() -> dict[str, Any]:
    ext = _native.cpu()
    if ext is None:
        return {"fusenas_ext": "not built (reference path)"}
    info = ext.build_info()
    built = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(os.path.getmtime(ext.__file__)))
    return {
        "fusenas_isa": info.get("active_isa"),
        "fusenas_compiler": info.get("compiler"),
        "fusenas_ext_built": built,
        "fusenas_weight_memory": weight_memory_info(),
    }


# --------------------------------------------------------------------------- weights


@dataclass
class Prepared:
    """Weight copies for one (op, bits, dtype, K, N, mode) and how to call the op."""

    fn: Callable[[torch.Tensor, Any], torch.Tensor]
    ring: list[Any]  # per-copy argument passed to fn
    weight_bytes: int  # bytes one call reads for the weight (codes + scales + zeros)
    w_ref: torch.Tensor  # float32 (N, K): the weight the op computes with
    op_detail: str


_CACHE: dict[str, Any] = {"group": None, "preps": {}, "base_key": None, "base": None}


def _base_weight(k: int, n: int) -> torch.Tensor:
    if _CACHE["base_key"] != (k, n):
        _CACHE["base"] = None
        gen = torch.Generator().manual_seed(1234 + k * 7 + n)
        _CACHE["base"] = torch.randn(n, k, generator=gen) * 0.02
        _CACHE["base_key"] = (k, n)
    return _CACHE["base"]


def _ring_size(case: Case, weight_bytes: int) -> int:
    if case.mode == "warm":
        return 1
    return max(2, -(-COLD_RING_BYTES // weight_bytes))


def _clone_ring(first: Any, count: int, clone: Callable[[Any], Any]) -> list[Any]:
    return [first] + [clone(first) for _ in range(count - 1)]


def _prep_fusenas(case: Case, w: torch.Tensor) -> Prepared:
    pw = fusenas.quantize_weight(w, case.bits, GROUP, True)

    def clone(p):
        # Each copy placed as fusenas places the codes it packs (fusenas/weight_memory.py:
        # 2 MiB-aligned, for huge pages); the other ops' copies come from torch's allocator,
        # as their libraries' weights do.
        zeros = None if p.zeros is None else p.zeros.clone()
        codes = weight_memory.place(p.codes, copy=True)
        return dataclasses.replace(p, codes=codes, scales=p.scales.clone(), zeros=zeros)

    ring = _clone_ring(pw, _ring_size(case, pw.nbytes()), clone)
    # A batch-1 call of a 2- or 3-bit weight on an AVX512_VNNI CPU first builds the
    # weight's table layout (fusenas/ops/kbit_lut.py, about 6 ms at 4096 x 4096),
    # once per weight as a deployment would: one untimed call per copy.
    x1 = torch.zeros(1, case.k)
    with torch.no_grad():
        for p in ring:
            fusenas.ops.kbit_matmul(x1, p)
    return Prepared(
        fn=lambda x, p: fusenas.ops.kbit_matmul(x, p),
        ring=ring,
        weight_bytes=pw.nbytes(),
        w_ref=dequantize(pw),
        op_detail=f"{case.bits}-bit, group {GROUP}, symmetric",
    )


def _prep_linear(case: Case, w: torch.Tensor) -> Prepared:
    wd = w.to(case.dtype).contiguous()
    nbytes = wd.numel() * wd.element_size()
    ring = _clone_ring(wd, _ring_size(case, nbytes), torch.clone)
    return Prepared(
        fn=lambda x, wt: F.linear(x, wt),
        ring=ring,
        weight_bytes=nbytes,
        w_ref=wd.float(),
        op_detail=f"{DTYPE_NAME[case.dtype]} weight",
    )


def _prep_int8pack(case: Case, w: torch.Tensor) -> Prepared:
    # Per-output-channel symmetric int8, scales in the activation dtype (as torchao's
    # int8 weight-only path calls it).
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -128, 127).to(torch.int8).contiguous()
    s = scale.to(case.dtype).contiguous()
    nbytes = q.numel() + s.numel() * s.element_size()
    ring = _clone_ring((q, s), _ring_size(case, nbytes), lambda a: (a[0].clone(), a[1].clone()))
    return Prepared(
        fn=lambda x, a: torch.ops.aten._weight_int8pack_mm(x, a[0], a[1]),
        ring=ring,
        weight_bytes=nbytes,
        w_ref=q.float() * s.float()[:, None],
        op_detail="int8 per-channel, scales in the input dtype",
    )


def _prep_int4pack(case: Case, w: torch.Tensor) -> Prepared:
    # Asymmetric int4, group 128: codes 0..15 (int32, [N, K]) packed by
    # _convert_weight_to_int4pack_for_cpu(codes, 1); scales_and_zeros [K/G, N, 2] in the
    # input dtype; weight = (q - 8) * scale + zero (torch's test_linalg recipe).
    n, k = w.shape
    wg = w.reshape(n, k // GROUP, GROUP)
    lo, hi = wg.amin(dim=2), wg.amax(dim=2)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    q = torch.clamp(torch.round((wg - lo[..., None]) / scale[..., None]), 0, 15).to(torch.int32)
    s = scale.to(case.dtype)
    z = (lo + 8 * scale).to(case.dtype)
    sz = torch.stack([s, z], dim=-1).transpose(0, 1).contiguous()  # [K/G, N, 2]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(n, k).contiguous(), 1)
    nbytes = packed.numel() * packed.element_size() + sz.numel() * sz.element_size()
    ring = _clone_ring(
        (packed, sz), _ring_size(case, nbytes), lambda a: (a[0].clone(), a[1].clone())
    )
    w_ref = ((q.float() - 8) * s.float()[..., None] + z.float()[..., None]).reshape(n, k)
    return Prepared(
        fn=lambda x, a: torch.ops.aten._weight_int4pack_mm_for_cpu(x, a[0], GROUP, a[1]),
        ring=ring,
        weight_bytes=nbytes,
        w_ref=w_ref,
        op_detail=f"int4 asymmetric, group {GROUP}",
    )


def _import_bnb():
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels" hub loader notice
    try:
        import bitsandbytes as bnb
    except ImportError:
        pytest.skip("bitsandbytes not installed (pip install --no-deps bitsandbytes)")
    return bnb


def _prep_bnb(case: Case, w: torch.Tensor) -> Prepared:
    bnb = _import_bnb()
    import bitsandbytes.functional as bnbF

    if not bnbF.has_avx512bf16():
        pytest.skip("bitsandbytes' fast CPU 4-bit kernel needs AVX512-BF16; this CPU lacks it")
    n, k = w.shape
    lin = bnb.nn.Linear4bit(k, n, bias=False, quant_type="nf4", compute_dtype=case.dtype)
    lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
    lin = lin.to("cpu").eval()  # quantizes (plain layout)
    w_ref = bnbF.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float()
    with torch.no_grad():  # eval + no grad: Linear4bit converts to the CPU-packed layout
        lin(torch.zeros(1, k, dtype=case.dtype))
    qs = lin.weight.quant_state
    if not getattr(qs, "packing_format_for_cpu", False):
        pytest.fail("bitsandbytes Linear4bit did not switch to the CPU-packed layout in eval mode")
    data = lin.weight.data

    def call(x, a):
        return bnb.matmul_4bit(x, a[0], quant_state=a[1])

    # The fast path is the bitsandbytes::gemv_4bit CPU kernel; the slow one dequantizes.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            call(torch.zeros(2, k, dtype=case.dtype), (data, qs))
    names = {e.name for e in prof.events()}
    if "bitsandbytes::gemv_4bit" not in names or any("dequantize" in nm for nm in names):
        pytest.fail(f"bitsandbytes did not take its fused CPU 4-bit path: {sorted(names)}")

    def clone(a):
        qs2 = copy.copy(a[1])
        qs2.absmax = a[1].absmax.clone()
        return (a[0].clone(), qs2)

    nbytes = data.numel() * data.element_size() + qs.absmax.numel() * qs.absmax.element_size()
    ring = _clone_ring((data, qs), _ring_size(case, nbytes), clone)
    return Prepared(
        fn=call,
        ring=ring,
        weight_bytes=nbytes,
        w_ref=w_ref,
        op_detail=f"nf4, blocksize {qs.blocksize}, bf16 absmax, bf16 compute, "
        f"bitsandbytes {bnb.__version__}",
    )


_PREP = {
    "fusenas": _prep_fusenas,
    "linear": _prep_linear,
    "int8pack": _prep_int8pack,
    "int4pack": _prep_int4pack,
    "bnb_nf4": _prep_bnb,
}


def _prepared(case: Case) -> Prepared:
    if _CACHE["group"] != case.group_key:
        _CACHE["group"], _CACHE["preps"] = None, {}
        gc.collect()
        _CACHE["group"] = case.group_key
    preps = _CACHE["preps"]
    if case.prep_key not in preps:
        preps[case.prep_key] = _PREP[case.op](case, _base_weight(case.k, case.n))
    return preps[case.prep_key]


# --------------------------------------------------------------------------- checks


def _check(case: Case, prep: Prepared, x: torch.Tensor, arg: Any) -> float:
    """Relative Frobenius error of the op's output against x @ w_ref^T in float32."""
    with torch.no_grad():
        y = prep.fn(x, arg)
    assert y.shape == (case.m, case.n) and y.dtype == case.dtype, (y.shape, y.dtype)
    ref = x.float() @ prep.w_ref.T
    err = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    # bf16 outputs (and bitsandbytes, which computes in bf16) carry ~3e-3 rounding error;
    # a wrong layout or scale gives errors of order 1.
    tol = 2e-2 if case.dtype == torch.bfloat16 or case.op == "bnb_nf4" else 1e-3
    assert err < tol, f"{case.id}: output differs from the float reference (rel err {err:.3g})"
    return err


_CHECKED: dict[tuple, float] = {}


def _rounds(t: float) -> tuple[int, int]:
    """(rounds, warmup rounds) for a call of about t seconds within BUDGET_S."""
    if t > 2.0:
        return 1, 0
    if t > 0.2:
        return max(2, int(BUDGET_S / t)), 0
    return min(1000, max(5, int(BUDGET_S / max(t, 1e-6)))), 2 if t < 0.05 else 1


# --------------------------------------------------------------------------- benchmarks


def test_dram_read_bandwidth(benchmark):
    """The DRAM read bandwidth of this run: the M = 1 kernels are measured against it."""
    buf = make_buffer(1 << 30)
    quiet_before = _wait_for_quiet()
    meter = _CpuMeter()
    meter.start()
    res = measure_read_bandwidth(THREADS, buf=buf)
    _DRAM.update(res.as_dict())
    benchmark.group = "dram"
    benchmark.extra_info.update(op="dram_read", **res.as_dict(), l3_bytes=L3_BYTES)
    benchmark.pedantic(read_once, args=(buf,), rounds=5, warmup_rounds=1)
    best = buf.numel() * 4 / benchmark.stats.stats.min / 1e9
    if best > _DRAM["gbps"]:
        _DRAM["gbps"] = best
    benchmark.extra_info.update(
        gbps=_DRAM["gbps"], foreign_load=meter.stop(), foreign_load_before=quiet_before
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kbit(benchmark, case: Case):
    prep = _prepared(case)
    gen = torch.Generator().manual_seed(case.m * 31 + case.k)
    x = torch.randn(case.m, case.k, generator=gen).to(case.dtype)

    check_key = (case.op, case.bits, case.dtype, case.k, case.n, case.m)
    if check_key not in _CHECKED:
        _CHECKED[check_key] = _check(case, prep, x, prep.ring[0])
    last_key = (*case.prep_key, case.dtype, "last")
    if len(prep.ring) > 1 and last_key not in _CHECKED:  # the copies are right too
        _CHECKED[last_key] = _check(case, prep, x, prep.ring[-1])
    rel_err = _CHECKED[check_key]

    # Estimate the call time (on a cold copy for cold runs) to size the rounds.
    arg = prep.ring[len(prep.ring) // 2]
    t0 = time.perf_counter()
    with torch.no_grad():
        prep.fn(x, arg)
    rounds, warmup = _rounds(time.perf_counter() - t0)

    pos = [0]

    def next_arg():
        pos[0] = (pos[0] + 1) % len(prep.ring)
        return (x, prep.ring[pos[0]]), {}

    benchmark.group = f"{case.k}x{case.n} M={case.m} {case.mode}"
    memory_bound = case.mode == "cold" and case.m <= 8
    quiet_before = _wait_for_quiet()
    near = [near_dram_gbps()] if memory_bound else []
    meter = _CpuMeter()
    meter.start()
    with torch.no_grad():
        if case.mode == "cold":
            benchmark.pedantic(prep.fn, setup=next_arg, rounds=rounds, warmup_rounds=warmup)
        else:
            benchmark.pedantic(prep.fn, args=(x, prep.ring[0]), rounds=rounds, warmup_rounds=warmup)
    foreign = meter.stop()
    if memory_bound:
        near.append(near_dram_gbps())

    stats = benchmark.stats.stats
    dram = dram_info()
    flops = 2.0 * case.m * case.n * case.k
    benchmark.extra_info.update(
        op=case.op,
        op_name=OP_NAMES[case.op],
        op_detail=prep.op_detail,
        bits=case.bits,
        dtype=DTYPE_NAME[case.dtype],
        M=case.m,
        K=case.k,
        N=case.n,
        mode=case.mode,
        weight_bytes=prep.weight_bytes,
        fp32_weight_bytes=4 * case.n * case.k,
        ring_copies=len(prep.ring),
        gbps=prep.weight_bytes / stats.median / 1e9,
        gbps_best=prep.weight_bytes / stats.min / 1e9,
        gflops=flops / stats.median / 1e9,
        gflops_best=flops / stats.min / 1e9,
        dram_gbps=dram["gbps"],
        dram_gbps_near=max(near) if near else None,
        dram_fraction=prep.weight_bytes
        / stats.median
        / 1e9
        / (max(near) if near else dram["gbps"]),
        rel_err=rel_err,
        threads=torch.get_num_threads(),
        foreign_load=foreign,
        foreign_load_before=quiet_before,
        l3_bytes=L3_BYTES,
        grid="full" if FULL else "quick",
        torch_version=torch.__version__,
        **_build_info(),
    )


def _interleave(
    calls: dict[str, Callable[[], None]],
    per_round: int,
    rounds: int,
    benchmark,
    after_round: Callable[[], None] | None = None,
):
    """Runs each entry of `calls` per_round times per round, the entries in turn, each
    round starting at the next entry (so none always runs first; neighbours stay
    neighbours, so entries must not share the copies they read), then after_round
    once; returns {key: [seconds per call, one per round]}. The rounds run through
    benchmark.pedantic."""
    keys = list(calls)
    times: dict[str, list[float]] = {k: [] for k in keys}
    rnd = [0]

    def one_round():
        r = rnd[0] % len(keys)
        rnd[0] += 1
        for key in keys[r:] + keys[:r]:
            fn = calls[key]
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[key].append((time.perf_counter() - t0) / per_round)
        if after_round is not None:
            after_round()

    with torch.no_grad():
        benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0)
    return times


def _cold_caller(prep: Prepared, x: torch.Tensor, start: int = 0) -> Callable[[], None]:
    """One call on the next copy of the cold ring each time, from copy `start` on."""
    pos = [start]

    def call():
        pos[0] = (pos[0] + 1) % len(prep.ring)
        prep.fn(x, prep.ring[pos[0]])

    return call


def _summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        "median": {k: statistics.median(t) for k, t in times.items()},
        "min": {k: min(t) for k, t in times.items()},
    }


INTERLEAVED_CALLS = 16  # cold calls per entry per round
INTERLEAVED_ROUNDS = 30
INTERLEAVED_SHAPES = ALL_SHAPES if FULL else ((4096, 4096),)

# The bit-width targets (M = 1: 2-bit <= 0.6x 4-bit, 3-bit between, ternary <= 2-bit)
# compare different cases, and test_kbit measures them a minute or more apart, while
# the host's memory bandwidth drifts 2x within minutes on a shared VM (41-85 GB/s in
# one run): the ratios then compare memory speeds as much as kernels. This case
# alternates the widths over their cold rings, a batch of calls each in turn, so every
# width sees the same minutes; report.py judges the bit-width targets on it.
INTERLEAVED_BITS: tuple[int | str, ...] = (2, 3, 4, "ternary")
INTERLEAVED_CASES = [(k, n, dt) for k, n in INTERLEAVED_SHAPES for dt in DTYPES]


@pytest.mark.parametrize(
    "k, n, dtype",
    INTERLEAVED_CASES,
    ids=[f"interleaved-widths-{DTYPE_NAME[dt]}-M1-{k}x{n}-cold" for k, n, dt in INTERLEAVED_CASES],
)
def test_kbit_widths_interleaved(benchmark, k: int, n: int, dtype: torch.dtype):
    preps = {b: _prepared(Case("fusenas", b, dtype, 1, k, n, "cold")) for b in INTERLEAVED_BITS}
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k + n)).to(dtype)
    benchmark.group = f"{k}x{n} M=1 cold, widths interleaved"
    quiet_before = _wait_for_quiet()
    meter = _CpuMeter()
    meter.start()
    calls = {str(b): _cold_caller(p, x) for b, p in preps.items()}
    times = _interleave(calls, INTERLEAVED_CALLS, INTERLEAVED_ROUNDS, benchmark)
    benchmark.extra_info.update(
        interleaved_widths={
            "K": k,
            "N": n,
            "dtype": DTYPE_NAME[dtype],
            "rounds": INTERLEAVED_ROUNDS,
            "calls_per_round": INTERLEAVED_CALLS,
            **_summary(times),  # seconds per call: median and best over the rounds
            "weight_bytes": {str(b): p.weight_bytes for b, p in preps.items()},
        },
        foreign_load=meter.stop(),
        foreign_load_before=quiet_before,
        dram_gbps=dram_info()["gbps"],
    )


# The M = 1 4-bit targets against torch's int4pack and bitsandbytes (1.7x faster, 80% of
# the DRAM read bandwidth, float32 x at 0.8x the speed of bfloat16 x) compare cases
# measured minutes apart too: in one full run bitsandbytes' 4096 x 4096 case read
# 0.188 ms against fusenas' 0.261 (bfloat16 x; a fast-memory minute against a slow
# one), while alternated in one process the same code took 0.26 and 0.27 ms. This
# case alternates fusenas and bitsandbytes (float32 and bfloat16 x) and torch int4pack
# (bfloat16 x: its float32 path is scalar, 50-100x slower) over their cold rings, with
# one 512 MiB DRAM read per round, and a torch.sum over as many bytes as the 4-bit
# weight from a cold ring (what a read of that size gets, call overhead and ramp-up
# included). report.py judges those targets on it: the DRAM fraction against the
# median of the rounds' 512 MiB reads.
ALT_VARIANTS = (
    ("fusenas", 4, torch.float32),
    ("fusenas", 4, torch.bfloat16),
    ("int4pack", 4, torch.bfloat16),
    ("bnb_nf4", 4, torch.float32),
    ("bnb_nf4", 4, torch.bfloat16),
)


def _alt_key(op: str, dtype: torch.dtype) -> str:
    return f"{op}-{DTYPE_NAME[dtype]}"


@pytest.mark.parametrize(
    "k, n",
    INTERLEAVED_SHAPES,
    ids=[f"interleaved-alternatives-M1-{k}x{n}-cold" for k, n in INTERLEAVED_SHAPES],
)
def test_kbit_alternatives_interleaved(benchmark, k: int, n: int):
    preps: dict[str, tuple[Prepared, torch.dtype]] = {}
    for op, bits, dt in ALT_VARIANTS:
        try:
            preps[_alt_key(op, dt)] = (_prepared(Case(op, bits, dt, 1, k, n, "cold")), dt)
        except pytest.skip.Exception:  # bitsandbytes missing or without its fast kernel
            continue
    gen = torch.Generator().manual_seed(k * 3 + n)
    xs = {dt: torch.randn(1, k, generator=gen).to(dt) for dt in DTYPES}
    for key, (prep, dt) in preps.items():
        _check(Case(key.split("-")[0], 4, dt, 1, k, n, "cold"), prep, xs[dt], prep.ring[-1])
    nbytes = preps[_alt_key("fusenas", torch.bfloat16)][0].weight_bytes
    reads = [torch.ones(nbytes // 4) for _ in range(max(2, -(-COLD_RING_BYTES // nbytes)))]
    read_pos = [0]

    def short_read():
        read_pos[0] = (read_pos[0] + 1) % len(reads)
        reads[read_pos[0]].sum()

    if not _NEAR_BUF:
        _NEAR_BUF.append(make_buffer(512 << 20))
    dram: list[float] = []

    def dram_read():  # once per round: 512 MiB
        t0 = time.perf_counter()
        read_once(_NEAR_BUF[0])
        dram.append(_NEAR_BUF[0].numel() * 4 / (time.perf_counter() - t0) / 1e9)

    # fusenas and bitsandbytes keep one ring for both dtypes: the second dtype's caller
    # starts half a ring away, or it would find the copies the first one just read
    # still in the L3 (at 1024 x 1024, 16 calls read 8 MB) and look faster.
    calls, users = {}, {}
    for key, (prep, dt) in preps.items():
        start = users.get(id(prep), 0) * (len(prep.ring) // 2)
        users[id(prep)] = users.get(id(prep), 0) + 1
        calls[key] = _cold_caller(prep, xs[dt], start)
    calls["read"] = short_read
    benchmark.group = f"{k}x{n} M=1 cold, alternatives interleaved"
    quiet_before = _wait_for_quiet()
    meter = _CpuMeter()
    meter.start()
    times = _interleave(calls, INTERLEAVED_CALLS, INTERLEAVED_ROUNDS, benchmark, dram_read)
    benchmark.extra_info.update(
        interleaved_alternatives={
            "K": k,
            "N": n,
            "rounds": INTERLEAVED_ROUNDS,
            "calls_per_round": INTERLEAVED_CALLS,
            **_summary(times),
            "weight_bytes": {key: p.weight_bytes for key, (p, _) in preps.items()}
            | {"read": nbytes // 4 * 4},
            "dram_gbps_median": statistics.median(dram),
            "dram_gbps_max": max(dram),
        },
        foreign_load=meter.stop(),
        foreign_load_before=quiet_before,
        dram_gbps=dram_info()["gbps"],
    )

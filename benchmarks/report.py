"""Turns a bench_kbit.py pytest-benchmark JSON into docs/benchmarks/kbit.md and kbit.png.

    python benchmarks/report.py kbit.json [--out-md docs/benchmarks/kbit.md]
        [--out-png docs/benchmarks/kbit.png] [--stat median|min]

The Markdown has: the issue's performance targets, each marked met / not met
with the numbers behind it; fusenas / alternative time ratios; time per
configuration; GB/s of weight bytes and their fraction of the DRAM read
bandwidth measured in the same run (M = 1); GFLOP/s for M >= 128. Ratios are
times (fusenas / theirs): below 1 means fusenas is faster.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fusenas._atomic import save_figure_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
DTYPE_SHORT = {"float32": "f32", "bfloat16": "bf16"}
ALT_ORDER = ["linear", "int8pack", "int4pack", "bnb_nf4"]
FUSENAS_BITS_ORDER = ["4", "2", "3", "ternary", "8"]
LOAD_FLAG = 0.10  # foreign CPU load above which a number is marked as disturbed


@dataclass(frozen=True)
class Row:
    op: str
    bits: str
    dtype: str
    m: int
    k: int
    n: int
    mode: str
    t: float  # seconds, the chosen statistic
    weight_bytes: int
    fp32_weight_bytes: int
    foreign_load: float
    rel_err: float
    detail: str
    dram_near: float | None  # DRAM read GB/s measured right next to this case, if it was

    def dram(self, run_gbps: float) -> float:
        """The DRAM bandwidth this case is compared with: the nearby measurement if any."""
        return self.dram_near or run_gbps

    @property
    def variant(self) -> tuple[str, str, str]:
        return (self.op, self.bits, self.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.t / 1e9

    @property
    def gflops(self) -> float:
        return 2.0 * self.m * self.k * self.n / self.t / 1e9

    @property
    def disturbed(self) -> bool:
        return self.foreign_load > LOAD_FLAG


# Why a run has no bitsandbytes rows: bench_kbit skips them where it is not installed
# and where its fast CPU 4-bit kernel cannot run (it needs AVX512-BF16).
NO_BNB = "no results (not installed, or skipped: its CPU kernel needs AVX512-BF16)"


def label(variant: tuple[str, str, str]) -> str:
    op, bits, dtype = variant
    d = DTYPE_SHORT.get(dtype, dtype)
    if op == "fusenas":
        b = "ternary" if bits == "ternary" else f"{bits}-bit"
        return f"fusenas {b} {d}"
    return {
        "linear": f"F.linear {d}",
        "int8pack": f"torch int8pack {d}",
        "int4pack": f"torch int4pack {d}",
        "bnb_nf4": f"bnb nf4 {d}",
    }.get(op, f"{op} {bits} {d}")


def variant_order(v: tuple[str, str, str]) -> tuple:
    op, bits, dtype = v
    d = 0 if dtype == "float32" else 1
    if op == "fusenas":
        bi = FUSENAS_BITS_ORDER.index(bits) if bits in FUSENAS_BITS_ORDER else 9
        return (0, bi, d)
    return (1, ALT_ORDER.index(op) if op in ALT_ORDER else 9, d)


def load_interleaved_widths(data: dict, stat: str) -> dict:
    """(shape, dtype) -> {bits: seconds per call} from bench_kbit's interleaved case."""
    key = "min" if stat == "min" else "median"
    out = {}
    for b in data.get("benchmarks", []):
        iw = b.get("extra_info", {}).get("interleaved_widths")
        if iw:
            out[((int(iw["K"]), int(iw["N"])), iw["dtype"])] = {
                bits: float(t) for bits, t in iw[key].items()
            }
    return out


@dataclass(frozen=True)
class Interleaved:
    """bench_kbit's interleaved M = 1 4-bit case against the alternatives, one shape."""

    t: dict[str, float]  # "fusenas-float32", ..., "read" -> seconds per call
    weight_bytes: dict[str, int]
    dram_gbps: float  # median of the rounds' 512 MiB reads

    def gbps(self, key: str) -> float:
        return self.weight_bytes[key] / self.t[key] / 1e9

    def best_alternative(self) -> str | None:
        alts = [k for k in self.t if k.split("-")[0] in ("int4pack", "bnb_nf4")]
        return min(alts, key=self.t.__getitem__) if alts else None


def load_interleaved_alternatives(data: dict, stat: str) -> dict:
    """shape -> Interleaved, from bench_kbit's test_kbit_alternatives_interleaved."""
    key = "min" if stat == "min" else "median"
    out = {}
    for b in data.get("benchmarks", []):
        ia = b.get("extra_info", {}).get("interleaved_alternatives")
        if ia:
            out[(int(ia["K"]), int(ia["N"]))] = Interleaved(
                t={k: float(v) for k, v in ia[key].items()},
                weight_bytes={k: int(v) for k, v in ia["weight_bytes"].items()},
                dram_gbps=float(ia["dram_gbps_median"]),
            )
    return out


def alt_label(key: str) -> str:
    """'bnb_nf4-bfloat16' -> label(('bnb_nf4', '4', 'bfloat16'))."""
    op, dtype = key.split("-")
    return label((op, "4", dtype))


def load_rows(data: dict, stat: str) -> tuple[list[Row], dict]:
    rows, dram = [], {}
    for b in data.get("benchmarks", []):
        ex = b.get("extra_info", {})
        if ex.get("op") == "dram_read":
            dram = ex
            continue
        if "op" not in ex:
            continue
        rows.append(
            Row(
                op=ex["op"],
                bits=str(ex["bits"]),
                dtype=ex["dtype"],
                m=int(ex["M"]),
                k=int(ex["K"]),
                n=int(ex["N"]),
                mode=ex["mode"],
                t=float(b["stats"][stat]),
                weight_bytes=int(ex["weight_bytes"]),
                fp32_weight_bytes=int(ex.get("fp32_weight_bytes", 4 * ex["K"] * ex["N"])),
                foreign_load=float(ex.get("foreign_load") or 0.0),
                rel_err=float(ex.get("rel_err", float("nan"))),
                detail=str(ex.get("op_detail", "")),
                dram_near=ex.get("dram_gbps_near"),
            )
        )
    if not dram and rows:  # a run filtered with -k: each case carries the measurement
        dram = {"gbps": max(b["extra_info"].get("dram_gbps", 0) for b in data["benchmarks"])}
    return rows, dram


# --------------------------------------------------------------------------- formatting


def fmt_ms(t: float | None) -> str:
    if t is None:
        return "-"
    ms = t * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}"


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return out + [""]


class Index:
    """Look-ups over the rows: time of a variant at (shape, mode, M), best alternative."""

    def __init__(
        self, rows: list[Row], widths: dict | None = None, alternatives: dict | None = None
    ) -> None:
        self.rows = rows
        # (shape, dtype) -> {bits: seconds per call}, from test_kbit_widths_interleaved
        self.widths = widths or {}
        # shape -> Interleaved, from test_kbit_alternatives_interleaved
        self.alternatives = alternatives or {}
        self.by = {(r.variant, r.shape, r.mode, r.m): r for r in rows}
        self.shapes = sorted({r.shape for r in rows}, key=lambda s: (s != (4096, 4096), s))
        self.modes = [m for m in ("cold", "warm") if any(r.mode == m for r in rows)]
        self.variants = sorted({r.variant for r in rows}, key=variant_order)

    def get(self, variant, shape, mode, m) -> Row | None:
        return self.by.get((variant, shape, mode, m))

    def ms(self, shape, mode) -> list[int]:
        return sorted({r.m for r in self.rows if r.shape == shape and r.mode == mode})

    def best(self, shape, mode, m, ops: list[str] | None = None) -> Row | None:
        cands = [
            r
            for r in self.rows
            if r.shape == shape
            and r.mode == mode
            and r.m == m
            and r.op != "fusenas"
            and (ops is None or r.op in ops)
        ]
        return min(cands, key=lambda r: r.t) if cands else None


# --------------------------------------------------------------------------- targets


M1_FASTER = (
    "M=1 4-bit {d} cold: >= 1.7x faster than the faster of torch int4pack and bitsandbytes 4-bit"
)
M1_DRAM = "M=1 4-bit {d} cold: >= 80% of the DRAM read bandwidth"
M1_F32 = "M=1 4-bit cold: float32 input >= 0.8x the speed of bfloat16 input"


@dataclass(frozen=True)
class M1Times:
    """The M = 1 4-bit figures of one shape that the targets compare, from either source."""

    t: dict[str, float | None]  # fusenas seconds per call, by x dtype
    gbps: dict[str, float | None]  # fusenas GB/s of weight bytes, by x dtype
    dram: dict[str, str | None]  # how that compares with DRAM ("81% of ... GB/s ...")
    dram_ok: dict[str, bool | None]
    alt: tuple[str, float] | None  # (label, seconds) of the faster of int4pack and bnb
    how: str  # " (interleaved)" or ""


def m1_times(ix: Index, shape, dram_gbps: float) -> M1Times:
    """The interleaved case where the run has it (all timed in the same minutes), else
    the separate cases, each against the DRAM figure measured next to it."""
    inter = ix.alternatives.get(shape)
    t, gbps, dram, dram_ok = {}, {}, {}, {}
    if inter is not None:
        best = inter.best_alternative()
        read = (
            f"; a torch.sum of as many bytes: {inter.gbps('read'):.1f}" if "read" in inter.t else ""
        )
        for dt in DTYPE_SHORT:
            key = f"fusenas-{dt}"
            t[dt] = inter.t.get(key)
            gbps[dt] = inter.gbps(key) if key in inter.t else None
            bw, note = inter.dram_gbps, f" (interleaved 512 MiB reads{read})"
            dram[dt] = None if gbps[dt] is None else f"{gbps[dt] / bw:.0%} of {bw:.1f} GB/s{note}"
            dram_ok[dt] = None if gbps[dt] is None else gbps[dt] >= 0.8 * bw
        alt = None if best is None else (alt_label(best), inter.t[best])
        return M1Times(t, gbps, dram, dram_ok, alt, " (interleaved)")
    for dt in DTYPE_SHORT:
        r = ix.get(("fusenas", "4", dt), shape, "cold", 1)
        t[dt] = None if r is None else r.t
        gbps[dt] = None if r is None else r.gbps
        bw = 0.0 if r is None else r.dram(dram_gbps)
        have = r is not None and bw > 0
        note = " (measured next to it)" if have and r.dram_near else ""
        dram[dt] = f"{r.gbps / bw:.0%} of {bw:.1f} GB/s{note}" if have else None
        dram_ok[dt] = r.gbps >= 0.8 * bw if have else None
    best_row = ix.best(shape, "cold", 1, ["int4pack", "bnb_nf4"])
    alt = None if best_row is None else (label(best_row.variant), best_row.t)
    return M1Times(t, gbps, dram, dram_ok, alt, "")


def m1_targets(ix: Index, shape, dram_gbps: float) -> list[tuple[str, bool | None, str]]:
    """(target, ok or None without data, measured) for the M = 1 4-bit targets of a shape."""
    m = m1_times(ix, shape, dram_gbps)
    out: list[tuple[str, bool | None, str]] = []
    for dt, d in DTYPE_SHORT.items():
        t = m.t[dt]
        if t is None or m.alt is None:
            out.append((M1_FASTER.format(d=d), None, "-"))
            continue
        name, ta = m.alt
        measured = f"{fmt_ms(t)} ms vs {name} {fmt_ms(ta)} ms: {ta / t:.2f}x{m.how}"
        out.append((M1_FASTER.format(d=d), ta / t >= 1.7, measured))
    for dt, d in DTYPE_SHORT.items():
        measured = "" if m.dram[dt] is None else f"{m.gbps[dt]:.1f} GB/s = {m.dram[dt]}"
        out.append((M1_DRAM.format(d=d), m.dram_ok[dt], measured))
    t32, t16 = m.t["float32"], m.t["bfloat16"]
    have = t32 is not None and t16 is not None
    out.append(
        (
            M1_F32,
            t16 / t32 >= 0.8 if have else None,
            f"f32 {fmt_ms(t32)} ms, bf16 {fmt_ms(t16)} ms: {t16 / t32:.2f}x{m.how}" if have else "",
        )
    )
    return out


def evaluate_targets(ix: Index, dram_gbps: float) -> list[tuple[str, str, str]]:
    """(target, measured, status) for each of the issue's targets and each shape measured."""
    out: list[tuple[str, str, str]] = []

    def add(target: str, ok: bool | None, measured: str) -> None:
        status = "no data" if ok is None else ("met" if ok else "NOT met")
        out.append((target, measured if ok is not None else "-", status))

    def fus(bits: str, dtype: str, shape, m: int, mode: str = "cold") -> Row | None:
        return ix.get(("fusenas", bits, dtype), shape, mode, m)

    def versus(r: Row | None, alt: Row | None) -> str:
        if r is None or alt is None:
            return "-"
        return f"{fmt_ms(r.t)} ms vs {label(alt.variant)} {fmt_ms(alt.t)} ms: {alt.t / r.t:.2f}x"

    for shape in ix.shapes:
        sh = f"{shape[0]}x{shape[1]}"
        # 1. M = 1, 4-bit, cold: vs the faster of torch int4pack and bitsandbytes; DRAM
        # fraction; float32 input vs bfloat16 input. On the interleaved case where the
        # run has it (all timed in the same minutes), else on the separate cases.
        for target, ok, measured in m1_targets(ix, shape, dram_gbps):
            add(f"{sh} {target}", ok, measured)

        # 2. M = 8: >= 2x faster than the best alternative.
        for mode in ix.modes:
            if mode != "cold" and 8 not in ix.ms(shape, mode):
                continue  # the target is for cold weights; warm rows only when measured
            alt = ix.best(shape, mode, 8)
            for dt in ("float32", "bfloat16"):
                r = fus("4", dt, shape, 8, mode)
                add(
                    f"{sh} M=8 4-bit {DTYPE_SHORT[dt]} {mode}: >= 2x faster than the best "
                    "alternative",
                    None if r is None or alt is None else alt.t / r.t >= 2.0,
                    versus(r, alt),
                )

        # 3. M = 1 bit-width scaling: on the interleaved case where the run has it (the
        # widths measured in the same minutes), else on the separate cases.
        for dt in ("float32", "bfloat16"):
            bits = ("2", "3", "4", "ternary")
            inter = ix.widths.get((shape, dt))
            if inter is not None:
                t2, t3, t4, tt = (inter.get(b) for b in bits)
                how = " (interleaved)"
            else:
                rows = {b: fus(b, dt, shape, 1) for b in bits}
                t2, t3, t4, tt = (rows[b].t if rows[b] else None for b in bits)
                how = ""
            d = DTYPE_SHORT[dt]
            add(
                f"{sh} M=1 {d} cold: 2-bit time <= 0.6x the 4-bit time",
                None if t2 is None or t4 is None else t2 <= 0.6 * t4,
                f"{fmt_ms(t2)} ms / {fmt_ms(t4)} ms = {t2 / t4:.2f}{how}" if t2 and t4 else "",
            )
            add(
                f"{sh} M=1 {d} cold: 3-bit time between the 2-bit and 4-bit times",
                None if None in (t2, t3, t4) else t2 <= t3 <= t4,
                f"{fmt_ms(t2)} <= {fmt_ms(t3)} <= {fmt_ms(t4)} ms{how}",
            )
            add(
                f"{sh} M=1 {d} cold: ternary time <= the 2-bit time",
                None if t2 is None or tt is None else tt <= t2,
                f"ternary {fmt_ms(tt)} ms, 2-bit {fmt_ms(t2)} ms{how}",
            )

        # 4. M = 128 and 512: throughput at least that of the best alternative.
        for m in (128, 512):
            alt = ix.best(shape, "cold", m)
            for dt in ("float32", "bfloat16"):
                r = fus("4", dt, shape, m)
                have = r is not None and alt is not None
                add(
                    f"{sh} M={m} 4-bit {DTYPE_SHORT[dt]} cold: throughput >= the best "
                    "alternative's",
                    r.t <= alt.t if have else None,
                    f"{r.gflops:.0f} vs {label(alt.variant)} {alt.gflops:.0f} GFLOP/s "
                    f"({fmt_ms(r.t)} vs {fmt_ms(alt.t)} ms)"
                    if have
                    else "",
                )

    # 5. Packed bytes (codes + scales) <= bits/32 + 2% of the fp32 bytes.
    seen = set()
    for r in ix.rows:
        if r.op != "fusenas" or (r.bits, r.shape) in seen:
            continue
        seen.add((r.bits, r.shape))
        nb = 2 if r.bits == "ternary" else int(r.bits)
        frac = r.weight_bytes / r.fp32_weight_bytes
        name = "ternary" if r.bits == "ternary" else f"{r.bits}-bit"
        add(
            f"{r.k}x{r.n} {name}: packed bytes <= bits/32 + 2% of fp32 ({nb / 32 + 0.02:.2%})",
            frac <= nb / 32 + 0.02,
            f"{frac:.2%} ({r.weight_bytes} bytes)",
        )
    return out


# --------------------------------------------------------------------------- report


def write_markdown(ix: Index, data: dict, dram: dict, stat: str, png: Path, md: Path) -> str:
    dram_gbps = float(dram.get("gbps", 0.0))
    mi = data.get("machine_info", {})
    commit = data.get("commit_info") or {}
    cpu = mi.get("cpu", {}).get("brand_raw", mi.get("processor", "?"))
    ex0 = next((b["extra_info"] for b in data["benchmarks"] if "M" in b["extra_info"]), {})
    bnb = next((r.detail.split("bitsandbytes ")[-1] for r in ix.rows if r.op == "bnb_nf4"), None)
    full = ex0.get("grid") == "full"
    json_name = "kbit.json"
    cmd = (
        f"{'FUSENAS_BENCH_FULL=1 ' if full else ''}python -m pytest benchmarks/bench_kbit.py "
        f"--benchmark-only --benchmark-json={json_name} && python benchmarks/report.py {json_name}"
    )
    disturbed = [r for r in ix.rows if r.disturbed]
    near = sorted(r.dram_near for r in ix.rows if r.dram_near)
    near_txt = (
        f" Next to each memory-bound case (cold, M <= 8) it was measured again (best of 3 reads "
        f"of 512 MiB before and after): {near[0]:.0f} to {near[-1]:.0f} GB/s, median "
        f"{near[len(near) // 2]:.0f}; the fractions below use that nearby figure, since on a "
        "VM the host's memory bandwidth drifts over minutes."
        if near
        else ""
    )
    L: list[str] = [
        "# k-bit matmul benchmarks",
        "",
        f"Reproduce: `{cmd}`",
        "",
        f"- Machine: {cpu}, {mi.get('cpu', {}).get('count', '?')} CPUs, "
        f"L3 {int(ex0.get('l3_bytes', 0)) >> 20} MiB; {ex0.get('threads', '?')} threads; "
        f"torch {ex0.get('torch_version', '?')}; "
        f"bitsandbytes {bnb or NO_BNB}; "
        f"fusenas CPU path {ex0.get('fusenas_isa', '?')}; run {data.get('datetime', '?')[:19]}.",
        f"- Code: commit {commit.get('id', '?')[:10]}{' (dirty)' if commit.get('dirty') else ''}; "
        f"fusenas._C built {ex0.get('fusenas_ext_built', '?')}."
        + (
            f" fusenas weights (CPU): {ex0['fusenas_weight_memory']}."
            if "fusenas_weight_memory" in ex0
            else ""
        ),
        f"- DRAM read bandwidth measured in the same run: **{dram_gbps:.1f} GB/s** "
        f"({dram.get('method', 'torch.sum over a 1 GiB buffer')}, "
        f"{dram.get('threads', 2)} threads).{near_txt}",
        f"- Times are the {stat} of each case's rounds. *cold*: weights streamed from DRAM (a ring "
        "of copies many times the L3, one call per round on the next copy); *warm*: the same "
        "copy every call (cache-resident where it fits in the L3).",
        f"- Grid: {'full' if full else 'quick subset (FUSENAS_BENCH_FULL=1 for the full grid)'}. "
        "Each op's output was checked against a float reference of the weight it stores "
        f"(largest relative error: {max(r.rel_err for r in ix.rows):.1e}).",
        "- fusenas: group 128, symmetric, scales float32. torch int4pack: group 128, "
        "scale + zero in the input dtype. torch int8pack: per-channel scales. bitsandbytes: "
        "nf4, CPU-packed layout (Linear4bit eval mode; its fused gemv_4bit path verified), "
        "computes in bf16.",
    ]
    if ix.widths:
        L.append(
            "- The M = 1 bit-width targets (marked *interleaved*) use a case that alternates "
            "2-, 3-, 4-bit and ternary over their cold rings (a batch of calls each, in turn, "
            "for every round), so the widths are timed in the same minutes; the separate "
            "cases in the tables below ran minutes apart."
        )
    if ix.alternatives:
        L.append(
            "- The M = 1 4-bit targets against torch int4pack and bitsandbytes, the DRAM "
            "fraction and float32 against bfloat16 input (marked *interleaved*) use a case "
            "that alternates fusenas, int4pack and bitsandbytes over their cold rings with "
            "one 512 MiB DRAM read per round (the fraction is against the median of those "
            "reads); see the section *M = 1 4-bit, alternatives interleaved*."
        )
    if float(dram.get("foreign_load") or 0.0) > LOAD_FLAG:
        L.append(
            f"- Other processes took {float(dram['foreign_load']):.0%} of the CPUs while the "
            "DRAM bandwidth was measured: it is likely underestimated."
        )
    if disturbed:
        L.append(
            f"- {len(disturbed)} of {len(ix.rows)} cases ran while other processes took more "
            f"than {LOAD_FLAG:.0%} of the CPUs; they are marked `*`."
        )
    L += ["", f"![k-bit matmul benchmarks]({png.name})", ""]

    # Targets.
    L += ["## Targets (issue 2, section 5)", ""]
    targets = evaluate_targets(ix, dram_gbps)
    n_met = sum(1 for t in targets if t[2] == "met")
    n_not = sum(1 for t in targets if t[2] == "NOT met")
    L += [f"{n_met} met, {n_not} not met, {len(targets) - n_met - n_not} without data.", ""]
    L += md_table(["target", "measured", "status"], [[a, b, f"**{c}**"] for a, b, c in targets])

    if ix.alternatives:
        L += [
            "## M = 1 4-bit, alternatives interleaved",
            "",
            "Cold weights; every entry timed in the same rounds (16 calls each per round, "
            "30 rounds). *read*: a torch.sum over as many bytes as the fusenas weight, from "
            "a cold ring of copies: what a read of that size gets, call overhead included. "
            "DRAM: the median of the rounds' 512 MiB reads.",
            "",
        ]
        for shape, inter in sorted(ix.alternatives.items(), key=lambda kv: kv[0] != (4096, 4096)):
            body = []
            for key in sorted(
                inter.t, key=lambda k: (k == "read", k.split("-")[0] != "fusenas", k)
            ):
                name = "torch.sum (read)" if key == "read" else alt_label(key)
                body.append(
                    [
                        name,
                        fmt_ms(inter.t[key]),
                        f"{inter.gbps(key):.1f}",
                        f"{inter.gbps(key) / inter.dram_gbps:.0%}",
                    ]
                )
            L += [f"### {shape[0]}x{shape[1]} (DRAM {inter.dram_gbps:.1f} GB/s)", ""]
            L += md_table(["op", "ms", "GB/s", "of DRAM"], body)

    def cell_t(r: Row | None) -> str:
        return "-" if r is None else fmt_ms(r.t) + ("*" if r.disturbed else "")

    # Ratios.
    L += [
        "## fusenas 4-bit / alternative (time ratio; < 1: fusenas faster)",
        "",
        "Each cell: fusenas 4-bit with float32 input / with bfloat16 input, each divided by "
        "the alternative's time.",
        "",
    ]
    alts = [v for v in ix.variants if v[0] != "fusenas"]
    for shape in ix.shapes:
        for mode in ix.modes:
            ms = ix.ms(shape, mode)
            f32 = {m: ix.get(("fusenas", "4", "float32"), shape, mode, m) for m in ms}
            f16 = {m: ix.get(("fusenas", "4", "bfloat16"), shape, mode, m) for m in ms}
            if not any(f32.values()) and not any(f16.values()):
                continue
            body = []
            for v in alts + ["best"]:
                cells = []
                for m in ms:
                    a = ix.best(shape, mode, m) if v == "best" else ix.get(v, shape, mode, m)
                    if a is None:
                        cells.append("-")
                        continue
                    r1 = f32[m].t / a.t if f32[m] else None
                    r2 = f16[m].t / a.t if f16[m] else None
                    extra = f" ({label(a.variant)})" if v == "best" else ""
                    cells.append(f"{fmt_ratio(r1)} / {fmt_ratio(r2)}{extra}")
                body.append(["**best alternative**" if v == "best" else label(v), *cells])
            L += [f"### {shape[0]}x{shape[1]}, {mode}", ""]
            L += md_table(["vs", *[f"M={m}" for m in ms]], body)

    # Times.
    L += ["## Time per call (ms)", ""]
    for shape in ix.shapes:
        for mode in ix.modes:
            ms = ix.ms(shape, mode)
            if not ms:
                continue
            body = []
            for v in ix.variants:
                cells = [cell_t(ix.get(v, shape, mode, m)) for m in ms]
                if any(c != "-" for c in cells):
                    body.append([label(v), *cells])
            L += [f"### {shape[0]}x{shape[1]}, {mode}", ""]
            L += md_table(["op", *[f"M={m}" for m in ms]], body)

    # Bandwidth at M = 1.
    L += [
        "## M = 1: GB/s of weight bytes",
        "",
        "Fraction of the DRAM read bandwidth measured next to the case (cold rows) or at the "
        f"start of the run ({dram_gbps:.1f} GB/s; warm rows, which can exceed 100% when the "
        "weights fit in the L3).",
        "",
    ]
    for shape in ix.shapes:
        for mode in ix.modes:
            body = []
            for v in ix.variants:
                r = ix.get(v, shape, mode, 1)
                if r is None:
                    continue
                bw = r.dram(dram_gbps)
                body.append([
                    label(v), cell_t(r), f"{r.weight_bytes / 2**20:.2f}", f"{r.gbps:.1f}",
                    f"{bw:.0f}" if bw else "-", f"{r.gbps / bw:.0%}" if bw else "-",
                ])  # fmt: skip
            if body:
                L += [f"### {shape[0]}x{shape[1]}, {mode}", ""]
                L += md_table(["op", "ms", "weight MiB", "GB/s", "DRAM GB/s", "of DRAM"], body)

    # GFLOP/s at M >= 128.
    if any(r.m >= 128 for r in ix.rows):
        L += ["## M >= 128: GFLOP/s", ""]
    for shape in ix.shapes:
        for mode in ix.modes:
            ms = [m for m in ix.ms(shape, mode) if m >= 128]
            body = []
            for v in ix.variants:
                rs = [ix.get(v, shape, mode, m) for m in ms]
                if any(rs):
                    body.append(
                        [label(v), *[("-" if r is None else f"{r.gflops:.0f}") for r in rs]]
                    )
            if body:
                L += [f"### {shape[0]}x{shape[1]}, {mode}", ""]
                L += md_table(["op", *[f"M={m}" for m in ms]], body)

    text = "\n".join(L).rstrip() + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(md, text)
    return text


def write_plot(ix: Index, dram: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = ix.shapes[0]
    dram_gbps = float(dram.get("gbps", 0.0))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))

    ax = axes[0]
    for v in ix.variants:
        if v[0] == "fusenas" and v[1] != "4":
            continue
        pts = [(r.m, r.t * 1e3) for m in ix.ms(shape, "cold") if (r := ix.get(v, shape, "cold", m))]
        if len(pts) >= 2:
            style = "-o" if v[0] == "fusenas" else "--."
            ax.plot(
                *zip(*pts, strict=True), style, label=label(v), lw=2 if v[0] == "fusenas" else 1
            )
    ax.set(xscale="log", yscale="log", xlabel="M", ylabel="ms per call (log)")
    ax.set_title(f"{shape[0]}x{shape[1]}, weights cold: time vs M")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "fewer than 2 values of M in this run", ha="center",
                transform=ax.transAxes)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    rows = [r for v in ix.variants if (r := ix.get(v, shape, "cold", 1))]
    rows = [r for r in rows if r.op != "fusenas" or r.bits == "4"]
    ax.barh(
        [label(r.variant) for r in rows],
        [r.gbps for r in rows],
        color=["tab:blue" if r.op == "fusenas" else "tab:gray" for r in rows],
    )
    if dram_gbps:
        ax.axvline(dram_gbps, color="tab:red", label=f"DRAM read {dram_gbps:.1f} GB/s")
        ax.axvline(0.8 * dram_gbps, color="tab:red", ls="--", label="80% of DRAM")
        ax.legend(fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="GB/s of weight bytes")
    ax.set_title(f"{shape[0]}x{shape[1]}, M=1, cold: weight bandwidth")
    ax.tick_params(axis="y", labelsize=7)

    ax = axes[2]
    bits = [b for b in FUSENAS_BITS_ORDER if any(r.bits == b for r in ix.rows if r.op == "fusenas")]
    bits = sorted(bits, key=lambda b: (2.0 if b == "ternary" else float(b), b == "ternary"))
    width = 0.4
    for i, dt in enumerate(("float32", "bfloat16")):
        vals = [ix.get(("fusenas", b, dt), shape, "cold", 1) for b in bits]
        ax.bar(
            [j + (i - 0.5) * width for j in range(len(bits))],
            [r.t * 1e3 if r else 0 for r in vals],
            width,
            label=f"{DTYPE_SHORT[dt]} input",
        )
    ax.set_xticks(range(len(bits)), [b if b == "ternary" else f"{b}-bit" for b in bits])
    ax.set(ylabel="ms per call")
    ax.set_title(f"fusenas {shape[0]}x{shape[1]}, M=1, cold: bit width")
    ax.legend(fontsize=7)

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, png, dpi=110)
    plt.close(fig)


def load_json(path: Path) -> dict:
    """A pytest-benchmark JSON file, plain or gzipped (.gz: how docs/benchmarks keeps them)."""
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "json", type=Path, help="pytest-benchmark JSON (--benchmark-json), or it gzipped (.json.gz)"
    )
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks" / "kbit.md")
    p.add_argument("--out-png", type=Path, default=ROOT / "docs" / "benchmarks" / "kbit.png")
    p.add_argument("--stat", choices=("median", "min", "mean"), default="median")
    args = p.parse_args()
    data = load_json(args.json)
    rows, dram = load_rows(data, args.stat)
    if not rows:
        raise SystemExit(f"{args.json}: no bench_kbit.py results in this file")
    ix = Index(
        rows,
        load_interleaved_widths(data, args.stat),
        load_interleaved_alternatives(data, args.stat),
    )
    write_plot(ix, dram, args.out_png)
    write_markdown(ix, data, dram, args.stat, args.out_png, args.out_md)
    counts = defaultdict(int)
    for _, _, s in evaluate_targets(ix, float(dram.get("gbps", 0.0))):
        counts[s] += 1
    print(f"wrote {args.out_md} and {args.out_png}: targets {dict(counts)}")


if __name__ == "__main__":
    main()

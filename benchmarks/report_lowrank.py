"""docs/benchmarks/lowrank.md (+ lowrank.png) from the JSON of benchmarks/bench_lowrank.py.

    python benchmarks/report_lowrank.py lowrank.json [--also lowrank_1t.json] [--stat min|median]
        [--notes notes.md] [--out docs/benchmarks]

Per case: fusenas lowrank_conv2d against the faster layout of the two-conv sequence
(eager), torch.compile of it, and the faster layout of the dense conv; the issue's targets
are evaluated on the median over the shape set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

from fusenas._atomic import save_figure_atomic, write_text_atomic

CaseKey = tuple[str, str, int]  # shape, scheme, reduction


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def index(results: list[dict], stat: str) -> dict[CaseKey, dict]:
    """case -> {(variant, layout, mode): (ms, peak_mb)} plus rank and MACs."""
    cases: dict[CaseKey, dict] = defaultdict(dict)
    for r in results:
        key = (r["shape"], r["scheme"], r["reduction"])
        ms = r["min_ms"] if stat == "min" else r["median_ms"]
        cases[key][(r["variant"], r["layout"], r["mode"])] = (ms, r["peak_mb"])
        cases[key]["rank"] = r["rank"]
        if r["variant"] != "dense":
            cases[key]["macs"] = r["macs"]
        cases[key]["dense_macs"] = r["dense_macs"]
    return cases


def best(case: dict, variant: str, mode: str) -> tuple[float, str] | None:
    """(ms, layout) of the faster layout of a variant."""
    got = [
        (case[(variant, layout, mode)][0], layout)
        for layout in ("nchw", "channels_last")
        if (variant, layout, mode) in case
    ]
    return min(got) if got else None


def memory_method(meta: dict) -> str:
    """The report's line on how peak memory was measured (the run's meta says which)."""
    if meta.get("memory") == "heap":
        return (
            "- Peak memory: growth of live heap bytes during one call, every malloc in the "
            "process counted (torch's tensors, oneDNN's scratchpad, fusenas' kernel buffers "
            "alike; the inputs excluded, output and gradients included), through the "
            "LD_PRELOAD shim of `benchmarks/heap_peak.py`; each variant's peak is that of its "
            "faster layout."
        )
    return (
        "- Peak memory: peak bytes held by torch's CPU allocator during one call "
        "(profiler memory events; the inputs excluded, output and gradients included) plus, "
        "for fusenas, the kernel's own buffers (`workspace_bytes`: tile buffers, packed "
        "weights, per-thread gradient accumulators). This misses oneDNN's scratchpad, and "
        "the profiler can count a free twice (runs before the heap shim); each variant's "
        "peak is that of its faster layout."
    )


def peak(case: dict, variant: str, mode: str) -> float | None:
    """Peak (MiB) of the variant's faster layout: the run the time columns compare."""
    got = [
        case[(variant, layout, mode)]
        for layout in ("nchw", "channels_last")
        if (variant, layout, mode) in case
    ]
    return min(got)[1] if got else None


def derive(cases: dict[CaseKey, dict], peak_gflops: float | None = None) -> list[dict]:
    """Per case: times, speed-ups, realised MAC reduction, peak memory, and (given the
    run's peak float32 throughput) the largest speed-up over the two convs any kernel could
    reach: two-conv time / (low-rank FLOPs at that throughput)."""
    rows = []
    for key, case in cases.items():
        row = {"shape": key[0], "scheme": key[1], "reduction": key[2], "rank": case["rank"]}
        for mode in ("fwd", "fwdbwd"):
            fus, two = best(case, "fusenas", mode), best(case, "two_conv", mode)
            comp, dense = best(case, "two_conv_compile", mode), best(case, "dense", mode)
            row[f"{mode}_fus"] = fus
            row[f"{mode}_two"] = two
            row[f"{mode}_comp"] = comp
            row[f"{mode}_dense"] = dense
            row[f"{mode}_vs_two"] = two[0] / fus[0] if fus and two else None
            row[f"{mode}_vs_comp"] = comp[0] / fus[0] if fus and comp else None
            mac_ratio = case["dense_macs"] / case["macs"]
            row["mac_ratio"] = mac_ratio
            row[f"{mode}_realised"] = (dense[0] / fus[0]) / mac_ratio if fus and dense else None
            row[f"{mode}_realised_two"] = (dense[0] / two[0]) / mac_ratio if two and dense else None
            row[f"{mode}_peak_fus"] = peak(case, "fusenas", mode)
            row[f"{mode}_peak_two"] = peak(case, "two_conv", mode)
        at_peak_ms = 2 * case["macs"] / (peak_gflops * 1e9) * 1e3 if peak_gflops else None
        two = row["fwd_two"]
        row["fwd_bound_vs_two"] = two[0] / at_peak_ms if two and at_peak_ms else None
        # Forward + backward: the gradients of the input and of each factor take the
        # forward's multiply-adds each, so 3x the forward's FLOPs.
        two = row["fwdbwd_two"]
        row["fwdbwd_bound_vs_two"] = two[0] / (3 * at_peak_ms) if two and at_peak_ms else None
        rows.append(row)
    return rows


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _t(v: tuple[float, str] | None) -> str:
    if v is None:
        return "-"
    return f"{v[0]:.2f} ({'CL' if v[1] == 'channels_last' else 'NCHW'})"


def contended(meta: dict) -> str | None:
    """Why wall-time verdicts of this run cannot be trusted (None when they can): more
    runnable work than cores (the load average counts the run's own threads too)."""
    if meta.get("clock") == "process CPU time":
        return None
    cores = meta.get("cpu_count", 2)
    load = max(meta["loadavg_before"][0], meta["loadavg_after"][0])
    if load > cores + 0.5:
        return f"load {load:.1f} on {cores} cores"
    return None


def targets(rows: list[dict], unreliable: str | None = None) -> list[list[str]]:
    fwd = _med([r["fwd_vs_two"] for r in rows])
    bound = _med([r.get("fwd_bound_vs_two") for r in rows])
    real = _med([r["fwd_realised"] for r in rows])
    fb = _med([r["fwdbwd_vs_two"] for r in rows])
    fb_bounds = [r.get("fwdbwd_bound_vs_two") for r in rows]
    fb_bound = _med(fb_bounds)
    fb_capped = sum(1 for b in fb_bounds if b is not None and b < 1.2)
    mem_ok = sum(
        1
        for r in rows
        if r["fwdbwd_peak_fus"] is not None and r["fwdbwd_peak_fus"] <= r["fwdbwd_peak_two"]
    )
    mem_fwd_ok = sum(
        1 for r in rows if r["fwd_peak_fus"] is not None and r["fwd_peak_fus"] <= r["fwd_peak_two"]
    )

    def verdict(v, goal):
        if v is None:
            return "-"
        word = "met" if v >= goal else "NOT met"
        return f"{word} here, but not trustworthy ({unreliable})" if unreliable else word

    n = len(rows)
    return [
        ["forward >= 1.5x faster than the faster two-conv layout (median)", _f(fwd) + "x",
         verdict(fwd, 1.5)],
        ["(ceiling: two-conv time / low-rank FLOPs at the run's peak throughput, median; "
         "direct multiply-adds, which Winograd passes)",
         _f(bound) + "x", "reachable" if bound and bound >= 1.5 else "above the direct ceiling"
         if bound else "-"],
        ["forward realises >= 70% of the MAC reduction vs the faster dense layout (median)",
         _f(real and 100 * real, ".0f") + "%", verdict(real, 0.7)],
        ["forward+backward >= 1.2x faster than the faster two-conv layout (median)",
         _f(fb) + "x", verdict(fb, 1.2)],
        ["(ceiling: two-conv time / 3x the low-rank FLOPs at the run's peak throughput, "
         "median; cases whose ceiling is under 1.2x)",
         f"{_f(fb_bound)}x; {fb_capped}/{n}", "reachable" if fb_bound and fb_bound >= 1.2
         else "above the ceiling" if fb_bound else "-"],
        ["peak memory <= two-conv sequence, forward+backward (cases)", f"{mem_ok}/{n}",
         "met" if mem_ok == n else "NOT met"],
        ["peak memory <= two-conv sequence, forward (cases)", f"{mem_fwd_ok}/{n}",
         "met" if mem_fwd_ok == n else "NOT met"],
    ]  # fmt: skip


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return out


def write_plot(rows: list[dict], png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [f"{r['shape'].split(' N=')[0]} {r['scheme'][0]} {r['reduction']}x" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(rows)), 4.5))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], [r["fwd_vs_two"] or 0 for r in rows], w, label="forward")
    ax.bar([x + w / 2 for x in xs], [r["fwdbwd_vs_two"] or 0 for r in rows], w,
           label="forward+backward")  # fmt: skip
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.5, color="tab:blue", lw=0.8, ls="--", label="forward target 1.5x")
    ax.axhline(1.2, color="tab:orange", lw=0.8, ls="--", label="fwd+bwd target 1.2x")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("speed-up vs faster two-conv layout")
    ax.set_title("fusenas.lowrank_conv2d vs two torch convs (2 threads, float32)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, png, dpi=110)
    plt.close(fig)
    return True


def write_markdown(
    data: dict,
    rows: list[dict],
    stat: str,
    md: Path,
    png: Path | None,
    extras: list[dict],
    notes: str = "",
) -> None:
    meta = data["meta"]
    grid = "full grid" if meta["full"] else "quick grid (FUSENAS_BENCH_FULL=1 for the full grid)"

    def load(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    lines = [
        "# Fused low-rank conv (CPU): benchmarks",
        "",
        "`fusenas.ops.lowrank_conv2d` against the same two factors run as two torch convs "
        "(oneDNN; eager and torch.compile) and against the dense 3x3 conv they replace. "
        f"float32, {meta['threads']} threads ({meta.get('clock', 'wall time')}), measured side "
        "by side in one run.",
        "",
        f"- Run: {meta['date']}, fusenas {meta['fusenas']} (commit {_commit()} of the report; "
        + (
            f"kernels: {meta['kernels']}), "
            if meta.get("kernels")
            else "see git log for the benchmarked tree), "
        )
        + f"torch {meta['torch']}, "
        f"{meta['build_info'].get('lowrank_isa', '?')} kernels, "
        f"{grid}, {meta['seconds']:.0f} s.",
        f"- Load average before / after the run: {load(meta['loadavg_before'])} / "
        f"{load(meta['loadavg_after'])} on a 2-core VM shared with "
        "other jobs: single timings are noisy, so the tables use the "
        f"**{stat}** over each case's calls (about {meta['budget_s']} s of calls per cell).",
        "- Commands: `flock /tmp/fusenas_bench.lock python benchmarks/bench_lowrank.py "
        "--json docs/benchmarks/lowrank.json` (raw results, kept next to this page) then "
        "`python benchmarks/report_lowrank.py docs/benchmarks/lowrank.json --notes "
        "docs/benchmarks/lowrank_notes.md` (plus `--also <more runs' json>` for the last "
        "sections).",
        memory_method(meta),
        "- Realised = (dense time / low-rank time) / (dense MACs / low-rank MACs), against the "
        "faster dense layout.",
        "- Ceiling vs two = the faster two-conv time / the time the low-rank FLOPs take at the "
        "best float32 throughput oneDNN reaches in the same run "
        f"({_f(meta.get('peak_gflops'), '.0f')} GFLOP/s, a dense 256 -> 256 3x3 conv): no "
        "kernel that does the low-rank multiply-adds one by one beats the two convs by more "
        "than that. The Winograd forms of the channels_last path (F(4, 3) for 3-tap "
        "factors since session 19, F(4 x 4, 3 x 3) for the channel scheme's 3 x 3 factor "
        "since session 21) do fewer multiply-adds and can pass it; the realised fraction "
        "can pass 100% for the same reason. Forward + backward: 3x the forward's "
        "FLOPs (the gradients of the input and of both factors take the forward's "
        "multiply-adds each).",
        "",
        "## Targets (issue 3)",
        "",
    ]
    lines += md_table(["target", "measured", "verdict"], targets(rows, contended(meta)))
    if contended(meta):
        lines += ["", "Time verdicts of this run are not trustworthy: see the 1-thread "
                  "process-CPU-time section and \"Reading the numbers\" below."]  # fmt: skip
    lines += ["", "## Forward (ms; layout of the faster run in brackets)", ""]
    body = []
    for r in rows:
        body.append([
            r["shape"], r["scheme"], f"{r['reduction']}x", str(r["rank"]), _t(r["fwd_fus"]),
            _t(r["fwd_two"]), _f(r["fwd_comp"] and r["fwd_comp"][0]), _t(r["fwd_dense"]),
            _f(r["fwd_vs_two"]) + "x", _f(r["fwd_vs_comp"]) + "x",
            _f(r["fwd_realised"] and 100 * r["fwd_realised"], ".0f") + "%",
            _f(r["fwd_realised_two"] and 100 * r["fwd_realised_two"], ".0f") + "%",
            _f(r.get("fwd_bound_vs_two")) + "x",
            f"{_f(r['fwd_peak_fus'], '.1f')} / {_f(r['fwd_peak_two'], '.1f')}",
        ])  # fmt: skip
    lines += md_table(
        ["shape", "scheme", "MAC cut", "rank", "fusenas", "two convs", "compiled (CL)",
         "dense", "vs two", "vs compiled", "realised", "realised (two convs)",
         "ceiling vs two", "peak MiB fusenas / two"],
        body,
    )  # fmt: skip
    lines += ["", "## Forward + backward (ms)", ""]
    body = []
    for r in rows:
        body.append([
            r["shape"], r["scheme"], f"{r['reduction']}x", str(r["rank"]), _t(r["fwdbwd_fus"]),
            _t(r["fwdbwd_two"]), _f(r["fwdbwd_comp"] and r["fwdbwd_comp"][0]),
            _t(r["fwdbwd_dense"]), _f(r["fwdbwd_vs_two"]) + "x", _f(r["fwdbwd_vs_comp"]) + "x",
            _f(r.get("fwdbwd_bound_vs_two")) + "x",
            f"{_f(r['fwdbwd_peak_fus'], '.1f')} / {_f(r['fwdbwd_peak_two'], '.1f')}",
        ])  # fmt: skip
    lines += md_table(
        ["shape", "scheme", "MAC cut", "rank", "fusenas", "two convs", "compiled (CL)",
         "dense", "vs two", "vs compiled", "ceiling vs two", "peak MiB fusenas / two"],
        body,
    )  # fmt: skip
    if png is not None:
        lines += ["", f"![speed-ups]({png.name})"]
    for extra in extras:
        lines += ["", *summary_section(extra, stat)]
    write_text_atomic(md, "\n".join(lines) + "\n" + notes)


def summary_section(data: dict, stat: str) -> list[str]:
    """Targets and speed-ups of a second run (e.g. 1 thread, CPU time)."""
    meta = data["meta"]
    rows = derive(index(data["results"], stat), data["meta"].get("peak_gflops"))
    clock = meta.get("clock", "wall time")
    isa = meta.get("build_info", {}).get("lowrank_isa", "?")
    lines = [
        f"## Same grid, {meta['threads']} thread(s), {clock}, {isa} kernels on "
        f"{meta.get('cpu', '?')} ({meta['date']}, {meta['seconds']:.0f} s)",
        "",
    ]
    if meta.get("kernels"):  # runs of an older build, kept for a same-hour comparison
        lines += [f"Kernels: {meta['kernels']}.", ""]
    if clock != "wall time":
        lines += [
            "Process CPU time does not count the time other jobs hold the core, so these "
            "ratios are the less noisy ones on a shared machine (but one thread is not the "
            "issue's setting).",
            "",
        ]
    lines += [memory_method(meta), ""]
    lines += md_table(["target", "measured", "verdict"], targets(rows))
    lines += [""]
    body = [
        [r["shape"], r["scheme"], f"{r['reduction']}x", str(r["rank"]), _t(r["fwd_fus"]),
         _t(r["fwd_two"]), _f(r["fwd_vs_two"]) + "x",
         _f(r["fwd_realised"] and 100 * r["fwd_realised"], ".0f") + "%",
         _t(r["fwdbwd_fus"]), _t(r["fwdbwd_two"]), _f(r["fwdbwd_vs_two"]) + "x",
         f"{_f(r['fwd_peak_fus'], '.1f')} / {_f(r['fwd_peak_two'], '.1f')}",
         f"{_f(r['fwdbwd_peak_fus'], '.1f')} / {_f(r['fwdbwd_peak_two'], '.1f')}"]
        for r in rows
    ]  # fmt: skip
    lines += md_table(
        ["shape", "scheme", "MAC cut", "rank", "fwd fusenas", "fwd two convs", "fwd vs two",
         "realised", "fwd+bwd fusenas", "fwd+bwd two convs", "fwd+bwd vs two",
         "fwd peak MiB fusenas / two", "fwd+bwd peak MiB fusenas / two"],
        body,
    )  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--stat", choices=("min", "median"), default="min")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--notes", default="", help="markdown file appended to the report")
    ap.add_argument("--also", nargs="*", default=[], help="more runs (JSON) summarised below")
    args = ap.parse_args()
    data = json.loads(Path(args.json).read_text())
    rows = derive(index(data["results"], args.stat), data["meta"].get("peak_gflops"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "lowrank.png"
    md = out / "lowrank.md"
    extras = [json.loads(Path(p).read_text()) for p in args.also]
    notes = "\n" + Path(args.notes).read_text() if args.notes else ""
    write_markdown(data, rows, args.stat, md, png if write_plot(rows, png) else None, extras,
                   notes)  # fmt: skip
    print(f"wrote {md}")


if __name__ == "__main__":
    main()

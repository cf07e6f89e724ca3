"""Markdown tables of the GPU benchmarks (pytest-benchmark JSON of bench_kbit_cuda.py
and bench_lowrank_cuda.py, and the JSON of kbit_cuda_device_time.py).

    python benchmarks/report_cuda.py --kbit docs/benchmarks/kbit_cuda_h100.json \
        --kbit-before docs/benchmarks/kbit_cuda_h100_before.json \
        --device-time docs/benchmarks/kbit_cuda_device_time_h100.json \
        --lowrank docs/benchmarks/lowrank_cuda_h100.json \
        --notes docs/benchmarks/cuda_notes.md --out docs/benchmarks/cuda.md

Every input is optional; each present one becomes a section. Times are medians.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from fusenas._atomic import write_text_atomic


def _load_benchmarks(path: Path) -> tuple[dict, list[dict]]:
    data = json.loads(path.read_text())
    return data.get("machine_info", {}), data["benchmarks"]


def _kbit_medians(path: Path) -> dict[tuple[int, int, int], dict[str, float]]:
    """(M, K, N) -> variant -> median us."""
    _, benchmarks = _load_benchmarks(path)
    out: dict = collections.defaultdict(dict)
    for b in benchmarks:
        e = b["extra_info"]
        out[(e["m"], e["k"], e["n"])][e["variant"]] = b["stats"]["median"] * 1e6
    return out


def kbit_section(path: Path, before: Path | None) -> str:
    now = _kbit_medians(path)
    old = _kbit_medians(before) if before else {}
    variants = list(next(iter(now.values())))
    lines = [
        "## k-bit matmul, one synchronised call (bench_kbit_cuda.py)",
        "",
        f"Source: `{path}`" + (f"; 'before' column: `{before}`." if before else "."),
        "Median us of one call + torch.cuda.synchronize() (host time included); ratio =",
        "F.linear fp16 / fusenas 4-bit fp16.",
        "",
        "| M | K x N | " + " | ".join(variants) + " | ratio |"
        + (" fusenas 4-bit fp16 before | ratio before |" if old else ""),
        "| ---: | --- |" + " ---: |" * (len(variants) + 1) + (" ---: | ---: |" if old else ""),
    ]  # fmt: skip
    four = "fusenas 4-bit g128 fp16"
    for (m, k, n), v in sorted(now.items()):
        cells = " | ".join(f"{v[name]:.0f}" for name in variants)
        row = f"| {m} | {k} x {n} | {cells} | {v['F.linear fp16'] / v[four]:.2f}x |"
        if old:
            o = old[(m, k, n)]
            row += f" {o[four]:.0f} | {o['F.linear fp16'] / o[four]:.2f}x |"
        lines.append(row)
    return "\n".join(lines)


def device_time_section(path: Path) -> str:
    data = json.loads(path.read_text())
    rows, meta = data["rows"], data["meta"]
    by = {(r["k"], r["n"], r["m"], r["variant"]): r for r in rows}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    shapes = list(dict.fromkeys((r["k"], r["n"]) for r in rows))
    ms = sorted({r["m"] for r in rows})
    lines = [
        "## k-bit matmul, GPU time with cold weights (kbit_cuda_device_time.py)",
        "",
        f"Source: `{path}` ({meta['device']}, torch {meta['torch']}). CUDA events around",
        f"{meta['calls']} back-to-back calls over weight copies of more than the L2 in all,",
        f"median of {meta['repeats']}; float16 x. Cells: us per call, and F.linear's time",
        "over this one. Small calls are bound by the host's issue rate, not the GPU.",
        "",
        "| K x N | M | " + " | ".join(names) + " |",
        "| --- | ---: |" + " ---: |" * len(names),
    ]
    for k, n in shapes:
        for m in ms:
            base = by[(k, n, m, names[0])]["us"]
            cells = []
            for name in names:
                us = by[(k, n, m, name)]["us"]
                cells.append(f"{us:.0f} ({base / us:.2f}x)")
            lines.append(f"| {k} x {n} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lowrank_section(path: Path) -> str:
    _, benchmarks = _load_benchmarks(path)
    groups: dict = collections.defaultdict(dict)
    for b in benchmarks:
        e = b["extra_info"]
        key = (e["shape"], e["scheme"], e["reduction"], e["pass_"])
        groups[key][(e["variant"], e["channels_last"])] = (
            b["stats"]["median"] * 1e6, e["peak_bytes"], e["macs"]
        )  # fmt: skip
    lines = [
        "## Low-rank conv, fused CUDA kernels vs cuDNN (bench_lowrank_cuda.py)",
        "",
        f"Source: `{path}`. Median us of one call (+ backward) + synchronize; each column",
        "takes the faster of NCHW and channels_last. 'realised' = (dense / fused time) /",
        "(dense / low-rank MACs). Memory: fused peak / two-conv peak.",
        "",
        "| shape | scheme | MACs | pass | fused | two cuDNN convs | dense | two convs / fused |"
        " realised | memory |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    speed: dict = collections.defaultdict(list)
    for (shape, scheme, red, pass_), v in groups.items():
        best = {name: min(v[(name, cl)][0] for cl in (False, True) if (name, cl) in v)
                for name in ("fusenas", "two torch convs", "dense conv")}  # fmt: skip
        mem = min(v[("fusenas", cl)][1] for cl in (False, True)) / min(
            v[("two torch convs", cl)][1] for cl in (False, True)
        )
        macs_ratio = v[("dense conv", False)][2] / v[("fusenas", False)][2]
        ratio = best["two torch convs"] / best["fusenas"]
        realised = best["dense conv"] / best["fusenas"] / macs_ratio
        speed[pass_].append(ratio)
        lines.append(
            f"| {shape} | {scheme} | {red}x | {pass_} | {best['fusenas']:.0f} | "
            f"{best['two torch convs']:.0f} | {best['dense conv']:.0f} | {ratio:.2f}x | "
            f"{realised:.0%} | {mem:.2f} |"
        )
    lines.append("")
    for pass_, r in speed.items():
        lines.append(
            f"- {pass_}: two convs / fused median {statistics.median(r):.2f}x "
            f"(min {min(r):.2f}x, max {max(r):.2f}x, {len(r)} cases)"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kbit", type=Path)
    p.add_argument("--kbit-before", type=Path)
    p.add_argument("--device-time", type=Path)
    p.add_argument("--lowrank", type=Path)
    p.add_argument("--notes", type=Path, help="markdown put first (the narrative)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    parts = ["# GPU benchmarks", "", "Generated by `benchmarks/report_cuda.py`; notes first."]
    if a.notes:
        parts.append(a.notes.read_text().strip())
    if a.device_time:
        parts.append(device_time_section(a.device_time))
    if a.kbit:
        parts.append(kbit_section(a.kbit, a.kbit_before))
    if a.lowrank:
        parts.append(lowrank_section(a.lowrank))
    write_text_atomic(a.out, "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()

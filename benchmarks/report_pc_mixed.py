"""Markdown tables from bench_pc_mixed.py results (edge level).

    python benchmarks/report_pc_mixed.py RESULT.json [MORE.json ...] \
        --out docs/benchmarks/pc_mixed_op.md

Each JSON file becomes one section (its environment, a targets table for the
mixing part's forward + backward, and tables of the mixing part and the whole
edge). The file ends with the heading of the whole-supernet section, which the
supernet benchmark fills in.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from fusenas._atomic import write_text_atomic

IMPLS = ("eager", "compile", "fused")
TARGET_EAGER, TARGET_COMPILE = 3.0, 1.3


def _index(rows: list[dict], stat: str) -> tuple[list[str], dict]:
    configs: list[str] = []
    ix: dict = defaultdict(dict)
    for r in rows:
        if r["config"] not in configs:
            configs.append(r["config"])
        ix[(r["config"], r["part"], r["mode"])][r["impl"]] = r[f"ms_{stat}"]
    return configs, ix


def _ms(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in body]


def part_table(configs: list[str], ix: dict, part: str) -> list[str]:
    header = ["edge (N=64)"]
    for mode in ("fwd", "fwd+bwd"):
        header += [f"{mode} {impl} ms" for impl in IMPLS]
        header += [f"{mode} eager/fused", f"{mode} compile/fused"]
    body = []
    for cfg in configs:
        row = [cfg]
        for mode in ("fwd", "fwd+bwd"):
            t = ix.get((cfg, part, mode), {})
            row += [_ms(t.get(i)) for i in IMPLS]
            fused = t.get("fused")
            row += [_ratio(t.get("eager"), fused), _ratio(t.get("compile"), fused)]
        body.append(row)
    return _table(header, body)


def targets(configs: list[str], ix: dict) -> list[str]:
    lines = []
    for alt, target in (("eager", TARGET_EAGER), ("compile", TARGET_COMPILE)):
        ratios = []
        for cfg in configs:
            t = ix.get((cfg, "mixing", "fwd+bwd"), {})
            if t.get(alt) and t.get("fused"):
                ratios.append((t[alt] / t["fused"], cfg))
        if not ratios:
            continue
        met = sum(r >= target for r, _ in ratios)
        worst = min(ratios)
        lines.append(
            [
                f"mixing fwd+bwd vs {alt}",
                f">= {target}x",
                f"{worst[0]:.2f}x ({worst[1]})",
                f"{statistics.median(r for r, _ in ratios):.2f}x",
                f"{max(ratios)[0]:.2f}x",
                f"{met}/{len(ratios)}",
            ]
        )
    return _table(["target", "wanted", "worst", "median", "best", "configs met"], lines)


def memory_table(memory: list[dict]) -> list[str]:
    ix: dict = defaultdict(dict)
    configs: list[str] = []
    for m in memory:
        if m["config"] not in configs:
            configs.append(m["config"])
        ix[(m["config"], m["part"])][m["impl"]] = m["saved_bytes"] / 2**20
    body = []
    for cfg in configs:
        row = [cfg]
        for part in ("mixing", "edge"):
            e, f = ix[(cfg, part)].get("eager"), ix[(cfg, part)].get("fused")
            row += [_ms(e), _ms(f), "-" if not e or f is None else f"{f / e:.2f}"]
        body.append(row)
    header = ["edge (N=64)", "mixing eager MiB", "mixing fused MiB", "fused/eager",
              "edge eager MiB", "edge fused MiB", "fused/eager"]  # fmt: skip
    return _table(header, body)


def section(path: Path, title: str | None, stat: str) -> list[str]:
    data = json.loads(path.read_text())
    env, rows = data["environment"], data["results"]
    configs, ix = _index(rows, stat)
    fmt = "channels_last" if env.get("channels_last") else "NCHW"
    title = title or f"{env['grid']} grid, {fmt}, {env['threads']} threads, {env['clock']} clock"
    out = [f"## {title}", ""]
    out.append(
        f"fusenas {env['fusenas']} at {env['commit']}, torch {env['torch']}, Python "
        f"{env['python']}; {env['cpu']} ({env['cpu_count']} CPUs), {env['threads']} threads "
        f"(torch.set_num_threads), kernel path {env['isa']}; batch {env['batch']}; "
        f"{'best' if stat == 'min' else 'median'} of {env['rounds']} interleaved rounds "
        f"(ms per call), {env['clock']} clock; 1-minute load average "
        f"{env['load_before']:.2f} before and {env['load_after']:.2f} after the run "
        f"({env['seconds']} s). Source: `{path.name}`."
    )
    out += ["", "### Targets (mixing part, forward + backward)", ""]
    out += targets(configs, ix)
    out += ["", "### Mixing part (parametric outputs given)", ""]
    out += part_table(configs, ix, "mixing")
    out += ["", "### Whole edge (parametric candidates computed by torch modules)", ""]
    out += part_table(configs, ix, "edge")
    if data.get("saved_for_backward"):
        out += ["", "### Kept for backward (distinct storages, inputs included)", ""]
        out += memory_table(data["saved_for_backward"])
    return out + [""]


SUPERNET_INTRO = """\
`DartsSupernet(channels=16, layers=8, k=4)` with edge normalisation, one
first-order training step (forward, cross-entropy, backward for weights,
alphas and betas), every edge fused (`fused`) or in PC-DARTS' eager
formulation (`reference`, the same parameters and buffers), 2 threads, each
case in fresh processes that alternate between the variants; the step time is
the median of every timed step (a warm-up step first in each process). "Saved
activations" are the distinct storages autograd keeps (saved-tensor hooks);
"peak RSS growth" is the process' peak resident memory over its size before
the first step (median over the processes). Step times of one case vary by up
to a third between processes (every step of every process is in the JSON),
which is why each case runs in several."""


def supernet_section(path: Path) -> list[str]:
    """The whole-supernet table of bench_pc_supernet.py's JSON, with the issue's targets."""
    from bench_pc_supernet import _render

    results = json.loads(path.read_text())
    steps = {len(r["step_s_all"]) for r in results}
    procs = {r.get("processes", 1) for r in results}
    out = [SUPERNET_INTRO, ""]
    out += [f"{max(procs)} process(es) per case, {max(steps)} timed steps per case in all. "
            f"Source: `{path.name}`.", ""]  # fmt: skip
    out += [_render(results).rstrip(), ""]
    by = {(r["batch"], r["variant"]): r for r in results}
    for b in sorted({r["batch"] for r in results}):
        f, ref = by.get((b, "fused")), by.get((b, "reference"))
        if not (f and ref):
            continue
        speed = ref["step_s"] / f["step_s"]
        mem = f["peak_rss_growth_bytes"] / ref["peak_rss_growth_bytes"]
        out.append(
            f"- batch {b}: step {speed:.2f}x faster (target >= 1.1x: "
            f"{'met' if speed >= 1.1 else 'NOT met'}), peak memory {mem:.2f}x the reference "
            f"(target <= 0.7x: {'met' if mem <= 0.7 else 'NOT met'})"
        )
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--title", action="append", default=[], help="section title per file")
    parser.add_argument("--intro", type=Path, help="markdown to put before the tables")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--supernet", type=Path, help="bench_pc_supernet.py's JSON")
    parser.add_argument(
        "--stat", action="append", default=[], choices=["median", "min"],
        help="per file: median of the rounds (default) or the best round",
    )  # fmt: skip
    args = parser.parse_args(argv)
    lines = ["# fusenas::pc_mixed_op benchmarks", ""]
    if args.intro is not None:
        lines += [args.intro.read_text().rstrip(), ""]
    for i, path in enumerate(args.results):
        stat = args.stat[i] if i < len(args.stat) else "median"
        lines += section(path, args.title[i] if i < len(args.title) else None, stat)
    lines += ["## Whole supernet (8 cells, C=16, 32x32, batch 64 and 96)", ""]
    if args.supernet is None:
        lines += ["Not measured in this report (pass --supernet).", ""]
    else:
        lines += supernet_section(args.supernet)
    write_text_atomic(args.out, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

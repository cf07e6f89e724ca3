"""Training curves of several compression runs in one picture, and their last epochs as a table.

Reads each run directory's ``log.jsonl`` (``fusenas compress trp`` / ``baseline``) and
draws held-out accuracy, training loss and, for TRP runs, the sum of the convs' ranks per
epoch (fusenas.compress.plots); the table gives each run's final held-out accuracy, the
best over its last five epochs, and, once the run has finished, the accuracy its
report.json gives the model it outputs (TRP: the exported network; baseline: the network
itself). A run is labelled by its directory name unless given as LABEL=DIR.

    python experiments/trp_curves.py baseline=runs/trp_r20_60ep/baseline \\
        trp=runs/trp_r20_60ep/trp_e099 --out docs/trp_r20_60ep_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_io import publish  # experiments/results_io.py (the script's directory)

from fusenas.compress.plots import plot_training
from fusenas.run_dir import read_log


def _read_run(arg: str) -> tuple[str, Path, list[dict]]:
    label, _, path = arg.rpartition("=")
    run = Path(path)
    if not (run / "log.jsonl").is_file():
        raise SystemExit(f"run {arg!r}: no log.jsonl in {run}")
    history = read_log(run)
    if not history:
        raise SystemExit(f"run {arg!r}: its log.jsonl has no epochs yet")
    return label or run.name, run, history


def _report_acc(run: Path) -> float | None:
    report = run / "report.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text())["stages"][-1]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories, each DIR or LABEL=DIR")
    p.add_argument("--out", type=Path, required=True, help="the .png; the table goes beside it")
    args = p.parse_args()
    runs = [_read_run(a) for a in args.runs]
    plot_training({label: h for label, _, h in runs}, args.out)
    lines = [
        f"![training curves]({args.out.name})",
        "",
        "| run | epochs | final held-out acc (%) | best of the last 5 (%) | report acc (%) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for label, run, h in runs:
        final, best5 = h[-1]["test_acc"], max(r["test_acc"] for r in h[-5:])
        report_acc = _report_acc(run)
        shown = "(not finished)" if report_acc is None else f"{report_acc:.2f}"
        lines.append(f"| {label} | {len(h)} | {final:.2f} | {best5:.2f} | {shown} |")
        rows.append({"run": label, "dir": str(run), "epochs": len(h), "final_test_acc": final,
                     "best_last5_test_acc": best5, "report_acc": report_acc})  # fmt: skip
    publish("\n".join(lines) + "\n", rows, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()

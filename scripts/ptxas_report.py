"""Prints a table of registers / shared memory / spills per CUDA kernel and arch
from a build log made with -Xptxas=-v; exits 1 if any kernel spills."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

FUNC = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\d+)'")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def main(path: str) -> int:
    rows = []
    current = None
    for line in open(path, errors="replace"):
        if m := FUNC.search(line):
            current = {"kernel": m.group(1), "arch": m.group(2)}
        elif current and (m := SPILL.search(line)):
            current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
        elif current and (m := USED.search(line)):
            current["regs"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
            rows.append(current)
            current = None
    if not rows:
        print("no ptxas output found in", path)
        return 1
    if shutil.which("c++filt"):
        names = "\n".join(r["kernel"] for r in rows)
        out = subprocess.run(["c++filt"], input=names, capture_output=True, text=True).stdout
        for r, name in zip(rows, out.splitlines(), strict=False):
            r["kernel"] = name
    print(f"{'arch':6} {'regs':>4} {'smem':>6} {'spill st/ld':>11}  kernel")
    bad = 0
    for r in rows:
        st, ld = r.get("spill_st", 0), r.get("spill_ld", 0)
        bad += (st + ld) > 0
        print(f"{r['arch']:6} {r['regs']:>4} {r['smem']:>6} {st:>5}/{ld:<5}  {r['kernel']}")
    print(f"{len(rows)} kernels, {bad} with spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build.log"))

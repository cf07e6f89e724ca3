"""benchmarks/heap_peak.py: the malloc-counting shim the low-rank benchmark reads peak memory
from. Runs a child process that loads the shim by re-executing itself, as the benchmark does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CHILD = """
import json, heap_peak
assert heap_peak.preload_or_fallback(), "shim not loaded"
import torch
mib = 2**20

def one_then_another():  # 1 MiB, freed, then 1 MiB again: the peak is 1 MiB, not 2
    a = torch.ones(mib // 4)
    del a
    b = torch.ones(mib // 4)
    del b

def two_at_once():
    a = torch.ones(mib // 4)
    b = torch.ones(mib // 4)
    del a, b

kept = []
print(json.dumps({
    "sequential": heap_peak.peak_during(one_then_another),
    "together": heap_peak.peak_during(two_at_once),
    "kept": heap_peak.peak_during(lambda: kept.append(torch.ones(3 * mib // 4))),
    "nothing": heap_peak.peak_during(lambda: None),
}))
"""


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("cc") is None,
                    reason="the shim needs Linux and a C compiler")  # fmt: skip
def test_heap_peak_counts_live_bytes(tmp_path):
    env = {**os.environ, "FUSENAS_CACHE_DIR": str(tmp_path)}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=BENCHMARKS, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    # Tensors carry a few hundred bytes of metadata besides their storage.
    assert mib <= peaks["sequential"] < 1.1 * mib, peaks
    assert 2 * mib <= peaks["together"] < 2.1 * mib, peaks
    assert 3 * mib <= peaks["kept"] < 3.1 * mib, peaks
    assert 0 <= peaks["nothing"] < 0.05 * mib, peaks

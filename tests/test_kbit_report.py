"""benchmarks/report.py judges the M = 1 4-bit targets on the interleaved case when a
run has it, and on the separate cases otherwise (synthetic pytest-benchmark JSON)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"
_spec = importlib.util.spec_from_file_location("kbit_report", _PATH)
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report  # dataclasses look their module up while it loads
_spec.loader.exec_module(report)

K = N = 4096
WEIGHT_BYTES = 8_912_896  # 4-bit codes + float32 scales at 4096 x 4096, group 128


def _case(op: str, dtype: str, t: float) -> dict:
    """A test_kbit M = 1 cold case taking t seconds, with 50 GB/s of DRAM next to it."""
    return {
        "stats": {"median": t, "min": t, "mean": t},
        "extra_info": {
            "op": op,
            "bits": 4,
            "dtype": dtype,
            "M": 1,
            "K": K,
            "N": N,
            "mode": "cold",
            "weight_bytes": WEIGHT_BYTES,
            "dram_gbps_near": 50.0,
            "dram_gbps": 50.0,
        },
    }


def _interleaved(times: dict[str, float], dram_gbps: float) -> dict:
    return {
        "stats": {"median": 1.0, "min": 1.0, "mean": 1.0},
        "extra_info": {
            "interleaved_alternatives": {
                "K": K,
                "N": N,
                "rounds": 30,
                "calls_per_round": 16,
                "median": times,
                "min": times,
                "weight_bytes": dict.fromkeys(times, WEIGHT_BYTES),
                "dram_gbps_median": dram_gbps,
                "dram_gbps_max": dram_gbps,
            },
            "dram_gbps": dram_gbps,
        },
    }


def _m1_targets(data: dict) -> dict[str, tuple[bool | None, str]]:
    rows, dram = report.load_rows(data, "median")
    ix = report.Index(
        rows,
        report.load_interleaved_widths(data, "median"),
        report.load_interleaved_alternatives(data, "median"),
    )
    return {t: (ok, measured) for t, ok, measured in report.m1_targets(ix, (K, N), dram["gbps"])}


# Separate cases: fusenas looks slower than bitsandbytes, which ran in a faster minute.
SEPARATE = [
    _case("fusenas", "float32", 0.255e-3),
    _case("fusenas", "bfloat16", 0.261e-3),
    _case("int4pack", "bfloat16", 0.30e-3),
    _case("bnb_nf4", "bfloat16", 0.188e-3),
]


def test_separate_cases_when_no_interleaved_run():
    got = _m1_targets({"benchmarks": SEPARATE})
    ok, measured = got[report.M1_FASTER.format(d="bf16")]
    assert ok is False and "bnb nf4 bf16" in measured and "interleaved" not in measured
    ok, measured = got[report.M1_DRAM.format(d="f32")]
    # 8.9 MB in 0.255 ms = 35 GB/s, 70% of the 50 GB/s measured next to it
    assert ok is False and "70%" in measured


def test_interleaved_case_decides_the_m1_targets():
    times = {
        "fusenas-float32": 0.110e-3,
        "fusenas-bfloat16": 0.100e-3,
        "int4pack-bfloat16": 0.200e-3,
        "bnb_nf4-float32": 0.250e-3,
        "bnb_nf4-bfloat16": 0.180e-3,
        "read": 0.090e-3,
    }
    got = _m1_targets({"benchmarks": [*SEPARATE, _interleaved(times, 100.0)]})
    ok, measured = got[report.M1_FASTER.format(d="bf16")]
    assert ok is True and "1.80x (interleaved)" in measured and "bnb nf4 bf16" in measured
    ok, measured = got[report.M1_FASTER.format(d="f32")]
    assert ok is False and "1.64x" in measured  # 0.180 / 0.110
    # 8.9 MB in 0.100 ms = 89 GB/s against the rounds' median of 100 GB/s
    ok, measured = got[report.M1_DRAM.format(d="bf16")]
    assert ok is True and "89%" in measured and "99.0" in measured  # the torch.sum read
    ok, measured = got[report.M1_DRAM.format(d="f32")]
    assert ok is True and "81%" in measured
    ok, measured = got[report.M1_F32]
    assert ok is True and "0.91x" in measured


def test_interleaved_case_without_bitsandbytes():
    times = {"fusenas-float32": 0.2e-3, "fusenas-bfloat16": 0.1e-3, "int4pack-bfloat16": 0.3e-3}
    got = _m1_targets({"benchmarks": [*SEPARATE, _interleaved(times, 100.0)]})
    ok, measured = got[report.M1_FASTER.format(d="bf16")]
    assert ok is True and "torch int4pack bf16" in measured
    ok, measured = got[report.M1_F32]
    assert ok is False and "0.50x" in measured
    ok, measured = got[report.M1_DRAM.format(d="f32")]
    # 8.9 MB in 0.2 ms = 45 GB/s of 100; no read entry in this run
    assert ok is False and "45%" in measured and "torch.sum" not in measured


def test_raw_results_load_plain_or_gzipped(tmp_path):
    data = {"benchmarks": [{"name": "x", "stats": {"median": 1.5}}]}
    plain, packed = tmp_path / "r.json", tmp_path / "r.json.gz"
    plain.write_text(json.dumps(data))
    packed.write_bytes(gzip.compress(json.dumps(data).encode()))
    assert report.load_json(plain) == data
    assert report.load_json(packed) == data

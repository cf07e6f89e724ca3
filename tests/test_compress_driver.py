"""The compression driver end to end on real (tiny) data: TRP, export, report, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusenas.cli import main as cli_main
from fusenas.compress.config import CompressConfig
from fusenas.compress.driver import export_run, load_split, load_trained, run_compress
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.quant.io import load_model
from fusenas.run_dir import read_log

TINY = dict(model="resnet20", dataset="digits", limit=600, test_size=200, epochs=2,
            batch_size=64, threads=1, latency_batches=(1, 8))  # fmt: skip


def _cfg(tmp_path, name="run", **kw):
    return CompressConfig(**{**TINY, "out_dir": str(tmp_path / name), **kw})


def test_trp_run_exports_fused_layers_that_reproduce_the_trained_model(tmp_path):
    config = _cfg(tmp_path, scheme="spatial")
    result = run_compress(config, progress=False)
    out = result.out_dir
    # All 18 trained convs, the two strided ones included (the stem stays dense).
    assert sum(isinstance(m, LowRankConv2d) for m in result.compressed.modules()) == 18
    ranks = result.history[-1]["ranks"]
    assert len(ranks) == 18 and all(r < 48 for n, r in ranks.items() if n.startswith("blocks.0"))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.compressed(x), result.dense(x), atol=2e-3, rtol=2e-3)
    loaded, _ = load_model(out / "compressed.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.compressed(x))
    trained = load_trained(out, config, 1, 10)  # the run's dense.safetensors
    assert not trained.training
    with torch.no_grad():
        torch.testing.assert_close(trained(x), result.dense.eval()(x))
    assert read_log(out) == result.history  # the log reads back as the run recorded it
    report = json.loads((out / "report.json").read_text())
    dense, comp = report["stages"]
    assert comp["macs"] < dense["macs"] / 2 and comp["file_bytes"] < dense["file_bytes"]
    assert "latency b8" in (out / "report.md").read_text()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import fusenas.compress.driver as driver

    whole = run_compress(_cfg(tmp_path, "whole", epochs=2), progress=False)
    real = driver.save_state
    calls = []

    def save_then_die(*a, **k):
        real(*a, **k)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "save_state", save_then_die)
    cfg = _cfg(tmp_path, "killed", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run_compress(cfg, progress=False)
    monkeypatch.setattr(driver, "save_state", real)
    resumed = run_compress(cfg, resume=True, progress=False)
    for (n, p), (_, q) in zip(whole.dense.state_dict().items(),
                              resumed.dense.state_dict().items(), strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=lambda m, n=n: f"{n}: {m}")


def test_cli_baseline_and_bad_input(tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in {**TINY, "epochs": 1, "out_dir": str(tmp_path / "b")}.items()]
    sets = [s.replace("(1, 8)", "[1, 8]") for s in sets]
    assert cli_main(["compress", "baseline", "--no-progress"]
                    + [a for s in sets for a in ("--set", s)]) == 0  # fmt: skip
    assert Path(tmp_path / "b" / "report.md").is_file()
    assert cli_main(["compress", "trp", "--set", "energi=0.9"]) == 2
    assert "did you mean 'energy'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(energy=0.0), "energy"),
        (dict(energy=1.2), "energy"),
        (dict(model="vgg16"), "model"),
        (dict(model="darts"), "genotype"),
        (dict(scheme="tucker"), "scheme"),
        (dict(milestones=(1.5,)), "milestones"),
        (dict(split_seed=1.5), "split_seed"),
        (dict(seed=None), "seed"),
    ],
)
def test_bad_compress_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        CompressConfig(**kw)


def test_split_seed_keeps_the_test_split_across_training_seeds(tmp_path):
    def test_images(**kw):
        return load_split(_cfg(tmp_path, **kw))[1].x

    shared = test_images(seed=0)
    assert torch.equal(test_images(seed=1, split_seed=0), shared)
    assert not torch.equal(test_images(seed=1), shared)  # seed alone also moves the split


def test_export_run_again_at_another_threshold(tmp_path):
    result = run_compress(_cfg(tmp_path, scheme="spatial", epochs=1), progress=False)
    out = result.out_dir
    x = torch.rand(4, 1, 8, 8)

    def ranks(model):
        return [m.rank for m in model.modules() if isinstance(m, LowRankConv2d)]

    again = export_run(out, progress=False)  # same threshold: the same network
    with torch.no_grad():
        torch.testing.assert_close(again.compressed(x), result.compressed(x))
    assert ranks(again.compressed) == ranks(result.compressed)
    loose = export_run(out, export_threshold=1e3, progress=False)  # above all: rank 1
    assert set(ranks(loose.compressed)) == {1} and sum(ranks(result.compressed)) > 18
    assert "export_threshold: 1000.0" in (out / "config.yaml").read_text()
    loaded, _ = load_model(out / "compressed.safetensors")
    assert ranks(loaded) == ranks(loose.compressed)
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][1]["params"] == loose.report[1]["params"]
    assert cli_main(["compress", "export", str(out), "--threshold", "0.05", "--no-progress"]) == 0
    assert ranks(load_model(out / "compressed.safetensors")[0]) == ranks(result.compressed)


def test_export_run_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_dir"):
        export_run(tmp_path / "nothing", progress=False)
    base = run_compress(_cfg(tmp_path, "base", method="baseline", epochs=1), progress=False)
    with pytest.raises(ValueError, match="only TRP runs"):
        export_run(base.out_dir, progress=False)


def test_test_size_larger_than_the_data(tmp_path):
    with pytest.raises(ValueError, match="test_size"):
        run_compress(_cfg(tmp_path, test_size=5000), progress=False)


def test_any_user_module(tmp_path):
    from fusenas.compress.quantize_driver import run_quantize

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            )  # fmt: skip
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    trp = run_compress(_cfg(tmp_path, "t", energy=0.8), progress=False, model=Tiny())
    assert sum(isinstance(m, LowRankConv2d) for m in trp.compressed.modules()) >= 1
    q = run_quantize(_cfg(tmp_path, "q", method="slq", stages=(1.0,), quant_exclude=("head",)),
                     progress=False, model=Tiny())  # fmt: skip
    assert isinstance(q.compressed.head, torch.nn.Linear)
    with pytest.raises(TypeError, match="model"):
        run_compress(_cfg(tmp_path, "x"), progress=False, model="resnet")


def test_torchrun_two_processes(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = {**TINY, "epochs": 1, "out_dir": str(tmp_path / "ddp"), "latency_batches": [1]}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
              f"--master_port={port}"]  # fmt: skip
    cmd = [*launch, "-m", "fusenas", "compress", "trp", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["world_size"] == 2 and log[-1]["weights_rank_max_diff"] == 0.0


def _report_row(stage, macs, file_bytes, b1_ms, b64_ms):
    return {"stage": stage, "accuracy": 90.0, "params": 10, "macs": macs,
            "file_bytes": file_bytes, "latency_ms": {1: b1_ms, 64: b64_ms}}  # fmt: skip


def test_report_says_what_the_compressed_model_does_not_gain():
    from fusenas.compress.report import format_report

    base = _report_row("float", 100, 1000, 2.0, 10.0)
    text = format_report([base, _report_row("q", 100, 200, 1.0, 20.0)], [])
    assert "not faster than the original at batch 64: 0.50x" in text
    assert "not smaller" not in text
    text = format_report([base, _report_row("q", 100, 1000, 3.0, 20.0)], [])
    assert "not smaller than the original" in text
    assert "not faster than the original at any batch size" in text
    text = format_report([base, _report_row("q", 50, 500, 1.0, 5.0)], [])
    assert "not faster" not in text and "not smaller" not in text

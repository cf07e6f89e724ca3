"""The PC-DARTS search driver end to end on real (tiny) data: logs, resume, torchrun, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusenas.search.pcdarts as pcdarts
from fusenas._state_io import load_state, save_state
from fusenas.cli import main as cli_main
from fusenas.config_file import load_config
from fusenas.search.config import SearchConfig
from fusenas.search.pcdarts import run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", limit=192, channels=4, layers=3, k=2, epochs=2, warmup_epochs=1,
            batch_size=32, eval_limit=32, threads=1)  # fmt: skip


def _tiny(tmp_path, name="run", **kw):
    return SearchConfig(**{**TINY, "out_dir": str(tmp_path / name), **kw})


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_tiny_search_writes_log_genotypes_plots_checkpoint(tmp_path, space):
    cfg = _tiny(tmp_path, space=space, layers=3 if space == "darts" else 1)
    result = run_search(cfg, progress=False)
    out = Path(cfg.out_dir)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[0]["arch_updates"] is False and log[1]["arch_updates"] is True
    for name in ("genotype.json", "genotypes/epoch_001.json", "genotypes/epoch_002.json",
                 "cells.png", "alphas.png", "config.yaml", "checkpoint.safetensors"):  # fmt: skip
        assert (out / name).is_file(), name
    assert load_state(out / "checkpoint.safetensors")["epoch"] == 2
    if space == "nb201":
        assert isinstance(result.genotype, str) and result.genotype.count("~") == 6
    else:
        assert len(result.genotype.normal) == 8
    # The architecture moved during the unfrozen epoch only.
    a0 = torch.tensor(log[0]["arch"]["alphas" if space == "nb201" else "alphas_normal"])
    a1 = torch.tensor(log[1]["arch"]["alphas" if space == "nb201" else "alphas_normal"])
    assert not torch.equal(a0, a1)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    whole = run_search(_tiny(tmp_path, "whole", epochs=3), progress=False)
    real_write = pcdarts._write_epoch
    calls = []

    def write_then_die(*args, **kwargs):
        real_write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed right after epoch 2's checkpoint

    monkeypatch.setattr(pcdarts, "_write_epoch", write_then_die)
    cfg = _tiny(tmp_path, "killed", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, progress=False)
    monkeypatch.setattr(pcdarts, "_write_epoch", real_write)
    resumed = run_search(cfg, resume=True, progress=False)
    assert len(resumed.history) == 3
    for (name, p), (_, q) in zip(whole.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert whole.genotype == resumed.genotype


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_keep_alphas_identical(tmp_path):
    out = tmp_path / "ddp"
    sets = [f"{k}={v}" for k, v in {**TINY, "out_dir": str(out)}.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "fusenas", "search", "pcdarts",
           "--no-progress"] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["world_size"] == 2 for r in log)
    assert all(r["arch_rank_max_diff"] == 0.0 for r in log)
    assert log[-1]["arch_updates"]


def test_config_file_overrides_and_typos(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("space: nb201\nepochs: 7\nk: 2\n")
    cfg = load_config(SearchConfig, path, ["epochs=3", "arch_betas=[0.6, 0.9]"])
    assert (cfg.space, cfg.epochs, cfg.k, cfg.arch_betas) == ("nb201", 3, 2, (0.6, 0.9))
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_config(SearchConfig, None, ["epoch=3"])
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting 'lerning_rate'"):
        load_config(SearchConfig, path)
    with pytest.raises(FileNotFoundError, match="config"):
        load_config(SearchConfig, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(space="darts201"), "space"),
        (dict(k=3), "k: expected a divisor"),
        (dict(dataset="imagenet"), "dataset"),
        (dict(epochs=0), "epochs"),
        (dict(latency_weight=0.1), "latency_predictor"),
        (dict(arch_betas=(0.5,)), "arch_betas"),
    ],
)
def test_bad_search_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**kw)


def test_missing_data_directory(tmp_path):
    cfg = _tiny(tmp_path, dataset="cifar10", data_dir=str(tmp_path / "nowhere.npz"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_search(cfg, progress=False)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    cfg = _tiny(tmp_path, epochs=1)
    run_search(cfg, progress=False)
    ckpt = Path(cfg.out_dir) / "checkpoint.safetensors"
    state = load_state(ckpt)
    # A different search (other channel count) cannot resume from it.
    other = _tiny(tmp_path, channels=8, epochs=1)
    with pytest.raises(ValueError, match="different run.*channels"):
        run_search(other, resume=True, progress=False)
    state["model"].pop("alphas_normal")
    save_state(ckpt, state)
    with pytest.raises(ValueError, match="does not match this supernet"):
        run_search(cfg, resume=True, progress=False)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fusenas checkpoint"):
        run_search(cfg, resume=True, progress=False)


def test_cli_search_and_errors(tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in {**TINY, "epochs": 1, "space": "nb201", "layers": 1,
                                    "out_dir": str(tmp_path / "cli")}.items()]  # fmt: skip
    assert cli_main(["search", "pcdarts", "--no-progress"]
                    + [a for s in sets for a in ("--set", s)]) == 0  # fmt: skip
    assert "genotype: |" in capsys.readouterr().out
    assert cli_main(["search", "pcdarts", "--set", "spcae=nb201"]) == 2
    assert "did you mean 'space'" in capsys.readouterr().err

"""The fusenas command line: demo end to end, train -> quantize -> infer, info, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from fusenas.cli import main
from fusenas.quant.io import load_packed


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "8", "--repeats", "3", "--threads", "1"]
    rc = main([*argv, "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("fp32", "8", "4", "3", "2", "ternary"):
        assert f"| {label} | " in text
    assert "ms/batch b=1" in text and "ms/batch b=64" in text
    md = (out / "results.md").read_text()
    assert md.startswith("# fusenas demo") and "| ternary |" in md
    fp32_row = next(line for line in md.splitlines() if line.startswith("| fp32 |"))
    assert float(fp32_row.split("|")[2]) > 90.0  # test accuracy of the trained CNN
    state = load_packed(out / "digits_4bit.safetensors")
    assert {d["bits"] for d in state.layers.values()} == {4}
    assert state.metadata["dataset"] == "digits"
    assert (out / "digits_fp32.safetensors").is_file()


def test_train_quantize_infer(tmp_path, capsys):
    fp32 = tmp_path / "fp32.safetensors"
    packed = tmp_path / "q4.safetensors"
    assert main(["train", "--dataset", "digits", "--epochs", "4", "-o", str(fp32),
                 "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    assert "test accuracy" in capsys.readouterr().out
    rc = main(["quantize", str(fp32), "-o", str(packed), "--bits", "4", "--group-size", "32",
               "--exclude", "features.0"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "rel err" in text and "head.1" in text and "features.0 " not in text
    assert "file:" in text and "smaller" in text
    state = load_packed(packed)
    assert "features.0" not in state.layers and state.metadata["dataset"] == "digits"
    assert main(["infer", str(packed), "--repeats", "3", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "latency batch    1" in text and "latency batch   64" in text
    assert main(["infer", str(fp32), "--repeats", "2", "--batch-size", "8", "--threads", "1"]) == 0
    assert "float model" in capsys.readouterr().out


def test_quantize_ternary_asymmetric_is_an_error(tmp_path, capsys):
    fp32 = tmp_path / "fp32.safetensors"
    argv = ["train", "--epochs", "1", "-o", str(fp32), "--limit", "300", "--threads", "1"]
    assert main([*argv, "--no-progress"]) == 0
    rc = main(["quantize", str(fp32), "-o", str(tmp_path / "t.safetensors"), "--bits", "ternary",
               "--asymmetric"])  # fmt: skip
    assert rc == 2 and "symmetric" in capsys.readouterr().err
    rc = main(["quantize", str(fp32), "-o", str(tmp_path / "t.safetensors"), "--exclude", "*"])
    assert rc == 2 and "exclude" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,name",
    [
        (["quantize", "in", "-o", "out", "--bits", "9"], "bits"),
        (["quantize", "in", "-o", "out", "--group-size", "10"], "group size"),
        (["demo", "--bits", "4,1"], "bits"),
        (["demo", "--threads", "0"], "threads"),
        (["train", "--dataset", "imagenet"], "dataset"),
        (["infer"], "model"),
        (["bogus"], "command"),
    ],
)
def test_bad_arguments_exit_2(argv, name, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert name in capsys.readouterr().err


def test_bad_files_exit_2(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    assert main(["infer", str(garbage)]) == 2
    assert "garbage.safetensors" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--data-path", str(tmp_path / "no.npz")]) == 2
    assert "no.npz" in capsys.readouterr().err


def test_info_entry_points():
    for args in (["-m", "fusenas", "info"], ["-m", "fusenas.info"]):
        proc = _run(*args)
        assert proc.returncode == 0, proc.stderr
        assert "kbit_matmul:" in proc.stdout and "cpu float32" in proc.stdout
        assert "fusenas._C" in proc.stdout and "torch threads" in proc.stdout


@pytest.mark.skipif(shutil.which("fusenas") is None, reason="console script not on PATH")
def test_console_script():
    proc = subprocess.run(["fusenas", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("demo", "train", "quantize", "infer", "info"):
        assert cmd in proc.stdout

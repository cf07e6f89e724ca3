"""The compression runs' training curves: written by the driver each epoch, overlays, bad input."""

from __future__ import annotations

import os

import pytest

from fusenas.compress.plots import plot_training

PNG = b"\x89PNG\r\n\x1a\n"


def _history(epochs, ranks=None):
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "test_acc": 50.0 + e, "train_loss": 2.0 / e}
        if ranks is not None:
            row["ranks"] = {"a": ranks - e, "b": ranks}
        rows.append(row)
    return rows


def test_overlay_of_a_trp_run_and_a_baseline_writes_a_png(tmp_path):
    path = plot_training(
        {"baseline": _history(4), "trp": _history(3, ranks=10)}, tmp_path / "c.png"
    )
    assert path.read_bytes()[:8] == PNG
    # No temporary file is left beside it (the write is atomic).
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_driver_redraws_curves_each_epoch(tmp_path, monkeypatch):
    import fusenas.compress.driver as driver
    from fusenas.compress.config import CompressConfig

    drawn = []
    real = driver.plot_training

    def record(runs, path):
        drawn.append({k: len(v) for k, v in runs.items()})
        return real(runs, path)

    monkeypatch.setattr(driver, "plot_training", record)
    config = CompressConfig(model="resnet20", dataset="digits", limit=300, test_size=100,
                            epochs=2, batch_size=64, threads=1, latency_batches=(1,),
                            out_dir=str(tmp_path / "run"))  # fmt: skip
    driver.run_compress(config, progress=False)
    assert drawn == [{"trp": 1}, {"trp": 2}]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "runs, match",
    [
        ({}, "at least one run"),
        ({"a": []}, "at least one run"),
        ({"a": [{"epoch": 1, "test_acc": 1.0}]}, r"runs\['a'\]: records lack \['train_loss'\]"),
    ],
)
def test_bad_runs_are_refused(tmp_path, runs, match):
    with pytest.raises(ValueError, match=match):
        plot_training(runs, tmp_path / "c.png")


def test_importing_the_plots_keeps_the_callers_matplotlib_backend():
    # A notebook that imports the driver must keep its own (inline) backend.
    import subprocess
    import sys

    code = "import matplotlib; import fusenas.compress.driver; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "svg"

"""The README's main job (`fusenas pipeline`) end to end, in its quick form."""

from __future__ import annotations

from fusenas.cli import main as cli_main
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.quant.io import load_model


def test_pipeline_quick(tmp_path, capsys):
    out = tmp_path / "pipe"
    assert cli_main(["pipeline", "--quick", "--no-progress", "--out", str(out)]) == 0
    table = (out / "pipeline.md").read_text()
    assert "+ TRP low-rank" in table and "packed file, reloaded" in table
    for f in ("search/genotype.json", "trp/report.md", "quant/report.md"):
        assert (out / f).is_file(), f
    model, _ = load_model(out / "quant" / "quantized.safetensors")
    kinds = {type(m) for m in model.modules()}
    assert LowRankConv2d in kinds and QuantConv2d in kinds
    assert "searched cell" in capsys.readouterr().out

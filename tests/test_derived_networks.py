"""Networks built from searched architectures, and `fusenas train --genotype`."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fusenas.cli import main as cli_main
from fusenas.models import build_model
from fusenas.models.darts_network import DartsNetwork
from fusenas.models.nb201_network import Nb201Network
from fusenas.search.latency import sample_architecture
from fusenas.search.nb201_table import Nb201Table
from fusenas.search.train_derived import cutout

# DARTS_V2 from the DARTS paper, a well-known genotype of this space.
DARTS_V2 = {
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
               ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
               ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3, 4, 5],
}  # fmt: skip


def test_darts_network_params_and_aux_head():
    net = DartsNetwork(DARTS_V2, channels=36, layers=20, auxiliary=True)
    params = sum(p.numel() for n, p in net.named_parameters() if "aux_head" not in n)
    assert 3.2e6 < params < 3.5e6  # DARTS reports 3.3M for DARTS_V2 at C=36, 20 cells
    small = DartsNetwork(DARTS_V2, channels=8, layers=5, auxiliary=True, drop_path_prob=0.2)
    small.train()
    y = small(torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 10) and small.aux_logits.shape == (2, 10)
    small.eval()
    small(torch.rand(2, 3, 32, 32))
    assert small.aux_logits is None
    assert isinstance(build_model(small.spec), DartsNetwork)


def test_nb201_network_params_match_the_benchmark(shared_data):
    # NAS-Bench-Suite-Zero lists every cell's parameter count (millions) for this network.
    with open(shared_data / "nasbench201" / "zc_nasbench201_cifar10.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:20]
    table = Nb201Table.load(shared_data / "nasbench201" / "nb201_cifar10.csv")
    for row in rows:
        net = Nb201Network(row["arch_str"])
        assert sum(p.numel() for p in net.parameters()) == round(float(row["params"]) * 1e6)
        assert 0 < table.accuracy(row["arch_str"]) < 100
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    gen = torch.Generator().manual_seed(0)
    rand = Nb201Network(sample_architecture("nb201", gen), channels=4, cells_per_stage=1)
    assert rand(torch.rand(1, 3, 16, 16)).shape == (1, 10)


def test_cutout_zeroes_a_square():
    x = torch.ones(4, 3, 16, 16, dtype=torch.uint8)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 64).all()


def test_cli_train_derived_network(tmp_path, capsys):
    g = tmp_path / "genotype.json"
    g.write_text(json.dumps(DARTS_V2))
    out = tmp_path / "net.safetensors"
    rc = cli_main(["train", "--genotype", str(g), "--channels", "4", "--layers", "3",
                   "--epochs", "1", "--batch-size", "64", "--no-progress", "-o", str(out),
                   "--threads", "1"])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert "test accuracy" in capsys.readouterr().out
    nb = tmp_path / "nb.json"
    arch = "|skip_connect~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|skip_connect~1|none~2|"
    nb.write_text(json.dumps({"arch_str": arch}))
    rc = cli_main(["train", "--genotype", str(nb), "--channels", "4", "--layers", "1",
                   "--epochs", "1", "--no-progress", "-o", str(tmp_path / "nb.pt")])  # fmt: skip
    assert rc == 0


def test_bad_derived_inputs(tmp_path, capsys):
    with pytest.raises(ValueError, match="arch"):
        Nb201Network("|conv_7x7~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(TypeError, match="genotype"):
        DartsNetwork(["sep_conv_3x3"])
    assert cli_main(["train", "--genotype", str(tmp_path / "none.json")]) == 2
    assert "--genotype" in capsys.readouterr().err

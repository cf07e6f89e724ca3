"""DARTS search space pieces that need no fused op: genotype rule, JSON round trip, models."""

from __future__ import annotations

import json

import pytest
import torch

from fusenas.models import CifarResNet, build_model, resnet20, resnet56
from fusenas.ops import PC_DARTS_PRIMITIVES
from fusenas.search.genotype import Genotype
from fusenas.search.spaces.darts import derive_genotype, node_normalised, num_edges


def _alphas(choices):
    """alphas favouring (op, strength) per edge; others tiny."""
    a = torch.zeros(num_edges(), len(PC_DARTS_PRIMITIVES))
    for edge, (op, value) in choices.items():
        a[edge, PC_DARTS_PRIMITIVES.index(op)] = value
    return a


def test_genotype_keeps_top_two_edges_and_best_non_none_op():
    # Node 0 (edges 0, 1): both kept. Node 1 (edges 2, 3, 4): edge 4 strongest, then 2.
    choices = {0: ("sep_conv_3x3", 3.0), 1: ("max_pool_3x3", 2.0), 2: ("dil_conv_5x5", 2.0),
               3: ("none", 9.0), 4: ("skip_connect", 4.0), 5: ("sep_conv_5x5", 1.0),
               6: ("avg_pool_3x3", 2.0), 8: ("dil_conv_3x3", 1.5), 9: ("sep_conv_3x3", 0.5),
               12: ("sep_conv_3x3", 2.0), 13: ("max_pool_3x3", 1.0)}  # fmt: skip
    a = _alphas(choices)
    g = derive_genotype(a, a)
    assert g.normal[:4] == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                            ("dil_conv_5x5", 0))  # fmt: skip
    # Edge 3's "none" never wins, and does not make the edge rank high.
    assert all(op != "none" for op, _ in g.normal)
    assert g.normal_concat == (2, 3, 4, 5)
    assert len(g.normal) == 8 and g.reduce == g.normal


def test_betas_reweight_edges_per_node():
    a = _alphas({0: ("sep_conv_3x3", 1.0), 1: ("sep_conv_3x3", 1.0), 2: ("sep_conv_3x3", 1.0),
                 3: ("sep_conv_3x3", 1.0), 4: ("sep_conv_3x3", 1.0)})  # fmt: skip
    betas = torch.zeros(num_edges())
    betas[3] = 5.0  # node 1: edge 3 (from node 1) dominates
    g = derive_genotype(a, a, betas, betas)
    assert g.normal[2][1] == 1
    scales = node_normalised(betas)
    torch.testing.assert_close(scales[2:5].sum(), torch.tensor(1.0))


def test_genotype_json_round_trip(tmp_path):
    g = derive_genotype(torch.randn(14, 8), torch.randn(14, 8), torch.randn(14), torch.randn(14))
    path = tmp_path / "genotype.json"
    g.save(path)
    assert Genotype.load(path) == g
    assert json.loads(path.read_text())["normal_concat"] == [2, 3, 4, 5]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_bad_genotypes():
    with pytest.raises(ValueError, match="malformed"):
        Genotype.from_dict({"normal": []})
    bad = {"normal": [["sep_conv_3x3", 3], ["skip_connect", 0]], "normal_concat": [2],
           "reduce": [], "reduce_concat": []}  # fmt: skip
    with pytest.raises(ValueError, match="not yet computed"):
        Genotype.from_dict(bad)
    with pytest.raises(ValueError, match="alphas"):
        derive_genotype(torch.zeros(3, 8), torch.zeros(14, 8))


def test_cifar_resnets():
    assert sum(p.numel() for p in resnet20().parameters()) == 269_722  # He et al.: 0.27M
    assert sum(p.numel() for p in resnet56().parameters()) == 853_018  # 0.85M
    m = CifarResNet(depth=20, shortcut="B")
    y = m(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert y.shape == (2, 10)
    rebuilt = build_model(m.spec)
    assert isinstance(rebuilt, CifarResNet) and rebuilt.spec == m.spec
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(shortcut="C")
    with pytest.raises(ValueError, match="spec"):
        build_model({"name": "CifarResNet", "kwargs": {"depht": 20}})

"""TRP's pieces: the in-training projection, the nuclear sub-gradient, export to LowRankConv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fusenas.compress.trp import TRPRegularizer, TRPSettings
from fusenas.models import resnet20
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.lowrank_factors import (
    choose_rank,
    nuclear_norm,
    project_with_subgradient,
    singular_values,
)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_projection_rank_and_nuclear_subgradient(scheme):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    projected, sub, r = project_with_subgradient(w, scheme, energy=0.9)
    assert r == choose_rank(singular_values(w, scheme), energy=0.9)
    s = singular_values(projected, scheme)
    assert int((s > 1e-9 * s[0]).sum()) == r  # rank exactly r
    # A small step along -U_r V_r^T lowers the nuclear norm by eta * r.
    eta = 1e-3
    drop = nuclear_norm(projected, scheme) - nuclear_norm(projected - eta * sub, scheme)
    assert drop == pytest.approx(eta * r, rel=1e-6)


def test_regularizer_on_real_cifar10_lowers_rank_and_exports(shared_data):
    data = np.load(shared_data / "cifar10" / "cifar10_train.npz")
    idx = np.random.default_rng(0).permutation(len(data["y"]))[:512]
    x = torch.from_numpy(data["x"][idx]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data["y"][idx])
    torch.manual_seed(0)
    model = resnet20()
    settings = TRPSettings(scheme="spatial", energy=0.9, period=2, nuclear_weight=3e-4)
    trp = TRPRegularizer(model, settings)
    assert len(trp.convs) == 18 and all(not n.startswith("stem") for n, _ in trp.convs)
    full = {n: min(c.weight.shape[1] * 3, c.weight.shape[0] * 3) for n, c in trp.convs}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for it in range(8):
        xb, yb = x[it * 64 : (it + 1) * 64], y[it * 64 : (it + 1) * 64]
        projected = trp.before_forward(it)
        assert projected == (it % 2 == 0)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        trp.after_backward()
        opt.step()
    assert all(trp.ranks[n] < full[n] for n in full)
    trp.before_forward(0)  # end on a projection: the weights are exactly low-rank
    model.eval()
    with torch.no_grad():
        before = model(x[:64])
        report = trp.export(model)
        after = model(x[:64])
    assert len(report) == 18  # every trained conv, the 2 strided ones included
    assert sum(isinstance(m, LowRankConv2d) for m in model.modules()) == 18
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-3)


def test_bad_trp_settings():
    with pytest.raises(ValueError, match="energy"):
        TRPSettings(energy=0.0)
    with pytest.raises(ValueError, match="energy"):
        TRPSettings(energy=1.5)
    with pytest.raises(ValueError, match="period"):
        TRPSettings(period=0)
    with pytest.raises(ValueError, match="no eligible"):
        TRPRegularizer(nn.Sequential(nn.Linear(3, 3)), TRPSettings())

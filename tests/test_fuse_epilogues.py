"""fusenas.nn.fuse_epilogues_ / optimize_for_inference: residual adds and ReLUs moved into
LowRankConv2d's fused epilogue, with the model's outputs unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fusenas.compress import DecomposeConfig, decompose_
from fusenas.models.resnet_cifar import CifarResNet
from fusenas.nn import LowRankConv2d, fuse_epilogues_, optimize_for_inference


def _lowrank_resnet20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CifarResNet(depth=20)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    decompose_(model, DecomposeConfig(scheme="spatial", energy=0.7, exclude=("stem*",)))
    return model.eval()


def _fused_calls(model: nn.Module) -> list[dict]:
    return [
        dict(node.kwargs)
        for m in model.modules()
        if isinstance(m, torch.fx.GraphModule)
        for node in m.graph.nodes
        if node.op == "call_module" and node.kwargs
    ]


@pytest.mark.parametrize("channels_last", [False, True])
def test_resnet20_deployed_form_matches_eval_model(channels_last):
    model = _lowrank_resnet20()
    n_lowrank = sum(isinstance(m, LowRankConv2d) for m in model.modules())
    assert n_lowrank == 16  # every stride-1 3x3 conv of the blocks
    x = torch.rand(3, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model(x)
        deployed = optimize_for_inference(model)
        got = deployed(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    calls = _fused_calls(deployed)
    # conv1 of each block takes its ReLU; conv2 the shortcut add and the block's ReLU.
    assert len(calls) == n_lowrank
    assert all(c["activation"] == "relu" for c in calls)
    assert sum("residual" in c for c in calls) == 9  # conv2 of all 9 blocks (stride 1)


class _Patterns(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = LowRankConv2d(4, 4, 3, rank=2, scheme="spatial", padding=1)
        self.b = LowRankConv2d(4, 4, 3, rank=2, scheme="channel", padding=1)
        self.c = LowRankConv2d(4, 4, 3, rank=2, scheme="spatial", padding=1)
        self.d = LowRankConv2d(4, 4, 3, rank=2, scheme="spatial", padding=1)
        self.bias = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        h = self.a(x) + x  # add only
        z = self.b(h)
        h = F.relu(z) + z  # z read twice: not fused
        h = torch.relu(h + self.c(h))  # residual on the left of the add
        return self.d(h) + self.bias  # a broadcast add: rewritten, run unfused


def test_patterns_and_conservative_cases():
    torch.manual_seed(0)
    model = _Patterns().eval()
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        want = model(x)
        fused, n = fuse_epilogues_(model)
        torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-5)
    assert isinstance(fused, torch.fx.GraphModule) and n == 3
    kwargs = {
        node.target: dict(node.kwargs) for node in fused.graph.nodes if node.op == "call_module"
    }
    assert set(kwargs["a"]) == {"residual"} and kwargs["b"] == {}
    assert kwargs["c"]["activation"] == "relu" and "residual" in kwargs["c"]
    assert set(kwargs["d"]) == {"residual"}


def test_no_lowrank_layers_leaves_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    same, n = fuse_epilogues_(model)
    assert same is model and n == 0


def test_not_a_module():
    with pytest.raises(TypeError, match="model"):
        optimize_for_inference("resnet20")

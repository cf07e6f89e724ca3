"""fusenas.quantize_ / QuantConfig: selection, per-layer settings, report, errors."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fusenas
from fusenas import QuantConfig, quantize_
from fusenas.nn import QuantConv2d, QuantLinear
from fusenas.quant import format_report


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),  # K = 27
            nn.ReLU(),
            nn.Conv2d(16, 32, 1),  # K = 16
            nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: stays float
        )
        self.head = nn.ModuleDict({"fc1": nn.Linear(32 * 16, 128), "fc2": nn.Linear(128, 10)})

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.head["fc2"](torch.relu(self.head["fc1"](x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def test_exports():
    assert fusenas.quantize_ is quantize_ and fusenas.QuantConfig is QuantConfig


def test_default_converts_all_supported_layers(net, caplog):
    x = torch.randn(2, 3, 4, 4)
    ref = net(x)
    with caplog.at_level(logging.INFO, logger="fusenas.quant"):
        report = quantize_(net, QuantConfig(bits=8))
    assert [r["name"] for r in report] == ["features.0", "features.2", "head.fc1", "head.fc2"]
    assert isinstance(net.features[0], QuantConv2d) and isinstance(net.features[2], QuantConv2d)
    assert type(net.features[3]) is nn.Conv2d  # groups=32 is left alone, with a warning
    assert isinstance(net.head["fc1"], QuantLinear) and isinstance(net.head["fc2"], QuantLinear)
    assert "features.3" in caplog.text and "groups=32" in caplog.text
    # group_size 128 does not divide K = 27, 16: per-channel, logged; it divides 512 and 128.
    by_name = {r["name"]: r for r in report}
    assert by_name["features.0"]["group_size"] == 27 and "features.0" in caplog.text
    assert by_name["head.fc1"]["group_size"] == 128
    r = by_name["head.fc1"]
    assert (r["type"], r["bits"], r["K"], r["N"]) == ("Linear", 8, 512, 128)
    assert r["fp32_bytes"] == 512 * 128 * 4 and r["packed_bytes"] == 128 * 512 + 128 * 4 * 4
    assert all(0 < r["rel_error"] < 0.01 for r in report)
    torch.testing.assert_close(net(x), ref, atol=2e-2, rtol=2e-2)
    table = format_report(report)
    assert "head.fc1" in table and "rel err" in table


def test_relative_error_grows_as_bits_shrink(net):
    errs = []
    for bits in (8, 4, 2):
        torch.manual_seed(0)
        report = quantize_(Net(), QuantConfig(bits=bits, group_size=None))
        errs.append(max(r["rel_error"] for r in report))
    assert errs[0] < errs[1] < errs[2]


def test_include_exclude_and_types(net):
    report = quantize_(net, QuantConfig(include=("features.*",), exclude=("features.2",)))
    assert [r["name"] for r in report] == ["features.0"]
    assert type(net.features[2]) is nn.Conv2d and type(net.head["fc1"]) is nn.Linear

    torch.manual_seed(0)
    other = Net()
    report = quantize_(other, QuantConfig(types=(nn.Linear,), exclude="head.fc2"))
    assert [r["name"] for r in report] == ["head.fc1"]


def test_per_layer_overrides(net):
    config = QuantConfig(
        bits=4,
        group_size=32,
        per_layer={
            "head.*": {"bits": 8},
            "head.fc2": {"bits": "ternary", "group_size": None},
            "features.0": {"symmetric": False},
        },
    )
    report = {r["name"]: r for r in quantize_(net, config)}
    assert report["head.fc1"]["bits"] == 8 and report["head.fc1"]["group_size"] == 32
    assert report["head.fc2"]["bits"] == "ternary" and net.head["fc2"].ternary
    assert report["head.fc2"]["group_size"] == 128  # per-channel: K
    assert net.features[0].zeros is not None and net.features[2].zeros is None
    assert report["features.2"]["bits"] == 4 and report["features.2"]["group_size"] == 16


def test_quantize_twice_is_a_no_op(net):
    assert len(quantize_(net)) == 4
    assert quantize_(net) == []


def test_subclasses_are_left_alone():
    mha = nn.MultiheadAttention(32, 4)
    model = nn.Sequential(nn.Linear(32, 32))
    model.add_module("attn", mha)
    report = quantize_(model)
    assert [r["name"] for r in report] == ["0"]
    assert type(mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_model_on_its_own_is_rejected():
    with pytest.raises(ValueError, match="model"):
        quantize_(nn.Linear(32, 4))
    # ... unless include does not select it.
    assert quantize_(nn.Linear(32, 4), QuantConfig(include=("nothing",))) == []


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": "int4"}, ValueError, "bits"),
        ({"group_size": 24}, ValueError, "group_size"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"group_size": 64.0}, ValueError, "group_size"),
        ({"symmetric": "yes"}, TypeError, "symmetric"),
        ({"bits": "ternary", "symmetric": False}, ValueError, "symmetric"),
        ({"include": [1]}, TypeError, "include"),
        ({"exclude": None}, TypeError, "exclude"),
        ({"types": (nn.ReLU,)}, ValueError, "types"),
        ({"types": ()}, ValueError, "types"),
        ({"per_layer": [("a", {})]}, TypeError, "per_layer"),
        ({"per_layer": {"a": 4}}, TypeError, "per_layer"),
        ({"per_layer": {"a": {"bitz": 4}}}, ValueError, "per_layer"),
        ({"per_layer": {"a": {"bits": 12}}}, ValueError, "bits"),
        ({"per_layer": {"a": {"group_size": 10}}}, ValueError, "group_size"),
        ({"per_layer": {"a": {"symmetric": 0}}}, TypeError, "symmetric"),
    ],
)
def test_bad_config(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        QuantConfig(**kwargs)


def test_bad_arguments(net):
    with pytest.raises(TypeError, match="model"):
        quantize_("model")
    with pytest.raises(TypeError, match="config"):
        quantize_(net, {"bits": 4})
    config = QuantConfig(symmetric=False, per_layer={"head.fc2": {"bits": "ternary"}})
    with pytest.raises(ValueError, match="per_layer"):
        quantize_(net, config)
    assert not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in net.modules())
    with torch.no_grad():
        net.head["fc2"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="model: layer 'head.fc2'.*NaN"):
        quantize_(net)

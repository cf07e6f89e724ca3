"""LowRankConv2d and decompose_: factors from a dense conv, back to it, and through the fused op."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import fusenas.nn.lowrank_conv as lowrank_module
from fusenas.compress import DecomposeConfig, decompose_, format_decompose_report
from fusenas.models import resnet20
from fusenas.nn import optimize_for_inference
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.ops.lowrank_conv import lowrank_conv2d_reference


def _reference_forward(
    x, w1, w2, bias=None, *, scheme, stride=1, padding=0, dilation=1, residual=None,
    activation="none", save_intermediate=True,
):  # fmt: skip
    del save_intermediate  # the two-conv reference keeps t the way torch's autograd does
    pair = nn.modules.utils._pair
    return lowrank_conv2d_reference(x, w1, w2, bias, scheme, pair(stride), pair(padding),
                                    pair(dilation), residual, activation)  # fmt: skip


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize(
    "conv_args",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
        dict(kernel_size=5, padding=0),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_full_rank_matches_dense_conv(scheme, conv_args, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, **conv_args)
    low = LowRankConv2d.from_conv(conv, scheme, energy=1.0)
    x = torch.randn(3, 6, 13, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = low(x)
    torch.testing.assert_close(y, conv(x), atol=2e-4, rtol=2e-4)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    back = low.to_conv()
    torch.testing.assert_close(back.weight, conv.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back(x), conv(x), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("save", [True, False])
def test_gradients_match_the_two_conv_reference(scheme, save):
    torch.manual_seed(1)
    low = LowRankConv2d(8, 12, 3, rank=4, scheme=scheme, padding=1)
    low.save_intermediate = save
    x = torch.randn(2, 8, 9, 10, requires_grad=True)
    grad = torch.randn(2, 12, 9, 10)
    y = low(x)
    assert (getattr(y.grad_fn, "kept", None) is not None) == save  # t kept for grad_w2
    y.backward(grad)
    got = [t.grad.clone() for t in (x, low.weight1, low.weight2, low.bias)]
    for t in (x, low.weight1, low.weight2, low.bias):
        t.grad = None
    _reference_forward(x, low.weight1, low.weight2, low.bias, scheme=scheme, padding=1).backward(
        grad
    )
    want = [t.grad for t in (x, low.weight1, low.weight2, low.bias)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_rank_macs_and_repr():
    low = LowRankConv2d(64, 64, 3, rank=16, scheme="channel", padding=1)
    assert low.rank == 16
    assert low.dense_macs((32, 32)) == 32 * 32 * 64 * 64 * 9
    assert low.macs((32, 32)) == 32 * 32 * (16 * 64 * 9 + 64 * 16)
    sp = LowRankConv2d(64, 64, 3, rank=16, scheme="spatial", padding=1, stride=2)
    # factor 1: 16 x 32 rows x 32 cols x (64 * 3); factor 2: 16 x 16 out x (16 * 3) per channel
    assert sp.output_size((32, 32)) == (16, 16)
    assert sp.macs((32, 32)) == 16 * 32 * 16 * 64 * 3 + 16 * 16 * 64 * 16 * 3
    assert "rank=16" in repr(low) and "spatial" in repr(sp)


def test_from_conv_rank_rules_and_errors():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    assert LowRankConv2d.from_conv(conv, rank=3).rank == 3
    assert LowRankConv2d.from_conv(conv, value_threshold=1e9).rank == 1
    with pytest.raises(TypeError, match="conv"):
        LowRankConv2d.from_conv(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="groups"):
        LowRankConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ValueError, match="padding"):
        LowRankConv2d.from_conv(nn.Conv2d(8, 8, 3, padding="same"))
    with pytest.raises(ValueError, match="rank"):
        LowRankConv2d(8, 8, 3, rank=0)
    with pytest.raises(ValueError, match="scheme"):
        LowRankConv2d(8, 8, 3, rank=2, scheme="tucker")


def test_decompose_resnet20_selects_stride1_3x3_convs():
    torch.manual_seed(2)
    model = resnet20()
    report = decompose_(model, DecomposeConfig(scheme="spatial", rank=4, exclude=("stem*",)))
    # 18 block convs, 2 of them strided: 16 stride-1 3x3 convs; the stem is excluded.
    assert len(report) == 16
    assert sum(isinstance(m, LowRankConv2d) for m in model.modules()) == 16
    assert isinstance(model.stem[0], nn.Conv2d)
    assert all(r["rank"] == 4 and r["mac_ratio"] > 1 for r in report)
    assert "blocks.0.conv1" in format_decompose_report(report)
    y = model.eval()(torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_decompose_strided_convs_on_request():
    torch.manual_seed(3)
    model = resnet20().eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    strided = {n: m for n, m in convs.items() if m.stride != (1, 1)}
    assert sorted(strided) == ["blocks.3.conv1", "blocks.6.conv1"]
    config = DecomposeConfig(scheme="spatial", rank=4, exclude=("stem*",), strided=True)
    report = {r["name"]: r for r in decompose_(model, config)}
    assert len(report) == 18
    for name, conv in strided.items():
        low = model.get_submodule(name)
        assert isinstance(low, LowRankConv2d) and low.stride == (2, 2)
        # Factor 1 (3x1) runs at the output's height and the input's full width.
        c, n = conv.in_channels, conv.out_channels
        assert report[name]["mac_ratio"] == pytest.approx(n * c * 9 / (4 * c * 3 * 2 + n * 4 * 3))
        x = torch.rand(2, c, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(low(x), low.to_conv()(x), atol=1e-5, rtol=1e-4)
            assert low(x).shape == conv(x).shape


def test_decompose_keeps_layers_that_would_not_shrink():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    assert decompose_(model, DecomposeConfig(energy=1.0)) == []
    assert isinstance(model[0], nn.Conv2d)
    report = decompose_(model, DecomposeConfig(energy=1.0, keep_if_not_smaller=False))
    assert len(report) == 1 and isinstance(model[0], LowRankConv2d)


def test_bad_decompose_configs():
    with pytest.raises(ValueError, match="at most one"):
        DecomposeConfig(rank=2, energy=0.5)
    with pytest.raises(ValueError, match="energy"):
        DecomposeConfig(energy=2.0)
    with pytest.raises(ValueError, match="scheme"):
        DecomposeConfig(scheme="svd")
    with pytest.raises(TypeError, match="include"):
        DecomposeConfig(include=[3])
    with pytest.raises(TypeError, match="strided"):
        DecomposeConfig(strided=1)
    with pytest.raises(TypeError, match="config"):
        decompose_(nn.Conv2d(3, 3, 3), {"energy": 0.9})
    with pytest.raises(TypeError, match="model"):
        decompose_("resnet20")


def test_resnet20_on_cifar10_same_logits_fused_and_reference(shared_data, monkeypatch):
    """ResNet-20 trained briefly on real CIFAR-10, decomposed at energy 0.9: fused == two convs."""
    data = np.load(shared_data / "cifar10" / "cifar10_train.npz")
    x = torch.from_numpy(data["x"][:2304]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data["y"][:2304])
    torch.manual_seed(3)
    model = resnet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for step in range(16):  # one pass over 2048 images, batch 128
        xb, yb = x[step * 128 : (step + 1) * 128], y[step * 128 : (step + 1) * 128]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    test_x = x[2048:]
    with torch.no_grad():
        dense_logits = model(test_x)
        report = decompose_(
            model, DecomposeConfig(scheme="channel", energy=0.9, exclude=("stem*",))
        )
        assert len(report) == 16
        fused = model(test_x)
        # The deployed form (BN folded, add + ReLU in the kernel's epilogue) too.
        deployed = optimize_for_inference(copy.deepcopy(model))(test_x)
        monkeypatch.setattr(lowrank_module, "lowrank_conv2d", _reference_forward)
        reference = model(test_x)
    torch.testing.assert_close(fused, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(deployed, reference, atol=1e-4, rtol=1e-4)
    # Energy 0.9 keeps the network's function close to the dense one.
    agree = (fused.argmax(1) == dense_logits.argmax(1)).float().mean()
    assert agree > 0.8, f"decomposed model agrees with the dense one on {agree:.0%} of images"

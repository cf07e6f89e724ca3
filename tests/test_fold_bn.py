"""fusenas.nn.fold_batchnorm_: eval-mode BN merged into the conv before it, exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fusenas.compress import DecomposeConfig, decompose_
from fusenas.models.resnet_cifar import CifarResNet
from fusenas.nn import LowRankConv2d, QuantConv2d, fold_batchnorm_
from fusenas.quant import QuantConfig, quantize_


def _resnet20_with_stats(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CifarResNet(depth=20)
    for m in model.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)  # negative scales too
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _check_folded(model: nn.Module, x: torch.Tensor, atol: float) -> None:
    with torch.no_grad():
        want = model(x)
        pairs = fold_batchnorm_(model)
        got = model(x)
    assert len(pairs) == 19  # the stem and the 18 block convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def _assert_nothing_folded(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    model.bn.running_mean.fill_(0.3)  # a fold would show in the outputs
    with torch.no_grad():
        want = model(x)
        assert fold_batchnorm_(model) == []
        torch.testing.assert_close(model(x), want)
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_dense_resnet20_folds_exactly():
    model = _resnet20_with_stats()
    _check_folded(model, torch.rand(4, 3, 32, 32), atol=1e-4)
    assert model.stem[0].bias is not None


def test_lowrank_resnet20_folds_into_second_factor():
    model = _resnet20_with_stats(1)
    decompose_(model, DecomposeConfig(scheme="spatial", energy=0.8, exclude=("stem*",)))
    lowrank = [m for m in model.modules() if isinstance(m, LowRankConv2d)]
    assert lowrank
    w1 = [m.weight1.detach().clone() for m in lowrank]
    _check_folded(model, torch.rand(4, 3, 32, 32), atol=1e-4)
    # The first factor is untouched; the BN lives in the second and the bias.
    assert all(torch.equal(m.weight1, w) for m, w in zip(lowrank, w1, strict=True))
    assert all(m.bias is not None for m in lowrank)


def test_quantized_resnet20_folds_into_scales():
    model = _resnet20_with_stats(2)
    quantize_(model, QuantConfig(bits=4, group_size=None, types=(nn.Conv2d,)))
    quant = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert quant
    codes = [m.codes.clone() for m in quant]
    _check_folded(model, torch.rand(4, 3, 32, 32), atol=1e-4)
    assert all(torch.equal(m.codes, c) for m, c in zip(quant, codes, strict=True))


def test_bn_after_a_shared_conv_output_is_left_alone():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            z = self.conv(x)
            return self.bn(z) + z  # z is read twice: folding would change the sum

    _assert_nothing_folded(TwoReaders(), torch.rand(2, 3, 8, 8))


def test_training_mode_is_rejected():
    model = CifarResNet(depth=20)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm_(model)


def test_untraceable_forward_is_searched_child_by_child():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.conv = nn.Conv2d(4, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent branch: fx cannot trace this forward
                x = -x
            return self.bn(self.conv(self.inner(x)))

    model = DataDependent().eval()
    for bn in (model.inner[1], model.bn):
        bn.running_mean.fill_(0.2)
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        # Inside the traceable child: folded; across the untraceable forward: left.
        assert fold_batchnorm_(model) == [("inner.0", "inner.1")]
        torch.testing.assert_close(model(x), want)
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_not_a_module():
    with pytest.raises(TypeError, match="model"):
        fold_batchnorm_(copy.copy([1]))


def test_shared_conv_and_batch_statistics_bn_are_left_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.stats_free = nn.BatchNorm2d(4, track_running_stats=False)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = self.bn(self.conv(x))  # conv is called again below: its weights are shared
            return self.stats_free(self.conv2(self.conv(h)))

    _assert_nothing_folded(Shared(), torch.rand(2, 4, 6, 6))

"""Post-training k-bit quantization keeps a trained CNN's accuracy (real data, end to end).

A SmallCNN is trained on digits (and on a CIFAR-10 subset when ../shared/data has
it), converted with fusenas.quantize_ (QuantConv2d for the 3x3 and 1x1 convs,
QuantLinear for the head), and evaluated on its held-out split: 4 bits must stay
within 1 point of fp32 test accuracy and 8 bits within 0.3 points.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from fusenas import QuantConfig, quantize_
from fusenas.data import load_splits
from fusenas.models import small_cnn_for
from fusenas.nn import QuantConv2d, QuantLinear
from fusenas.training import accuracy, fit

CIFAR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "cifar10_train.npz"
)
LIMITS = {4: 1.0, 8: 0.3}  # max accuracy drop, in points, per bit width


def _trained(dataset: str, path=None, limit=None, channels=None, hidden=None, epochs=20, bs=64):
    train, test = load_splits(dataset, path, seed=0, limit=limit)
    torch.manual_seed(0)
    overrides = {k: v for k, v in (("channels", channels), ("hidden", hidden)) if v is not None}
    model = small_cnn_for(dataset, **overrides)
    fit(model, train, epochs=epochs, batch_size=bs, lr=4e-3, seed=0, progress=False, threads=1)
    return model, test


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The models are tiny: one thread is fastest, and immune to a busy machine's
    # OpenMP barrier stalls. Results are deterministic for a fixed thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return _trained("digits")


@pytest.fixture(scope="module")
def cifar():
    if not CIFAR.is_file():
        pytest.skip("../shared/data/cifar10/cifar10_train.npz absent")
    # 6000 random images (4800 train / 1200 test), a narrow CNN, 4 epochs: ~15 s on 1 core.
    return _trained(
        "cifar10", CIFAR, limit=6000, channels=[16, 32, 64], hidden=64, epochs=4, bs=128
    )


def _check(model, test, bits, fp32_floor):
    fp32 = accuracy(model, test)
    assert fp32 > fp32_floor, f"the float model did not train ({fp32:.2f}%)"
    qmodel = copy.deepcopy(model)
    n_layers = sum(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in model.modules())
    report = quantize_(qmodel, QuantConfig(bits=bits, group_size=128))
    kinds = {type(m) for m in qmodel.modules()}
    assert QuantConv2d in kinds and QuantLinear in kinds
    assert not any(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in qmodel.modules())
    assert len(report) == n_layers
    q = accuracy(qmodel, test)
    assert fp32 - q <= LIMITS[bits], f"{bits}-bit: {q:.2f}% vs fp32 {fp32:.2f}%"


@pytest.mark.parametrize("bits", [8, 4])
def test_digits(digits, bits):
    _check(*digits, bits, fp32_floor=95.0)


@pytest.mark.parametrize("bits", [8, 4])
def test_cifar10_subset(cifar, bits):
    _check(*cifar, bits, fp32_floor=35.0)

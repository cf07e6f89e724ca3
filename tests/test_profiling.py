"""MAC and parameter counts: known figures of known networks, and fused layers counted as run."""

from __future__ import annotations

import torch
from torch import nn

import fusenas
from fusenas.models import resnet20, resnet56
from fusenas.profiling import count_macs, count_params, latency_ms


def test_resnet_macs_match_the_literature():
    x = torch.rand(1, 3, 32, 32)
    assert count_macs(resnet20(), x) == 40_551_040  # "41M" (He et al., TRP's baseline)
    assert 125e6 < count_macs(resnet56(), x) < 127e6  # "125M"
    assert count_params(resnet20()) == 269_722


def test_fused_layers_count_what_they_compute():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 64, 10))
    x = torch.rand(2, 16, 8, 8)
    dense = count_macs(model, x)
    assert dense == 64 * 16 * 16 * 9 + 16 * 64 * 10
    fusenas.decompose_(model, fusenas.DecomposeConfig(scheme="channel", rank=4))
    assert count_macs(model, x) == 64 * (4 * 16 * 9 + 16 * 4) + 16 * 64 * 10
    fusenas.quantize_(model, fusenas.QuantConfig(bits=4, group_size=None, types=(nn.Linear,)))
    assert count_macs(model, x) == 64 * (4 * 16 * 9 + 16 * 4) + 16 * 64 * 10
    assert latency_ms(model, x, repeats=2, warmup=1) > 0


def test_largest_batch_within_solves_the_affine_fit():
    from fusenas.profiling import largest_batch_within

    # 100 MB of weights + 10 MB per image: 1000 MB holds 90 images.
    points = [(64, 100e6 + 64 * 10e6), (32, 100e6 + 32 * 10e6)]
    assert largest_batch_within(points, 1000e6) == 90
    assert largest_batch_within(points[:1], 1000e6) is None
    assert largest_batch_within([(8, 5.0), (16, 5.0)], 10.0) is None  # memory not growing

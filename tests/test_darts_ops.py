"""DARTS candidate operations: FactorizedReduce against its definition."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fusenas.nn.darts_ops import FactorizedReduce


def _definition(module: FactorizedReduce, x: torch.Tensor) -> torch.Tensor:
    """ReLU, two strided 1 x 1 convs (on x and on x shifted by one pixel), concat, BN."""
    x = torch.relu(x)
    a = F.conv2d(x, module.conv_1.weight, stride=2)
    b = F.conv2d(x[:, :, 1:, 1:], module.conv_2.weight, stride=2)
    return F.batch_norm(torch.cat([a, b], 1), None, None, module.bn.weight, module.bn.bias, True)


@pytest.mark.parametrize("c_in", [2, 3, 4, 8])
@pytest.mark.parametrize("hw", [(6, 10), (8, 8), (32, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_matches_strided_convs(c_in, hw, channels_last):
    # A few input channels on channels_last is where torch 2.13's strided 1 x 1 conv
    # backward went wrong on AVX2 CPUs (wrong weight gradients, heap corruption): the
    # module slices instead. Repeated, since the failure was intermittent.
    torch.manual_seed(c_in)
    module = FactorizedReduce(c_in, 4)
    x0 = torch.randn(3, c_in, *hw)
    ref_x = x0.double().requires_grad_()
    ref_module = copy.deepcopy(module).double()
    ref = _definition(ref_module, ref_x)
    grad = torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).view_as(ref)
    ref.backward(grad)
    for _ in range(3):
        module.zero_grad()
        x = x0.clone()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        out = module(x)
        out.backward(grad.float())
        torch.testing.assert_close(out.double(), ref.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad.double(), ref_x.grad, atol=1e-5, rtol=1e-5)
        for p, q in zip(module.parameters(), ref_module.parameters(), strict=True):
            torch.testing.assert_close(p.grad.double(), q.grad, atol=1e-4, rtol=1e-4)

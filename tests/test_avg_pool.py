"""fusenas.ops.avg_pool / fusenas.nn.AvgPool2d: F.avg_pool2d's results, with correct
gradients for padded channels_last inputs on CUDA (pytorch/pytorch#188344)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fusenas.ops.avg_pool as avg_pool_module
from fusenas.nn.avg_pool import AvgPool2d
from fusenas.ops.avg_pool import avg_pool2d, avg_pool2d_backward

CASES = list(itertools.product(["nchw", "channels_last", "slice"], [0, 1], [1, 2], [False, True]))


def _input(layout: str, device: str) -> torch.Tensor:
    x = torch.randn(2, 8, 7, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if layout != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    return x[:, 2:6] if layout == "slice" else x


def _grads(fn, x, g):
    x = x.detach().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, [x], g.to(y.device))
    return y.detach().cpu(), gx.cpu(), y


def _check(device: str, layout, padding, stride, count_include_pad):
    x = _input(layout, device)
    kw = dict(kernel_size=3, stride=stride, padding=padding, count_include_pad=count_include_pad)
    shape = F.avg_pool2d(_input(layout, "cpu"), **kw).shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref_y, ref_gx, _ = _grads(lambda t: F.avg_pool2d(t, **kw), _input(layout, "cpu"), g)
    for fn in (lambda t: avg_pool2d(t, **kw), AvgPool2d(**kw)):
        y, gx, y_dev = _grads(fn, x, g)
        torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-12, atol=1e-12)
        if layout == "channels_last":
            assert y_dev.is_contiguous(memory_format=torch.channels_last)
    gx = avg_pool2d_backward(g.to(device), x, [3, 3], [stride] * 2, [padding] * 2, False,
                             count_include_pad)  # fmt: skip
    torch.testing.assert_close(gx.cpu(), ref_gx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("copy_path", [False, True])
@pytest.mark.parametrize("layout,padding,stride,count_include_pad", CASES)
def test_matches_torch_on_cpu(layout, padding, stride, count_include_pad, copy_path, monkeypatch):
    if copy_path:  # run the CUDA workaround (pool an NCHW copy) on the CPU too
        monkeypatch.setattr(avg_pool_module, "_needs_nchw", lambda x, padding: True)
    _check("cpu", layout, padding, stride, count_include_pad)


@pytest.mark.gpu
@pytest.mark.parametrize("layout,padding,stride,count_include_pad", CASES)
def test_cuda_matches_cpu(layout, padding, stride, count_include_pad):
    _check("cuda", layout, padding, stride, count_include_pad)


def test_module_is_a_drop_in():
    m = AvgPool2d(3, 2, 1, count_include_pad=False)
    assert isinstance(m, torch.nn.AvgPool2d) and m.state_dict() == {}
    assert "kernel_size=3" in repr(m)

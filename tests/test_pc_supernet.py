"""PartialChannelMixedOp and the DARTS supernet: the fused edges equal PC-DARTS' formulation."""

from __future__ import annotations

import pytest
import torch

from fusenas.nn.pc_mixed_op import PartialChannelMixedOp
from fusenas.ops import PC_DARTS_PRIMITIVES
from fusenas.search.spaces import DartsSupernet

TOL = dict(atol=2e-5, rtol=2e-5)


def _grads(module, *tensors):
    return [t.grad.clone() for t in tensors] + [
        p.grad.clone() for p in module.parameters() if p.grad is not None
    ]


def _pair(cls_kwargs, seed=0):
    torch.manual_seed(seed)
    fused = PartialChannelMixedOp(**cls_kwargs)
    reference = PartialChannelMixedOp(**cls_kwargs, fused=False)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_edge_fused_equals_reference_train_and_eval(stride, k, channels_last):
    fused, reference = _pair(dict(channels=8, stride=stride, k=k))
    x0 = torch.randn(3, 8, 6, 10)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w0 = torch.softmax(torch.randn(len(PC_DARTS_PRIMITIVES)), 0)
    s0 = torch.tensor(0.7)
    results = []
    for module in (fused, reference):
        x, w, s = (t.clone().requires_grad_() for t in (x0, w0, s0))
        out = module(x, w, s)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append((out.detach(), _grads(module, x, w, s), module.running_var.clone()))
    (o1, g1, r1), (o2, g2, r2) = results
    torch.testing.assert_close(o1, o2, **TOL)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(r1, r2, **TOL)
    fused.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x0, w0, s0), reference(x0, w0, s0), **TOL)


def test_edge_candidate_subset_without_edge_scale():
    prims = ("max_pool_3x3", "skip_connect", "dil_conv_3x3")
    fused, reference = _pair(dict(channels=6, stride=1, k=2, primitives=prims), seed=1)
    x = torch.randn(2, 6, 7, 5)
    w = torch.softmax(torch.randn(3), 0)
    torch.testing.assert_close(fused(x, w), reference(x, w), **TOL)


def test_edge_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        PartialChannelMixedOp(10, k=4)
    with pytest.raises(ValueError, match="stride"):
        PartialChannelMixedOp(8, stride=3)
    with pytest.raises(ValueError, match="primitives"):
        PartialChannelMixedOp(8, primitives=("sep_conv_3x3", "conv_7x7"))
    with pytest.raises(ValueError, match="k"):
        PartialChannelMixedOp(8, k=0)


def test_supernet_fused_equals_reference_supernet():
    torch.manual_seed(4)
    kwargs = dict(channels=8, num_classes=10, layers=5, k=4)
    fused = DartsSupernet(**kwargs)
    reference = DartsSupernet(**kwargs, fused=False)
    reference.load_state_dict(fused.state_dict())
    # Batch 8: at batch 4 the last cells' train-mode BN sees 64 values per channel
    # (4 x 4 maps) and the gradients are ill-conditioned: a 1e-6 relative change of x
    # moves some parameter gradients by 4% in the reference alone, so the fused
    # kernels' other (equally exact) summation order on AVX2 failed the comparison.
    x = torch.randn(8, 3, 16, 16)
    target = torch.tensor([1, 3, 5, 7, 0, 2, 4, 6])
    outs, grads = [], []
    for net in (fused, reference):
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        outs.append(net(x).detach())
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    assert {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"} <= grads[0].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
    for (n1, b1), (_, b2) in zip(fused.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(b1, b2, atol=1e-5, rtol=1e-5, msg=lambda m, n=n1: f"{n}: {m}")


def test_supernet_parameters_split_and_genotype():
    net = DartsSupernet(channels=4, layers=3, k=2, edge_normalization=False)
    arch = net.arch_parameters()
    assert len(arch) == 2 and all(p.shape == (14, 8) for p in arch)
    assert not {id(p) for p in arch} & {id(p) for p in net.weight_parameters()}
    g = net.genotype()
    assert len(g.normal) == 8 and len(g.reduce) == 8
    assert net(torch.rand(2, 3, 8, 8)).shape == (2, 10)

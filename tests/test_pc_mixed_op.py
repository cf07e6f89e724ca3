"""torch.ops.fusenas.pc_mixed_op: the reference against autograd, the native CPU
kernel (every ISA) against the reference, torch.library contracts, and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fusenas.ops import PC_DARTS_PRIMITIVES, _native, pc_mixed_op
from fusenas.ops.pc_mixed_op import (
    KIND_PARAMETRIC,
    candidate_kinds,
    check_pc_mixed_args,
    pc_mixed_op_backward_reference,
    pc_mixed_op_reference,
)

needs_native = pytest.mark.skipif(
    _native.cpu() is None or not hasattr(_native.cpu(), "pc_mixed_forward_cpu"),
    reason="fusenas._C with the pc_mixed kernels not built",
)
ALL_OPS = list(PC_DARTS_PRIMITIVES)
EPS = 1e-5


def _isas() -> list[str]:
    ext = _native.cpu()
    if ext is None:
        return []
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(ext.build_info()["hardware_isa"]) + 1]


def make_inputs(
    n=2, c=8, h=6, w=6, k=2, stride=1, ops=ALL_OPS, scale=True, eval_stats=False,
    channels_last=False, dtype=torch.float32, seed=0, integer_valued=False,
):  # fmt: skip
    """(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps) for the op."""
    g = torch.Generator().manual_seed(seed)
    ck = c // k
    if integer_valued:  # many exact ties inside the pooling windows
        x = torch.randint(-2, 3, (n, c, h, w), generator=g).to(dtype)
    else:
        x = torch.randn(n, c, h, w, generator=g, dtype=dtype) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kinds = candidate_kinds(tuple(ops), stride)
    params = []
    for i in range(kinds.count(KIND_PARAMETRIC)):
        p = torch.randn(n, ck, h // stride, w // stride, generator=g, dtype=dtype)
        if channels_last and i % 2 == 0:  # mixed formats among the parametric outputs
            p = p.contiguous(memory_format=torch.channels_last)
        params.append(p)
    weights = torch.softmax(torch.randn(len(ops), generator=g, dtype=dtype), 0)
    edge_scale = torch.tensor(0.8, dtype=dtype) if scale else None
    pool_stats = None
    if eval_stats:
        pool_stats = torch.stack(
            [torch.randn(2, ck, generator=g) * 0.2, torch.rand(2, ck, generator=g) + 0.5], dim=1
        )
    return x, params, weights, edge_scale, pool_stats, list(ops), k, stride, EPS


def _leaves(args):
    x, params, weights, scale, pool_stats, *rest = args
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in params]
    weights = weights.detach().clone().requires_grad_()
    scale = None if scale is None else scale.detach().clone().requires_grad_()
    return (x, params, weights, scale, pool_stats, *rest)


def _grad_inputs(args):
    x, params, weights, scale = args[:4]
    return [x, *params, weights] + ([] if scale is None else [scale])


def run_with_grads(fn, args, seed=1):
    """Outputs and the gradients of every differentiable input for a fixed random grad_out."""
    args = _leaves(args)
    out, stats = fn(*args)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, _grad_inputs(args), g)
    return out, stats, list(grads)


def native(*args):
    return torch.ops.fusenas.pc_mixed_op(*args)


def assert_native_matches_reference(args, atol=2e-5, rtol=2e-5):
    out, stats, grads = run_with_grads(native, args)
    ref_out, ref_stats, ref_grads = run_with_grads(pc_mixed_op_reference, args)
    x = args[0]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(stats, ref_stats, atol=atol, rtol=rtol)
    names = ["x"] + [f"param_outs[{i}]" for i in range(len(args[1]))] + ["weights", "edge_scale"]
    for name, a, b in zip(names, grads, ref_grads, strict=False):
        # weights / edge_scale gradients are sums over every element: scale the tolerance.
        tol = atol * (math.sqrt(out.numel()) if name in ("weights", "edge_scale") else 1)
        torch.testing.assert_close(a, b, atol=tol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------


def _pc_darts_mixed_op_by_hand(x, params, weights, scale, ops, k, stride):
    """PC-DARTS' MixedOp with nn modules (BatchNorm2d(affine=False) in training mode)."""
    ck = x.shape[1] // k
    xa, xb = x[:, :ck], x[:, ck:]
    modules = {
        "max_pool_3x3": torch.nn.Sequential(
            torch.nn.MaxPool2d(3, stride, 1), torch.nn.BatchNorm2d(ck, affine=False)
        ),
        "avg_pool_3x3": torch.nn.Sequential(
            torch.nn.AvgPool2d(3, stride, 1, count_include_pad=False),
            torch.nn.BatchNorm2d(ck, affine=False),
        ),
    }
    it = iter(params)
    terms = []
    for w, name in zip(weights, ops, strict=True):
        if name == "none":
            terms.append(w * xa[:, :, ::stride, ::stride].mul(0.0))
        elif name in modules:
            terms.append(w * modules[name].double().train()(xa))
        elif name == "skip_connect" and stride == 1:
            terms.append(w * xa)
        else:
            terms.append(w * next(it))
    y = sum(terms)
    bypass = xb if stride == 1 else torch.nn.MaxPool2d(2, 2)(xb)
    ans = torch.cat([y, bypass], dim=1)
    n, c, h, w_ = ans.shape
    ans = ans.view(n, k, c // k, h, w_).transpose(1, 2).contiguous().view(n, c, h, w_)
    return ans * scale


@pytest.mark.parametrize("stride", [1, 2])
def test_reference_matches_pc_darts_modules(stride):
    args = make_inputs(n=3, c=12, h=8, w=6, k=4, stride=stride, dtype=torch.float64)
    x, params, weights, scale, _, ops, k, _, _ = args
    out, stats = pc_mixed_op_reference(*args)
    expected = _pc_darts_mixed_op_by_hand(x, params, weights, scale, ops, k, stride)
    torch.testing.assert_close(out, expected)
    xa = x[:, : 12 // 4]
    mp = torch.nn.functional.max_pool2d(xa, 3, stride, 1)
    torch.testing.assert_close(stats[0, 0], mp.mean((0, 2, 3)).float())
    torch.testing.assert_close(stats[0, 1], mp.var((0, 2, 3), unbiased=False).float())


@pytest.mark.parametrize(
    "k,stride,scale,eval_stats,channels_last",
    list(itertools.product([3, 1], [1, 2], [False, True], [False, True], [False, True])),
)
def test_backward_reference_matches_autograd(k, stride, scale, eval_stats, channels_last):
    # k = 1 is plain DARTS (nothing bypassed); the reference is also the fallback path.
    args = make_inputs(
        n=3, c=6, h=6, w=4, k=k, stride=stride, scale=scale, eval_stats=eval_stats,
        channels_last=channels_last, dtype=torch.float64,
    )  # fmt: skip
    out, stats, grads = run_with_grads(pc_mixed_op_reference, args)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    x, params, weights, es, _, ops, k, stride, eps = args
    gx, gp, gw, gs = pc_mixed_op_backward_reference(
        g, x, params, weights, es, stats, not eval_stats, ops, k, stride, eps
    )
    mine = [gx, *gp, gw] + ([gs] if scale else [])
    assert len(mine) == len(grads)
    for a, b in zip(mine, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if not scale:
        assert gs.shape == (0,)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("eval_stats", [False, True])
def test_gradcheck_reference_float64(stride, eval_stats):
    args = make_inputs(n=2, c=4, h=4, w=4, k=2, stride=stride, eval_stats=eval_stats,
                       dtype=torch.float64)  # fmt: skip
    x, params, weights, scale, pool_stats, ops, k, stride, eps = _leaves(args)
    npar = len(params)

    def f(x, weights, scale, *params):
        return pc_mixed_op_reference(x, list(params), weights, scale, pool_stats, ops, k, stride,
                                     eps)[0]  # fmt: skip

    assert torch.autograd.gradcheck(
        f, (x, weights, scale, *params), eps=1e-6, atol=1e-5, fast_mode=True
    )
    assert npar == candidate_kinds(tuple(ops), stride).count(KIND_PARAMETRIC)


# ---------------------------------------------------------------------------
# Native kernel against the reference
# ---------------------------------------------------------------------------

SHAPES = [  # (N, C, H, W, K, stride)
    (2, 8, 6, 6, 2, 1),
    (2, 8, 6, 6, 2, 2),
    (1, 3, 5, 7, 3, 1),  # N=1, C/K = 1, odd H and W
    (3, 20, 9, 5, 4, 1),  # C/K = 5, not a multiple of any SIMD width
    (2, 34, 18, 34, 2, 1),  # C/K = 17, rows wider than one AVX-512 vector
    (2, 34, 18, 34, 2, 2),
    (2, 12, 2, 2, 12, 2),  # 1x1 output, C/K = 1
    (1, 4, 1, 1, 1, 1),  # 1x1 map, K = 1 (no bypass), N=1 with eval stats only
    (4, 16, 8, 8, 8, 2),
    (2, 6, 10, 16, 2, 2),  # rows of exactly one AVX-512 vector (register path)
    (2, 6, 3, 17, 3, 1),  # one lane wider: the general path
]


def _shape_args(shape, **kw):
    n, c, h, w, k, stride = shape
    if n * (h // stride) * (w // stride) == 1:
        kw["eval_stats"] = True
    return make_inputs(n=n, c=c, h=h, w=w, k=k, stride=stride, **kw)


@needs_native
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("channels_last", [False, True])
def test_native_matches_reference(isa, channels_last, monkeypatch):
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for i, shape in enumerate(SHAPES):
        for scale, eval_stats in itertools.product([False, True], [False, True]):
            args = _shape_args(shape, scale=scale, eval_stats=eval_stats,
                               channels_last=channels_last, seed=i)  # fmt: skip
            assert_native_matches_reference(args)


def _all_subsets():
    return [list(c) for r in range(1, len(ALL_OPS) + 1) for c in itertools.combinations(ALL_OPS, r)]


@needs_native
@pytest.mark.parametrize("stride", [1, 2])
def test_native_every_candidate_subset(stride):
    subsets = _all_subsets()
    assert len(subsets) == 255
    for i, ops in enumerate(subsets):
        args = make_inputs(n=2, c=6, h=4, w=6, k=2, stride=stride, ops=ops, scale=i % 2 == 0,
                           channels_last=i % 3 == 0, seed=i)  # fmt: skip
        assert_native_matches_reference(args)


@needs_native
def test_native_parametric_only_and_parameter_free_only():
    for ops in (ALL_OPS[4:], ALL_OPS[:4], ["none"], ["skip_connect"], ["max_pool_3x3"]):
        for stride in (1, 2):
            assert_native_matches_reference(make_inputs(n=2, c=8, h=6, w=6, ops=ops, stride=stride))


@needs_native
@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("stride", [1, 2])
def test_native_max_pool_ties_route_like_torch(isa, stride, monkeypatch):
    # Integer-valued input: most 3x3 (and 2x2 bypass) windows hold several equal
    # maxima; the gradient must go where torch's first-max-in-scan-order puts it.
    monkeypatch.setenv("FUSENAS_CPU_ISA", isa)
    for cl in (False, True):
        args = make_inputs(n=2, c=8, h=8, w=10, k=2, stride=stride, integer_valued=True,
                           ops=["max_pool_3x3"], channels_last=cl)  # fmt: skip
        assert_native_matches_reference(args)


@needs_native
def test_native_eval_stats_are_passed_through():
    args = make_inputs(ops=["max_pool_3x3", "sep_conv_3x3"], eval_stats=True)
    _, stats = native(*args)
    pool_stats = args[4]
    torch.testing.assert_close(stats[0], pool_stats[0])
    assert torch.count_nonzero(stats[1]) == 0  # avg pool absent: zero row


@needs_native
def test_native_larger_shape_and_threads():
    # A benchmark-sized edge, several threads: per-thread partial sums must add up.
    args = make_inputs(n=16, c=32, h=16, w=16, k=4, stride=1, seed=3)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_native_matches_reference(args, atol=5e-5, rtol=5e-5)
    finally:
        torch.set_num_threads(prev)


def _directional_fd(args, index, direction, h):
    """(L(t + h d) - L(t - h d)) / 2h for L = sum(out * g), perturbing input `index`."""
    g = torch.randn(
        args[0].shape[0], args[0].shape[1], args[0].shape[2] // args[7],
        args[0].shape[3] // args[7], generator=torch.Generator().manual_seed(1),
    )  # fmt: skip

    def loss(delta):
        a = list(args)
        a[1] = list(a[1])
        if index == "x":
            a[0] = a[0] + delta
        elif index == "weights":
            a[2] = a[2] + delta
        elif index == "edge_scale":
            a[3] = a[3] + delta
        else:
            a[1][index] = a[1][index] + delta
        out, _ = native(*a)
        return (out.double() * g.double()).sum().item()

    return (loss(h * direction) - loss(-h * direction)) / (2 * h), g


@needs_native
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("eval_stats", [False, True])
def test_native_backward_finite_differences(stride, eval_stats):
    args = make_inputs(n=2, c=8, h=6, w=8, k=2, stride=stride, eval_stats=eval_stats, seed=5)
    # Distinct values at least 0.01 apart: no pooling window changes its
    # maximum under the +-h perturbations, so the loss is smooth where probed.
    x = torch.randperm(args[0].numel(), generator=torch.Generator().manual_seed(2))
    args = (x.float().reshape(args[0].shape) * 0.01 - 3.0, *args[1:])
    x, params, weights, scale = args[:4]
    leaves = _leaves(args)
    out, _ = native(*leaves)
    gen = torch.Generator().manual_seed(11)
    targets = {"x": x, "weights": weights, "edge_scale": scale, 0: params[0], 1: params[1]}
    for key, t in targets.items():
        direction = torch.randn(t.shape, generator=gen)
        fd, g = _directional_fd(args, key, direction, 1e-3)
        inp = {"x": leaves[0], "weights": leaves[2], "edge_scale": leaves[3]}.get(key)
        if inp is None:
            inp = leaves[1][key]
        (grad,) = torch.autograd.grad(out, inp, g, retain_graph=True)
        analytic = (grad.double() * direction.double()).sum().item()
        assert fd == pytest.approx(analytic, rel=2e-3, abs=2e-3), key


# ---------------------------------------------------------------------------
# torch.library contracts, other dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(stride=1),
        dict(stride=2, channels_last=True),
        dict(stride=1, scale=False, eval_stats=True),
        dict(stride=2, ops=["max_pool_3x3", "avg_pool_3x3", "none"]),
    ],
)
def test_opcheck(kw):
    args = _leaves(make_inputs(n=2, c=4, h=4, w=4, **kw))
    torch.library.opcheck(torch.ops.fusenas.pc_mixed_op.default, args)
    out, stats = native(*args)
    g = torch.randn_like(out)
    x, params, weights, scale, pool_stats, ops, k, stride, eps = args
    bargs = (g, x.detach(), [p.detach() for p in params], weights.detach(),
             None if scale is None else scale.detach(), stats, pool_stats is None, ops, k,
             stride, eps)  # fmt: skip
    torch.library.opcheck(torch.ops.fusenas.pc_mixed_op_backward.default, bargs)


def test_torch_compile_fullgraph_forward_and_backward():
    args = _leaves(make_inputs(n=2, c=8, h=6, w=6, k=2, stride=1))
    x, params, weights, scale, _, ops, k, stride, eps = args

    def f(x, p0, p1, p2, p3, weights, scale):
        out, stats = pc_mixed_op(x, [p0, p1, p2, p3], weights, ops=ops, k=k, stride=stride,
                                 edge_scale=scale, eps=eps)  # fmt: skip
        return (out * out).sum() + stats.sum()

    inputs = (x, *params, weights, scale)
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    loss_c = compiled(*inputs)
    grads_c = torch.autograd.grad(loss_c, inputs)
    loss_e = f(*inputs)
    grads_e = torch.autograd.grad(loss_e, inputs)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_run_the_reference(dtype, monkeypatch):
    monkeypatch.setattr(_native, "_warned", set())  # the warning is once per process
    args = make_inputs(dtype=dtype)
    with pytest.warns(RuntimeWarning, match="reference") if dtype == torch.bfloat16 else _noop():
        out, stats, grads = run_with_grads(native, args)
    ref_out, ref_stats, ref_grads = run_with_grads(pc_mixed_op_reference, args)
    torch.testing.assert_close(out, ref_out)
    # The backward runs in float32 and rounds once; autograd of the bfloat16
    # reference rounds after every op.
    tol = dict(atol=6e-2, rtol=3e-2) if dtype == torch.bfloat16 else {}
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_public_wrapper_matches_op():
    args = make_inputs()
    x, params, weights, scale, pool_stats, ops, k, stride, eps = args
    out, stats = pc_mixed_op(x, params, weights, ops=ops, k=k, stride=stride, edge_scale=scale)
    ref_out, ref_stats = pc_mixed_op_reference(*args)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(stats, ref_stats)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _replace(args, **changes):
    names = ["x", "param_outs", "weights", "edge_scale", "pool_stats", "ops", "k", "stride", "eps"]
    d = dict(zip(names, args, strict=True))
    d.update(changes)
    return tuple(d[n] for n in names)


_BASE = make_inputs(n=2, c=8, h=6, w=6, k=2, stride=1)
_X, _P, _W = _BASE[0], _BASE[1], _BASE[2]

BAD = {
    "c_not_divisible_by_k": (dict(k=3), ValueError, "k: expected a divisor"),
    "k_zero": (dict(k=0), ValueError, "k: expected an integer >= 1"),
    "too_few_weights": (dict(weights=_W[:-1]), ValueError, r"weights: expected shape \(8,\)"),
    "weights_2d": (dict(weights=_W[None]), ValueError, "weights: expected shape"),
    "too_few_param_outs": (dict(param_outs=_P[:-1]), ValueError, "param_outs: expected 4"),
    "too_many_param_outs": (dict(param_outs=[*_P, _P[0]]), ValueError, "param_outs: expected 4"),
    "param_out_shape": (dict(param_outs=[_P[0][:, :, :-1], *_P[1:]]), ValueError,
                        r"param_outs\[0\]: expected shape"),
    "unknown_candidate": (dict(ops=[*ALL_OPS[:-1], "conv_7x7"]), ValueError,
                          "ops: unknown candidate 'conv_7x7'"),
    "duplicate_candidate": (dict(ops=["none", "none"], weights=_W[:2], param_outs=[]),
                            ValueError, "ops: expected each candidate at most once"),
    "empty_ops": (dict(ops=[], weights=_W[:0], param_outs=[]), ValueError, "ops: expected a "
                  "non-empty"),
    "weights_dtype": (dict(weights=_W.double()), TypeError, "weights: expected dtype"),
    "param_dtype": (dict(param_outs=[_P[0].double(), *_P[1:]]), TypeError,
                    r"param_outs\[0\]: expected dtype"),
    "scale_dtype": (dict(edge_scale=torch.tensor(1.0, dtype=torch.float64)), TypeError,
                    "edge_scale: expected dtype"),
    "scale_shape": (dict(edge_scale=torch.ones(1)), ValueError, "edge_scale: expected a 0-dim"),
    "x_meta_device": (dict(x=_X.to("meta")), ValueError, "expected a tensor on meta"),
    "weights_meta_device": (dict(weights=_W.to("meta")), ValueError,
                            "weights: expected a tensor on cpu"),
    "stride_3": (dict(stride=3), ValueError, "stride: expected 1 or 2"),
    "odd_h_stride_2": (dict(x=_X[:, :, :5].contiguous(), stride=2), ValueError,
                       "stride 2 needs even H"),
    "pool_stats_shape": (dict(pool_stats=torch.ones(2, 2, 3)), ValueError,
                         r"pool_stats: expected float32 of shape \(2, 2, 4\)"),
    "pool_stats_dtype": (dict(pool_stats=torch.ones(2, 2, 4, dtype=torch.float64)), ValueError,
                         "pool_stats: expected float32"),
    "x_3d": (dict(x=_X[0]), ValueError, "x: expected a 4-D tensor"),
    "x_int": (dict(x=_X.long()), TypeError, "x: expected a floating-point"),
    "x_strided": (dict(x=_X[:, :, :, ::2].repeat(1, 1, 1, 2)[:, :, :, ::2].transpose(2, 3)),
                  ValueError, "x: expected an NCHW-contiguous or channels_last"),
    "eps_negative": (dict(eps=-1.0), ValueError, "eps: expected a positive"),
    "single_value_batch_norm": (dict(x=_X[:1, :, :1, :1].clone(),
                                     param_outs=[p[:1, :, :1, :1].clone() for p in _P]),
                                ValueError, "more than one value per channel"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    changes, exc, match = BAD[case]
    args = _replace(_BASE, **changes)
    with pytest.raises(exc, match=match):
        torch.ops.fusenas.pc_mixed_op(*args)


def test_bad_input_wrapper_and_check_function():
    with pytest.raises(TypeError, match=r"param_outs\[0\]: expected a torch.Tensor"):
        pc_mixed_op(_X, [1.0, *_P[1:]], _W, ops=ALL_OPS, k=2)
    with pytest.raises(TypeError, match="param_outs: expected a list"):
        pc_mixed_op(_X, _P[0], _W, ops=ALL_OPS, k=2)
    with pytest.raises(TypeError, match="ops: expected a list of candidate names"):
        pc_mixed_op(_X, _P, _W, ops=[*ALL_OPS[:-1], 3], k=2)
    with pytest.raises(ValueError, match="k: expected a divisor"):
        pc_mixed_op(_X, _P, _W, ops=ALL_OPS, k=3)
    with pytest.raises(ValueError, match="stride: expected 1 or 2"):
        check_pc_mixed_args(*_replace(_BASE, stride=0))


def test_bad_grad_out_for_backward():
    out, stats = pc_mixed_op_reference(*_BASE)
    x, params, weights, scale, _, ops, k, stride, eps = _BASE
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        torch.ops.fusenas.pc_mixed_op_backward(
            out[:, :-1], x, params, weights, scale, stats, True, ops, k, stride, eps
        )
    with pytest.raises(ValueError, match="stats: expected float32 of shape"):
        torch.ops.fusenas.pc_mixed_op_backward(
            out, x, params, weights, scale, stats[:1], True, ops, k, stride, eps
        )


@needs_native
def test_eager_fast_path_matches_registered_op():
    # pc_mixed_op takes an autograd.Function shortcut for plain eager CPU
    # tensors; it must agree with the registered op, outputs and gradients.
    args = make_inputs(n=2, c=8, h=6, w=6, k=2, stride=2, channels_last=True)
    out, stats, grads = run_with_grads(native, args)

    def wrapper(x, params, weights, scale, pool_stats, ops, k, stride, eps):
        return pc_mixed_op(x, params, weights, ops=ops, k=k, stride=stride, edge_scale=scale,
                           eps=eps, pool_stats=pool_stats)  # fmt: skip

    out2, stats2, grads2 = run_with_grads(wrapper, args)
    assert out2.grad_fn is not None and "EagerCpu" in type(out2.grad_fn).__name__
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(stats2, stats, rtol=0, atol=0)
    for a, b in zip(grads2, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

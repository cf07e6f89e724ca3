"""torch.ops.fusenas.pc_mixed_op: one PC-DARTS edge's mixing step as a single op.

PC-DARTS (arXiv 1907.05737) sends the first C/K channels of an edge through the
candidate ops and lets the rest bypass. Its reference code builds the edge from
many small tensor ops (slice, candidates each kept for backward, weighted sum,
cat, channel shuffle). This op takes the parametric candidates' outputs (the
convolutions, computed by torch) and does everything else in one pass: the
parameter-free candidates (zero, 3x3 max/avg pool each with batch-norm, skip)
are computed on the fly, never materialised, and recomputed in backward.

    out, stats = torch.ops.fusenas.pc_mixed_op(x, param_outs, weights, edge_scale,
                                               pool_stats, ops, k, stride, eps)

Semantics (the contract in notes/CONTRACTS.md; ``pc_mixed_op_reference`` is the
executable definition): xa = x[:, :C/K] goes through the candidates, y = sum_o
weights[o] * cand_o(xa); the bypass is x[:, C/K:] (MaxPool2d(2, 2) of it at
stride 2); out = channel_shuffle(cat([y, bypass]), K) * edge_scale. ``stats``
(2, 2, C/K) float32 holds the [max, avg] x [mean, biased var] the pools'
batch-norm used (zero rows for pools not in ``ops``).

Registered with torch.library (CPU kernel, CompositeExplicitAutograd reference
for other devices, fake kernels, autograd through ``pc_mixed_op_backward``), so
it runs under torch.compile(fullgraph=True) and passes opcheck. Arguments are
validated here before any native call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fusenas.ops import _native
from fusenas.ops.avg_pool import avg_pool2d, avg_pool2d_backward

PC_DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Every name an edge may carry: PC-DARTS' candidates plus NAS-Bench-201's two
# convolutions (parametric: computed by torch and passed in param_outs).
KNOWN_CANDIDATES = PC_DARTS_PRIMITIVES + ("nor_conv_1x1", "nor_conv_3x3")

# Candidate kinds as the native kernel numbers them (csrc/include/fusenas/pc_mixed.h).
KIND_NONE, KIND_MAX_POOL, KIND_AVG_POOL, KIND_SKIP, KIND_PARAMETRIC = 0, 1, 2, 3, 4
_POOL_ROW = {"max_pool_3x3": 0, "avg_pool_3x3": 1}

torch.library.define(
    "fusenas::pc_mixed_op",
    "(Tensor x, Tensor[] param_outs, Tensor weights, Tensor? edge_scale, Tensor? pool_stats, "
    "str[] ops, int k, int stride, float eps) -> (Tensor out, Tensor stats)",
)
torch.library.define(
    "fusenas::pc_mixed_op_backward",
    "(Tensor grad_out, Tensor x, Tensor[] param_outs, Tensor weights, Tensor? edge_scale, "
    "Tensor stats, bool batch_stats, str[] ops, int k, int stride, float eps) -> "
    "(Tensor grad_x, Tensor[] grad_param_outs, Tensor grad_weights, Tensor grad_edge_scale)",
)


@functools.lru_cache(maxsize=256)
def candidate_kinds(ops: tuple[str, ...], stride: int) -> tuple[int, ...]:
    """Kind of each candidate: none / max pool / avg pool / skip (stride 1) / parametric.

    skip_connect is the identity at stride 1 and FactorizedReduce (a parametric
    candidate, given in param_outs) at stride 2.
    """
    internal = {"none": KIND_NONE, "max_pool_3x3": KIND_MAX_POOL, "avg_pool_3x3": KIND_AVG_POOL}
    if stride == 1:
        internal["skip_connect"] = KIND_SKIP
    return tuple(internal.get(name, KIND_PARAMETRIC) for name in ops)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last when t is dense in that format and not NCHW-contiguous, else contiguous."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _is_dense_4d(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _check_same(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (x's device), got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (x's dtype), got {t.dtype}")


def check_pc_mixed_args(
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    edge_scale: torch.Tensor | None,
    pool_stats: torch.Tensor | None,
    ops: Sequence[str],
    k: int,
    stride: int,
    eps: float,
    *,
    forward: bool = True,
) -> tuple[int, int, int]:
    """Validates pc_mixed_op's arguments; returns (Ck, Ho, Wo).

    Raises ValueError / TypeError naming the argument and what was expected.
    ``forward=False`` skips what only the forward decides (batch statistics of a
    single value), for the backward op.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if min(n, c, h, w) < 1:
        raise ValueError(f"x: expected every dimension >= 1, got shape {tuple(x.shape)}")
    if not _is_dense_4d(x):
        raise ValueError("x: expected an NCHW-contiguous or channels_last tensor")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if c % k != 0:
        raise ValueError(f"k: expected a divisor of x's channel count {c}, got {k}")
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"stride: expected 1 or 2, got {stride!r}")
    if stride == 2 and (h % 2 or w % 2):
        raise ValueError(f"x: stride 2 needs even H and W, got H={h}, W={w}")
    if not isinstance(eps, float | int) or not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    ck, ho, wo = c // k, h // stride, w // stride
    if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
        raise ValueError(f"ops: expected a non-empty list of candidate names, got {ops!r}")
    for name in ops:
        if name not in KNOWN_CANDIDATES:
            raise ValueError(
                f"ops: unknown candidate {name!r}; expected names from {KNOWN_CANDIDATES}"
            )
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops: expected each candidate at most once, got {list(ops)}")
    kinds = candidate_kinds(tuple(ops), stride)
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights: expected a torch.Tensor, got {type(weights).__name__}")
    _check_same("weights", weights, x)
    if tuple(weights.shape) != (len(ops),):
        raise ValueError(
            f"weights: expected shape ({len(ops)},) (one per entry of ops), "
            f"got {tuple(weights.shape)}"
        )
    n_param = kinds.count(KIND_PARAMETRIC)
    if isinstance(param_outs, torch.Tensor) or not isinstance(param_outs, Sequence):
        raise TypeError(f"param_outs: expected a list of tensors, got {type(param_outs).__name__}")
    if len(param_outs) != n_param:
        names = [o for o, kd in zip(ops, kinds, strict=True) if kd == KIND_PARAMETRIC]
        raise ValueError(
            f"param_outs: expected {n_param} tensors (outputs of {names} at stride {stride}), "
            f"got {len(param_outs)}"
        )
    for i, p in enumerate(param_outs):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"param_outs[{i}]: expected a torch.Tensor, got {type(p).__name__}")
        _check_same(f"param_outs[{i}]", p, x)
        if tuple(p.shape) != (n, ck, ho, wo):
            raise ValueError(
                f"param_outs[{i}]: expected shape {(n, ck, ho, wo)} (N, C/K, H/stride, "
                f"W/stride), got {tuple(p.shape)}"
            )
        if not _is_dense_4d(p):
            raise ValueError(
                f"param_outs[{i}]: expected an NCHW-contiguous or channels_last tensor"
            )
    if edge_scale is not None:
        if not isinstance(edge_scale, torch.Tensor):
            raise TypeError(f"edge_scale: expected a 0-dim tensor or None, got {edge_scale!r}")
        _check_same("edge_scale", edge_scale, x)
        if edge_scale.dim() != 0:
            raise ValueError(
                f"edge_scale: expected a 0-dim tensor, got shape {tuple(edge_scale.shape)}"
            )
    if pool_stats is not None:
        if not isinstance(pool_stats, torch.Tensor):
            raise TypeError(f"pool_stats: expected a tensor or None, got {pool_stats!r}")
        if pool_stats.device != x.device:
            raise ValueError(
                f"pool_stats: expected a tensor on {x.device} (x's device), got {pool_stats.device}"
            )
        if pool_stats.dtype != torch.float32 or tuple(pool_stats.shape) != (2, 2, ck):
            raise ValueError(
                f"pool_stats: expected float32 of shape (2, 2, {ck}) ([max, avg] x [mean, var] "
                f"per processed channel), got {pool_stats.dtype} {tuple(pool_stats.shape)}"
            )
    elif forward and n * ho * wo == 1 and (KIND_MAX_POOL in kinds or KIND_AVG_POOL in kinds):
        raise ValueError(
            "x: batch-norm of a pooled map in training mode needs more than one value per "
            f"channel, got N*Ho*Wo = 1 (x of shape {tuple(x.shape)}); pass pool_stats"
        )
    return ck, ho, wo


def _check_backward_args(grad_out, x, param_outs, weights, edge_scale, stats, ops, k, stride, eps):
    ck, ho, wo = check_pc_mixed_args(
        x, param_outs, weights, edge_scale, None, ops, k, stride, eps, forward=False
    )
    if not isinstance(grad_out, torch.Tensor):
        raise TypeError(f"grad_out: expected a torch.Tensor, got {type(grad_out).__name__}")
    _check_same("grad_out", grad_out, x)
    expected = (x.shape[0], x.shape[1], ho, wo)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out: expected shape {expected}, got {tuple(grad_out.shape)}")
    if stats.device != x.device or stats.dtype != torch.float32 or stats.shape != (2, 2, ck):
        raise ValueError(
            f"stats: expected float32 of shape (2, 2, {ck}) on {x.device}, got {stats.dtype} "
            f"{tuple(stats.shape)} on {stats.device}"
        )
    return ck, ho, wo


# ---------------------------------------------------------------------------
# Pure-torch reference (the PC-DARTS formulation) and its analytic backward
# ---------------------------------------------------------------------------


def channel_shuffle(t: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' channel_shuffle: view (N, groups, C/groups, H, W), swap dims 1 and 2, flatten."""
    n, c, h, w = t.shape
    return t.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _channel_unshuffle(t: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _pool(name: str, xa: torch.Tensor, stride: int) -> torch.Tensor:
    if name == "max_pool_3x3":
        return F.max_pool2d(xa, 3, stride, 1)
    return avg_pool2d(xa, 3, stride, 1, count_include_pad=False)


def _batch_var_mean(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(p.detach().float(), dim=(0, 2, 3), unbiased=False)
    return mean, var


def pc_mixed_op_reference(
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    edge_scale: torch.Tensor | None,
    pool_stats: torch.Tensor | None,
    ops: Sequence[str],
    k: int,
    stride: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PC-DARTS' MixedOp from torch ops (differentiable): returns (out, stats).

    Written as the reference code computes it: slice, candidates, weighted sum,
    cat with the bypass, channel_shuffle, then the edge scale. Pools use
    BatchNorm2d(affine=False) with batch statistics (pool_stats None) or with
    pool_stats ([max, avg] x [mean, var], eval mode).
    """
    ck = x.shape[1] // k
    xa, xb = x[:, :ck], x[:, ck:]
    stats = x.new_zeros((2, 2, ck), dtype=torch.float32)
    params = iter(param_outs)
    kinds = candidate_kinds(tuple(ops), stride)
    y = None
    for name, kind, w in zip(ops, kinds, weights, strict=True):
        if kind == KIND_NONE:
            cand = xa[:, :, ::stride, ::stride].mul(0.0)  # PC-DARTS' Zero op
        elif kind == KIND_SKIP:
            cand = xa
        elif kind == KIND_PARAMETRIC:
            cand = next(params)
        else:
            row = _POOL_ROW[name]
            p = _pool(name, xa, stride)
            if pool_stats is None:
                stats[row, 0], stats[row, 1] = _batch_var_mean(p)
                cand = F.batch_norm(p, None, None, training=True, eps=eps)
            else:
                stats[row] = pool_stats[row]
                mean, var = pool_stats[row, 0].to(p.dtype), pool_stats[row, 1].to(p.dtype)
                cand = F.batch_norm(p, mean, var, training=False, eps=eps)
        y = w * cand if y is None else y + w * cand
    if stride == 1:
        bypass = xb
    elif xb.shape[1] == 0:  # k = 1: nothing bypassed (max_pool2d rejects 0 channels)
        bypass = y.new_empty((y.shape[0], 0, *y.shape[2:]))
    else:
        bypass = F.max_pool2d(xb, 2, 2)
    out = channel_shuffle(torch.cat([y, bypass], dim=1), k)
    if edge_scale is not None:
        out = out * edge_scale
    return out.contiguous(memory_format=memory_format_of(x)), stats


def pc_mixed_op_backward_reference(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    edge_scale: torch.Tensor | None,
    stats: torch.Tensor,
    batch_stats: bool,
    ops: Sequence[str],
    k: int,
    stride: int,
    eps: float,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Analytic backward of pc_mixed_op_reference from torch ops (no autograd needed).

    ``stats`` are the statistics the forward used; ``batch_stats`` says whether
    they were batch statistics (gradients then flow through them). Returns
    (grad_x, grad_param_outs, grad_weights, grad_edge_scale); grad_edge_scale is
    0-dim when edge_scale is given, else empty (shape (0,)).
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dtype = x.dtype
    x_, g_ = x.detach().to(acc), grad_out.detach().to(acc)
    w_ = weights.detach().to(acc)
    s = 1.0 if edge_scale is None else edge_scale.detach().to(acc)
    ck = x.shape[1] // k
    xa, xb = x_[:, :ck], x_[:, ck:]
    gz = _channel_unshuffle(g_, k)
    dy = gz[:, :ck] * s
    kinds = candidate_kinds(tuple(ops), stride)
    grad_xa = torch.zeros_like(xa)
    grad_w = torch.zeros(len(ops), dtype=acc, device=x.device)
    grad_params = []
    params = iter(param_outs)
    for i, (name, kind) in enumerate(zip(ops, kinds, strict=True)):
        if kind == KIND_NONE:
            continue
        if kind == KIND_SKIP:
            grad_w[i] = (dy * xa).sum()
            grad_xa = grad_xa + w_[i] * dy
        elif kind == KIND_PARAMETRIC:
            p = next(params).detach().to(acc)
            grad_w[i] = (dy * p).sum()
            grad_params.append((w_[i] * dy).to(dtype))
        else:
            row = _POOL_ROW[name]
            if name == "max_pool_3x3":
                p, idx = F.max_pool2d(xa, 3, stride, 1, return_indices=True)
            else:
                p = avg_pool2d(xa, 3, stride, 1, count_include_pad=False)
            if batch_stats:  # recomputed at full precision (stats holds float32)
                var, mean = torch.var_mean(p, dim=(0, 2, 3), unbiased=False, keepdim=True)
            else:
                mean = stats[row, 0].to(acc).view(1, -1, 1, 1)
                var = stats[row, 1].to(acc).view(1, -1, 1, 1)
            rstd = (var + eps).rsqrt()
            xhat = (p - mean) * rstd
            grad_w[i] = (dy * xhat).sum()
            dc = w_[i] * dy
            if batch_stats:
                dims = (0, 2, 3)
                dc = dc - dc.mean(dims, keepdim=True) - xhat * (dc * xhat).mean(dims, keepdim=True)
            dp = dc * rstd
            if name == "max_pool_3x3":
                grad_xa = grad_xa + torch.ops.aten.max_pool2d_with_indices_backward(
                    dp, xa, [3, 3], [stride, stride], [1, 1], [1, 1], False, idx
                )
            else:
                grad_xa = grad_xa + avg_pool2d_backward(
                    dp, xa, [3, 3], [stride, stride], [1, 1], False, False, None
                )
    gb = gz[:, ck:] * s
    if stride == 1:
        grad_xb = gb
    elif xb.shape[1] == 0:  # k = 1: nothing bypassed
        grad_xb = torch.zeros_like(xb, dtype=grad_xa.dtype)
    else:
        _, idx = F.max_pool2d(xb, 2, 2, return_indices=True)
        grad_xb = torch.ops.aten.max_pool2d_with_indices_backward(
            gb, xb, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
        )
    grad_x = torch.cat([grad_xa, grad_xb], dim=1).to(dtype)
    if edge_scale is None:
        grad_scale = x.new_empty((0,))
    else:
        unscaled, _ = pc_mixed_op_reference(
            x_,
            [p.detach().to(acc) for p in param_outs],
            w_,
            None,
            None if batch_stats else stats,
            ops,
            k,
            stride,
            eps,
        )
        grad_scale = (g_ * unscaled).sum().to(dtype)
    grad_x = grad_x.contiguous(memory_format=memory_format_of(x))
    grad_params = [
        gp.contiguous(memory_format=memory_format_of(p))
        for gp, p in zip(grad_params, param_outs, strict=True)
    ]
    return grad_x, grad_params, grad_w.to(dtype), grad_scale


# ---------------------------------------------------------------------------
# Native CPU kernel
# ---------------------------------------------------------------------------


_MAX_NATIVE_PLANE = 1 << 24


def _view(t: torch.Tensor) -> tuple[int, int, int, int, int]:
    return (t.data_ptr(), *t.stride())


def _native_ok(op: str, x: torch.Tensor) -> bool:
    ext = _native.cpu()
    if ext is None:
        _native.warn_fallback(op, "fusenas._C not built")
        return False
    if not hasattr(ext, "pc_mixed_forward_cpu"):
        _native.warn_fallback(op, "fusenas._C has no pc_mixed kernels (stale build)")
        return False
    if x.dtype != torch.float32:
        _native.warn_fallback(op, f"no CPU kernel for {x.dtype}")
        return False
    if x.shape[2] * x.shape[3] >= _MAX_NATIVE_PLANE:
        # The kernel keeps max-pool positions as float plane offsets (exact below 2^24).
        _native.warn_fallback(op, "H * W >= 2**24")
        return False
    return True


def _scale_ptr(edge_scale: torch.Tensor | None) -> int:
    return 0 if edge_scale is None else edge_scale.data_ptr()


def _pc_mixed_cpu(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps):
    ck, ho, wo = check_pc_mixed_args(
        x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
    )
    if not _native_ok("pc_mixed_op", x):
        return pc_mixed_op_reference(
            x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
        )
    n, c = x.shape[:2]
    out = torch.empty((n, c, ho, wo), dtype=x.dtype, memory_format=memory_format_of(x))
    stats = torch.empty((2, 2, ck), dtype=torch.float32)
    weights = weights.contiguous()
    pool = None if pool_stats is None else pool_stats.contiguous()
    pool_ptr = 0 if pool is None else pool.data_ptr()
    kinds = list(candidate_kinds(tuple(ops), stride))
    _native.cpu().pc_mixed_forward_cpu(
        tuple(x.shape), _view(x), [_view(p) for p in param_outs], weights.data_ptr(),
        _scale_ptr(edge_scale), pool_ptr, kinds, k, stride, float(eps), _view(out),
        stats.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out, stats


def _dense_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Autograd may hand in an expanded or permuted gradient; the kernel reads
    # NCHW-contiguous or channels_last only.
    return t if _is_dense_4d(t) else t.contiguous(memory_format=memory_format_of(like))


def _pc_mixed_backward_cpu(
    grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
):
    _check_backward_args(grad_out, x, param_outs, weights, edge_scale, stats, ops, k, stride, eps)
    if not _native_ok("pc_mixed_op_backward", x):
        return pc_mixed_op_backward_reference(
            grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
        )
    grad_out = _dense_like(grad_out, x)
    grad_x = torch.empty_like(x, memory_format=memory_format_of(x))
    grad_params = [torch.empty_like(p, memory_format=memory_format_of(p)) for p in param_outs]
    grad_w = torch.empty(len(ops), dtype=torch.float32)
    grad_scale = x.new_empty((0,) if edge_scale is None else ())
    weights, stats = weights.contiguous(), stats.contiguous()
    kinds = list(candidate_kinds(tuple(ops), stride))
    scale_grad_ptr = 0 if edge_scale is None else grad_scale.data_ptr()
    _native.cpu().pc_mixed_backward_cpu(
        tuple(x.shape), _view(grad_out), _view(x), [_view(p) for p in param_outs],
        weights.data_ptr(), _scale_ptr(edge_scale), stats.data_ptr(), bool(batch_stats), kinds,
        k, stride, float(eps), _view(grad_x), [_view(g) for g in grad_params], grad_w.data_ptr(),
        scale_grad_ptr, torch.get_num_threads(),
    )  # fmt: skip
    return grad_x, grad_params, grad_w, grad_scale


torch.library.impl("fusenas::pc_mixed_op", "CPU")(_pc_mixed_cpu)
torch.library.impl("fusenas::pc_mixed_op_backward", "CPU")(_pc_mixed_backward_cpu)


@torch.library.impl("fusenas::pc_mixed_op", "CompositeExplicitAutograd")
def _pc_mixed_other(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps):
    # Devices without a kernel here (CUDA registers its own "CUDA" impl).
    check_pc_mixed_args(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps)
    _native.warn_fallback("pc_mixed_op", f"no kernel for device {x.device.type}")
    return pc_mixed_op_reference(
        x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
    )


@torch.library.impl("fusenas::pc_mixed_op_backward", "CompositeExplicitAutograd")
def _pc_mixed_backward_other(
    grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
):
    _check_backward_args(grad_out, x, param_outs, weights, edge_scale, stats, ops, k, stride, eps)
    _native.warn_fallback("pc_mixed_op_backward", f"no kernel for device {x.device.type}")
    return pc_mixed_op_backward_reference(
        grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
    )


@torch.library.register_fake("fusenas::pc_mixed_op")
def _pc_mixed_fake(x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps):
    ck, ho, wo = check_pc_mixed_args(
        x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps
    )
    out = torch.empty(
        (x.shape[0], x.shape[1], ho, wo), dtype=x.dtype, device=x.device,
        memory_format=memory_format_of(x),
    )  # fmt: skip
    return out, x.new_empty((2, 2, ck), dtype=torch.float32)


@torch.library.register_fake("fusenas::pc_mixed_op_backward")
def _pc_mixed_backward_fake(
    grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
):
    _check_backward_args(grad_out, x, param_outs, weights, edge_scale, stats, ops, k, stride, eps)
    grad_x = torch.empty_like(x, memory_format=memory_format_of(x))
    grad_params = [torch.empty_like(p, memory_format=memory_format_of(p)) for p in param_outs]
    grad_scale = x.new_empty((0,) if edge_scale is None else ())
    return grad_x, grad_params, weights.new_empty((len(ops),)), grad_scale


def _setup_context(ctx, inputs, output):
    x, param_outs, weights, edge_scale, pool_stats, ops, k, stride, eps = inputs
    _, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(x, weights, edge_scale, stats, *param_outs)
    ctx.meta = (pool_stats is None, list(ops), k, stride, eps)


def _backward(ctx, grad_out, _grad_stats):
    x, weights, edge_scale, stats, *param_outs = ctx.saved_tensors
    batch_stats, ops, k, stride, eps = ctx.meta
    grad_x, grad_params, grad_w, grad_scale = torch.ops.fusenas.pc_mixed_op_backward(
        grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
    )
    return (
        grad_x,
        list(grad_params),
        grad_w.to(weights.dtype),
        None if edge_scale is None else grad_scale,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("fusenas::pc_mixed_op", _backward, setup_context=_setup_context)


class _EagerCpu(torch.autograd.Function):
    """The CPU kernels behind a plain autograd.Function.

    Same kernels and formulas as the registered op; used by ``pc_mixed_op`` for
    plain eager CPU tensors, where the dispatcher's Python round trips for a
    custom op with autograd cost more than 100 us per forward + backward (a
    fifth of a small edge's time). Tracing, other devices and tensor subclasses
    go through torch.ops.fusenas.pc_mixed_op.
    """

    @staticmethod
    def forward(ctx, x, weights, edge_scale, pool_stats, ops, k, stride, eps, *param_outs):
        out, stats = _pc_mixed_cpu(
            x, list(param_outs), weights, edge_scale, pool_stats, ops, k, stride, eps
        )
        ctx.mark_non_differentiable(stats)
        ctx.save_for_backward(x, weights, edge_scale, stats, *param_outs)
        ctx.meta = (pool_stats is None, ops, k, stride, eps)
        return out, stats

    @staticmethod
    def backward(ctx, grad_out, _grad_stats):
        x, weights, edge_scale, stats, *param_outs = ctx.saved_tensors
        batch_stats, ops, k, stride, eps = ctx.meta
        grad_x, grad_params, grad_w, grad_scale = _pc_mixed_backward_cpu(
            grad_out, x, param_outs, weights, edge_scale, stats, batch_stats, ops, k, stride, eps
        )
        scale_grad = None if edge_scale is None else grad_scale
        return (grad_x, grad_w.to(weights.dtype), scale_grad, None, None, None, None, None,
                *grad_params)  # fmt: skip


def _eager_cpu_fast_path(tensors: Sequence[torch.Tensor | None]) -> bool:
    ext = _native.cpu()
    if ext is None or not hasattr(ext, "pc_mixed_forward_cpu") or not _native.eager_cpu(tensors):
        return False
    x = tensors[0]
    return x.dtype == torch.float32 and x.dim() == 4 and x.shape[2] * x.shape[3] < _MAX_NATIVE_PLANE


def pc_mixed_op(
    x: torch.Tensor,
    param_outs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    *,
    ops: Sequence[str],
    k: int,
    stride: int = 1,
    edge_scale: torch.Tensor | None = None,
    eps: float = 1e-5,
    pool_stats: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PC-DARTS edge's mixing step: (out, stats).

    Args:
        x: (N, C, H, W) float32 (native kernel on CPU) or another float dtype
            (pure-torch reference), NCHW-contiguous or channels_last.
        param_outs: outputs (N, C/k, H/stride, W/stride) of the parametric
            candidates in ``ops`` (sep/dil convs; skip_connect at stride 2), in
            the order they appear in ``ops``; x's dtype and device.
        weights: (len(ops),) mixing weights (softmax of the edge's alphas).
        ops: candidate names from PC_DARTS_PRIMITIVES, each at most once.
        k: partial-channel proportion K (divides C).
        stride: 1, or 2 (needs even H and W; the bypass is MaxPool2d(2, 2)).
        edge_scale: optional 0-dim tensor multiplying the output (edge normalisation).
        eps: batch-norm epsilon of the pools' BatchNorm2d(affine=False).
        pool_stats: None (batch statistics, training) or (2, 2, C/k) float32
            [max, avg] x [mean, var] to normalise with (eval).
    Returns:
        out (N, C, H/stride, W/stride) in x's memory format, and stats
        (2, 2, C/k) float32, the statistics used (zero rows for absent pools).
        Differentiable w.r.t. x, param_outs, weights and edge_scale.
    """
    # The dispatcher would reject these with a message that names no argument.
    if isinstance(param_outs, torch.Tensor) or not isinstance(param_outs, Sequence):
        raise TypeError(f"param_outs: expected a list of tensors, got {type(param_outs).__name__}")
    for i, p in enumerate(param_outs):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"param_outs[{i}]: expected a torch.Tensor, got {type(p).__name__}")
    if isinstance(ops, str) or not all(isinstance(o, str) for o in ops):
        raise TypeError(f"ops: expected a list of candidate names (str), got {ops!r}")
    if _eager_cpu_fast_path([x, weights, edge_scale, pool_stats, *param_outs]):
        return _EagerCpu.apply(x, weights, edge_scale, pool_stats, list(ops), k, stride, eps,
                               *param_outs)  # fmt: skip
    return torch.ops.fusenas.pc_mixed_op(
        x, list(param_outs), weights, edge_scale, pool_stats, list(ops), k, stride, eps
    )

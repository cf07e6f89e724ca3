"""torch.ops.fusenas.lowrank_conv2d: a convolution stored as two low-rank factors (TRP).

scheme "channel": w1 (r, C, kh, kw), w2 (Nout, r, 1, 1)
    y = conv2d(conv2d(x, w1, stride, padding, dilation), w2) + bias
scheme "spatial": w1 (r, C, kh, 1), w2 (Nout, r, 1, kw)
    t = conv2d(x, w1, stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1))
    y = conv2d(t, w2, stride=(1, sw), padding=(0, pw), dilation=(1, dw)) + bias
optional epilogue: y = activation(y + residual) (activation "none" or "relu"),
    the residual block's add and ReLU, fused into the CPU kernel's output pass
    for float32 (elsewhere applied after the conv).

stride / padding / dilation are those of the equivalent dense kh x kw conv.
The CPU kernel (fusenas._C) computes both factors per output tile, with the
rank-r intermediate tile kept in cache. For training, the CPU path also
writes the intermediate t (float32, the first factor's output, in x's memory
format) so that the backward reads it instead of recomputing the first factor
(``lowrank_conv2d_with_intermediate``, which ``lowrank_conv2d`` calls when w2
needs a gradient and the first factor is costly to recompute; see its
``save_intermediate`` argument).
Registered with torch.library (schema, CPU kernel, reference for other
devices, fake kernel, autograd through the ``lowrank_conv2d_backward`` op),
so it runs under torch.compile(fullgraph=True) and passes
torch.library.opcheck. Arguments are validated here, once, before
any native call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fusenas.ops import _native

SCHEMES = ("channel", "spatial")
ACTIVATIONS = ("none", "relu")
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
_CPU_DTYPES = (torch.float32, torch.bfloat16)

torch.library.define(
    "fusenas::lowrank_conv2d",
    "(Tensor x, Tensor w1, Tensor w2, Tensor? bias, str scheme, int[2] stride, int[2] padding, "
    "int[2] dilation, Tensor? residual=None, str activation='none') -> Tensor",
)
# The same conv, also returning the first factor's output (the intermediate t)
# so that autograd keeps it and the backward need not recompute it.
torch.library.define(
    "fusenas::lowrank_conv2d_with_intermediate",
    "(Tensor x, Tensor w1, Tensor w2, Tensor? bias, str scheme, int[2] stride, int[2] padding, "
    "int[2] dilation, Tensor? residual=None, str activation='none') -> (Tensor y, Tensor t)",
)
torch.library.define(
    "fusenas::lowrank_conv2d_backward",
    "(Tensor grad_out, Tensor x, Tensor w1, Tensor w2, str scheme, int[2] stride, "
    "int[2] padding, int[2] dilation, bool[4] output_mask, Tensor? intermediate=None) "
    "-> (Tensor grad_x, Tensor grad_w1, Tensor grad_w2, Tensor grad_bias)",
)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x is stored NHWC (and not also plain contiguous): the op's output follows it."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def factor_params(
    scheme: str, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(stride, padding, dilation) of the first and of the second factor's conv."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if scheme == "channel":
        return ((sh, sw), (ph, pw), (dh, dw)), ((1, 1), (0, 0), (1, 1))
    return ((sh, 1), (ph, 0), (dh, 1)), ((1, sw), (0, pw), (1, dw))


def output_size(
    x_shape: Sequence[int],
    kernel: tuple[int, int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    """(Ho, Wo) of the equivalent dense conv."""
    return tuple(  # type: ignore[return-value]
        (x_shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )


def check_lowrank_args(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: torch.Tensor | None,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    """Validates the arguments of lowrank_conv2d; returns the dense kernel size (kh, kw).

    Raises ValueError / TypeError naming the argument and what was expected.
    """
    for name, t in (("x", x), ("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    stride, padding, dilation = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )  # fmt: skip
    if min(stride) < 1:
        raise ValueError(f"stride: expected values >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding: expected values >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    if min(x.shape[1:]) < 1:
        raise ValueError(f"x: expected C, H, W >= 1, got shape {tuple(x.shape)}")
    for name, t in (("w1", w1), ("w2", w2)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D weight, got shape {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (x's dtype), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(
                f"{name}: expected a tensor on {x.device} (x's device), got {t.device}"
            )
    r = w1.shape[0]
    if r < 1:
        raise ValueError(f"w1: expected rank (w1.shape[0]) >= 1, got shape {tuple(w1.shape)}")
    if w1.shape[1] != c:
        if w1.shape[1] >= 1 and c % w1.shape[1] == 0:
            raise ValueError(
                f"w1: expected {c} input channels (x.shape[1]); got w1.shape[1]={w1.shape[1]}, "
                "which would be a grouped conv: groups != 1 is not supported"
            )
        raise ValueError(
            f"w1: expected {c} input channels (x.shape[1]), got shape {tuple(w1.shape)}"
        )
    nout = w2.shape[0]
    if nout < 1 or w2.shape[1] != r:
        raise ValueError(
            f"w2: expected shape (Nout >= 1, {r}, ...) for rank {r} (w1.shape[0]), "
            f"got {tuple(w2.shape)}"
        )
    if scheme == "channel":
        kh, kw = w1.shape[2], w1.shape[3]
        if kh < 1 or kw < 1:
            raise ValueError(f"w1: expected (r, C, kh >= 1, kw >= 1), got {tuple(w1.shape)}")
        if tuple(w2.shape[2:]) != (1, 1):
            raise ValueError(
                f"w2: scheme 'channel' expects a 1x1 second factor ({nout}, {r}, 1, 1), "
                f"got {tuple(w2.shape)}"
            )
    else:
        kh, kw = w1.shape[2], w2.shape[3]
        if w1.shape[3] != 1 or kh < 1:
            raise ValueError(
                f"w1: scheme 'spatial' expects a (r, C, kh, 1) first factor, got {tuple(w1.shape)}"
            )
        if w2.shape[2] != 1 or kw < 1:
            raise ValueError(
                f"w2: scheme 'spatial' expects a ({nout}, {r}, 1, kw) second factor, "
                f"got {tuple(w2.shape)}"
            )
    ho, wo = output_size(x.shape, (kh, kw), stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x: input {tuple(x.shape[2:])} is too small for a {kh}x{kw} kernel with padding "
            f"{padding} and dilation {dilation} (output would be {ho}x{wo})"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (nout,):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias: expected shape ({nout},) (w2.shape[0]) or None, got {shape}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias: expected dtype {x.dtype} (x's dtype), got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias: expected a tensor on {x.device}, got {bias.device}")
    return kh, kw


def lowrank_conv2d_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: torch.Tensor | None,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """The two-conv sequence then the epilogue (differentiable); output in x's memory format."""
    y, _ = _two_convs(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return y


def _two_convs(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation):
    """(y, t) of the reference: t the first conv's output as torch returns it."""
    (s1, p1, d1), (s2, p2, d2) = factor_params(
        scheme, _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )
    t = F.conv2d(x, w1, None, s1, p1, d1)
    y = F.conv2d(t, w2, bias, s2, p2, d2)
    return apply_epilogue(y.contiguous(memory_format=_memory_format(x)), residual, activation), t


def intermediate_shape(
    x_shape: Sequence[int], w1_shape: Sequence[int], scheme: str, ho: int, wo: int
) -> tuple[int, int, int, int]:
    """Shape of the first factor's output t: (N, r, Ho, Wo) for "channel", (N, r, Ho, W)
    for "spatial" (its first factor convolves rows only)."""
    return (x_shape[0], w1_shape[0], ho, wo if scheme == "channel" else x_shape[3])


def intermediate_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the kept intermediate: float32 (float64 for float64 inputs)."""
    return torch.promote_types(dtype, torch.float32)


def lowrank_conv2d_with_intermediate_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: torch.Tensor | None,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: torch.Tensor | None = None,
    activation: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, t): lowrank_conv2d_reference's output and its first conv's output t, in
    intermediate_dtype(x.dtype) and x's memory format (channels_last or contiguous)."""
    y, t = _two_convs(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return y, t.to(intermediate_dtype(x.dtype)).contiguous(memory_format=_memory_format(x))


def apply_epilogue(y: torch.Tensor, residual: torch.Tensor | None, activation: str) -> torch.Tensor:
    """activation(y + residual) with torch ops (paths without a fused epilogue)."""
    if residual is not None:
        y = y + residual
    return torch.relu(y) if activation == "relu" else y


def check_epilogue(
    residual: torch.Tensor | None, activation: str, x: torch.Tensor, out_shape: tuple[int, ...]
) -> None:
    """Validates the epilogue arguments against x and the conv's output shape."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual: expected a torch.Tensor or None, got {type(residual).__name__}")
    if tuple(residual.shape) != tuple(out_shape):
        raise ValueError(
            f"residual: expected the output's shape {tuple(out_shape)}, got {tuple(residual.shape)}"
        )
    if residual.dtype != x.dtype or residual.device != x.device:
        raise TypeError(
            f"residual: expected {x.dtype} on {x.device} (x's), got {residual.dtype} on "
            f"{residual.device}"
        )


def lowrank_conv2d_backward_reference(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    output_mask: Sequence[bool],
    intermediate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x, w1, w2, bias) by torch's conv backward, with the intermediate t taken
    from ``intermediate`` (the forward's) or recomputed.

    Outputs not requested by output_mask are empty tensors.
    """
    (s1, p1, d1), (s2, p2, d2) = factor_params(
        scheme, _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )
    want_x, want_w1, want_w2, want_b = (bool(m) for m in output_mask)
    conv_bwd = torch.ops.aten.convolution_backward.default
    gx = gw1 = gw2 = gb = None
    if want_x or want_w1 or want_w2:
        if intermediate is not None:
            t = intermediate.to(x.dtype)
        else:
            t = F.conv2d(x, w1, None, s1, p1, d1)
        gt, gw2, _ = conv_bwd(
            grad_out, t, w2, None, list(s2), list(p2), list(d2), False, [0, 0], 1,
            [want_x or want_w1, want_w2, False],
        )  # fmt: skip
        if want_x or want_w1:
            gx, gw1, _ = conv_bwd(
                gt, x, w1, None, list(s1), list(p1), list(d1), False, [0, 0], 1,
                [want_x, want_w1, False],
            )  # fmt: skip
    if want_b:
        acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        gb = grad_out.sum(dim=(0, 2, 3), dtype=acc).to(grad_out.dtype)
    return (
        gx.contiguous(memory_format=_memory_format(x)) if want_x else x.new_empty(0),
        gw1.contiguous() if want_w1 else x.new_empty(0),
        gw2.contiguous() if want_w2 else x.new_empty(0),
        gb if want_b else x.new_empty(0),
    )


# ------------------------------------------------------------------ native ----


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _geometry(x, w1, w2, scheme, stride, padding, dilation, kh, kw):
    n, c, h, w = x.shape
    return (
        n, c, h, w, w1.shape[0], w2.shape[0], kh, kw, 0 if scheme == "channel" else 1,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
    )  # fmt: skip


def _native_reason(x: torch.Tensor) -> str | None:
    """Why the native CPU kernel cannot run x (None when it can)."""
    if _native.cpu() is None:
        return "fusenas._C not built"
    if not hasattr(_native.cpu(), "lowrank_conv2d_cpu"):
        return "fusenas._C has no lowrank_conv2d_cpu (stale build)"
    if x.dtype not in _CPU_DTYPES:
        return f"no CPU kernel for {x.dtype}"
    return None


# check_lowrank_args and output_size depend on shapes, dtypes and settings
# only, so a CPU call repeated with the same ones (every layer of a deployed
# model, every batch) reuses their result: about 7 us of Python per call,
# which at batch 1 is as long as a small layer's kernel.
_CHECKED: dict[tuple, tuple[int, int, int, int]] = {}
_CHECKED_MAX = 4096


def _checked_geometry(x, w1, w2, bias, scheme, stride, padding, dilation):
    """(kh, kw, Ho, Wo) of valid arguments; raises like check_lowrank_args otherwise."""
    key = None
    if (
        isinstance(scheme, str)
        and all(isinstance(t, torch.Tensor) and t.is_cpu for t in (x, w1, w2))
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.is_cpu))
    ):
        key = (
            x.shape, x.dtype, w1.shape, w1.dtype, w2.shape, w2.dtype,
            None if bias is None else (bias.shape, bias.dtype),
            scheme, tuple(stride), tuple(padding), tuple(dilation),
        )  # fmt: skip
        hit = _CHECKED.get(key)
        if hit is not None:
            return hit
    kh, kw = check_lowrank_args(x, w1, w2, bias, scheme, stride, padding, dilation)
    ho, wo = output_size(x.shape, (kh, kw), stride, padding, dilation)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = (kh, kw, ho, wo)
    return kh, kw, ho, wo


def _forward_cpu(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation, keep):
    """(y, t) through the native kernel; t (the kept intermediate) only when keep, else None."""
    kh, kw, ho, wo = _checked_geometry(x, w1, w2, bias, scheme, stride, padding, dilation)
    check_epilogue(residual, activation, x, (x.shape[0], w2.shape[0], ho, wo))
    reason = _native_reason(x)
    if reason is not None:
        _native.warn_fallback("lowrank_conv2d", reason)
        args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
        if keep:
            return lowrank_conv2d_with_intermediate_reference(*args)
        return lowrank_conv2d_reference(*args), None
    y = torch.empty(x.shape[0], w2.shape[0], ho, wo, dtype=x.dtype, memory_format=_memory_format(x))
    t = None
    if keep:  # in x's layout: channels_last is the pixel-major kernels' own order
        t = torch.empty(intermediate_shape(x.shape, w1.shape, scheme, ho, wo), dtype=torch.float32,
                        memory_format=_memory_format(x))  # fmt: skip
    if y.numel() == 0:
        return y, t
    # The kernel's epilogue is float32 and reads the residual with y's strides.
    fused = x.dtype == torch.float32
    res = None
    if fused and residual is not None:
        res = residual if residual.stride() == y.stride() else residual.contiguous(
            memory_format=_memory_format(x))  # fmt: skip
    w1c, w2c = w1.contiguous(), w2.contiguous()
    _native.cpu().lowrank_conv2d_cpu(
        x.data_ptr(), *_strides(x), w1c.data_ptr(), w2c.data_ptr(),
        0 if bias is None else bias.data_ptr(), y.data_ptr(), *_strides(y),
        *_geometry(x, w1, w2, scheme, stride, padding, dilation, kh, kw),
        _DTYPE_CODE[x.dtype], torch.get_num_threads(),
        0 if res is None else res.data_ptr(), fused and activation == "relu",
        0 if t is None else t.data_ptr(), t is not None and is_channels_last(t),
    )  # fmt: skip
    return (y if fused else apply_epilogue(y, residual, activation)), t


def _lowrank_conv2d_cpu(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return _forward_cpu(*args, keep=False)[0]


def _lowrank_conv2d_with_intermediate_cpu(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return _forward_cpu(*args, keep=True)


def _lowrank_conv2d_backward_cpu(
    grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate=None
):
    kh, kw = check_backward_args(
        grad_out, x, w1, w2, scheme, stride, padding, dilation, intermediate
    )
    reason = _native_reason(x)
    if reason is None and not hasattr(_native.cpu(), "lowrank_conv2d_backward_cpu"):
        reason = "fusenas._C has no lowrank_conv2d_backward_cpu (stale build)"
    if reason is not None:
        _native.warn_fallback("lowrank_conv2d_backward", reason)
        return lowrank_conv2d_backward_reference(
            grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate
        )
    want_x, want_w1, want_w2, want_b = (bool(m) for m in output_mask)
    # Unrequested outputs: distinct empty tensors (outputs must not alias).
    gx = torch.empty_like(x, memory_format=_memory_format(x)) if want_x else x.new_empty(0)
    gw1 = torch.empty(w1.shape, dtype=x.dtype) if want_w1 else x.new_empty(0)
    gw2 = torch.empty(w2.shape, dtype=x.dtype) if want_w2 else x.new_empty(0)
    gb = x.new_empty(0)
    # The kernel sums grad_bias from the tiles of grad_out it reads for the other
    # gradients; alone (or on an empty batch) it is torch's sum.
    bias_in_kernel = want_b and (want_x or want_w1 or want_w2) and x.shape[0] > 0
    if bias_in_kernel:
        gb = torch.empty(w2.shape[0], dtype=x.dtype)
    elif want_b:
        gb = grad_out.sum(dim=(0, 2, 3), dtype=torch.float32).to(x.dtype)
    if not (want_x or want_w1 or want_w2):
        return gx, gw1, gw2, gb
    if x.shape[0] == 0:
        return gx.zero_(), gw1.zero_(), gw2.zero_(), gb
    go = grad_out.contiguous(memory_format=_memory_format(x))
    w1c, w2c = w1.contiguous(), w2.contiguous()
    t = None
    if want_w2 and intermediate is not None:
        t = intermediate.to(torch.float32)
        if not is_channels_last(t):  # the kernels read t as planes or as channels_last pixels
            t = t.contiguous()
    _native.cpu().lowrank_conv2d_backward_cpu(
        go.data_ptr(), *_strides(go), x.data_ptr(), *_strides(x), w1c.data_ptr(),
        w2c.data_ptr(), gx.data_ptr() if want_x else 0, *(_strides(gx) if want_x else (0,) * 4),
        gw1.data_ptr() if want_w1 else 0, gw2.data_ptr() if want_w2 else 0,
        *_geometry(x, w1, w2, scheme, stride, padding, dilation, kh, kw),
        _DTYPE_CODE[x.dtype], torch.get_num_threads(), 0 if t is None else t.data_ptr(),
        gb.data_ptr() if bias_in_kernel else 0, t is not None and is_channels_last(t),
    )  # fmt: skip
    return gx, gw1, gw2, gb


def check_backward_args(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    scheme: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    intermediate: torch.Tensor | None = None,
) -> tuple[int, int]:
    """Validates the arguments of lowrank_conv2d_backward (those of the forward, grad_out
    and the kept intermediate); returns the dense kernel size (kh, kw)."""
    kh, kw = check_lowrank_args(x, w1, w2, None, scheme, stride, padding, dilation)
    ho, wo = output_size(x.shape, (kh, kw), _pair(stride, "stride"),
                         _pair(padding, "padding"), _pair(dilation, "dilation"))  # fmt: skip
    _check_grad_out(grad_out, x, w2.shape[0], ho, wo)
    _check_intermediate(intermediate, x, w1, scheme, ho, wo)
    return kh, kw


def _check_intermediate(intermediate, x, w1, scheme, ho, wo):
    if intermediate is None:
        return
    expected = intermediate_shape(x.shape, w1.shape, scheme, ho, wo)
    if not isinstance(intermediate, torch.Tensor) or tuple(intermediate.shape) != expected:
        shape = (
            tuple(intermediate.shape) if isinstance(intermediate, torch.Tensor)
            else type(intermediate).__name__
        )  # fmt: skip
        raise ValueError(
            f"intermediate: expected the first factor's output of shape {expected}, got {shape}"
        )
    if not intermediate.is_floating_point() or intermediate.device != x.device:
        raise TypeError(
            f"intermediate: expected a floating-point tensor on {x.device}, got "
            f"{intermediate.dtype} on {intermediate.device}"
        )


def _check_grad_out(grad_out, x, nout, ho, wo):
    expected = (x.shape[0], nout, ho, wo)
    if not isinstance(grad_out, torch.Tensor) or tuple(grad_out.shape) != expected:
        shape = tuple(grad_out.shape) if isinstance(grad_out, torch.Tensor) else grad_out
        raise ValueError(f"grad_out: expected shape {expected} (the output's), got {shape}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(
            f"grad_out: expected {x.dtype} on {x.device} (x's), got {grad_out.dtype} on "
            f"{grad_out.device}"
        )


torch.library.impl("fusenas::lowrank_conv2d", "CPU")(_lowrank_conv2d_cpu)
torch.library.impl("fusenas::lowrank_conv2d_with_intermediate", "CPU")(
    _lowrank_conv2d_with_intermediate_cpu
)
torch.library.impl("fusenas::lowrank_conv2d_backward", "CPU")(_lowrank_conv2d_backward_cpu)


def _fallback_args(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation, op):
    # Devices without a registered kernel (a "CUDA" registration, when present, wins on CUDA).
    kh, kw = check_lowrank_args(x, w1, w2, bias, scheme, stride, padding, dilation)
    ho, wo = output_size(x.shape, (kh, kw), stride, padding, dilation)
    check_epilogue(residual, activation, x, (x.shape[0], w2.shape[0], ho, wo))
    _native.warn_fallback(op, f"no kernel for device {x.device.type}")
    return x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation


@torch.library.impl("fusenas::lowrank_conv2d", "CompositeExplicitAutograd")
def _lowrank_conv2d_other(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return lowrank_conv2d_reference(*_fallback_args(*args, "lowrank_conv2d"))


@torch.library.impl("fusenas::lowrank_conv2d_with_intermediate", "CompositeExplicitAutograd")
def _lowrank_conv2d_with_intermediate_other(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return lowrank_conv2d_with_intermediate_reference(
        *_fallback_args(*args, "lowrank_conv2d_with_intermediate")
    )


@torch.library.impl("fusenas::lowrank_conv2d_backward", "CompositeExplicitAutograd")
def _lowrank_conv2d_backward_other(
    grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate=None
):
    kh, kw = check_backward_args(
        grad_out, x, w1, w2, scheme, stride, padding, dilation, intermediate
    )
    _native.warn_fallback("lowrank_conv2d_backward", f"no kernel for device {x.device.type}")
    return lowrank_conv2d_backward_reference(
        grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate
    )


def _fake_output(x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation):
    kh, kw = check_lowrank_args(x, w1, w2, bias, scheme, stride, padding, dilation)
    ho, wo = output_size(x.shape, (kh, kw), stride, padding, dilation)
    check_epilogue(residual, activation, x, (x.shape[0], w2.shape[0], ho, wo))
    y = torch.empty(
        x.shape[0], w2.shape[0], ho, wo, dtype=x.dtype, device=x.device,
        memory_format=_memory_format(x),
    )  # fmt: skip
    return y, (ho, wo)


@torch.library.register_fake("fusenas::lowrank_conv2d")
def _lowrank_conv2d_fake(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    return _fake_output(*args)[0]


@torch.library.register_fake("fusenas::lowrank_conv2d_with_intermediate")
def _lowrank_conv2d_with_intermediate_fake(
    x, w1, w2, bias, scheme, stride, padding, dilation, residual=None, activation="none"
):
    args = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
    y, (ho, wo) = _fake_output(*args)
    shape = intermediate_shape(x.shape, w1.shape, scheme, ho, wo)
    t = torch.empty(shape, dtype=intermediate_dtype(x.dtype), device=x.device,
                    memory_format=_memory_format(x))  # fmt: skip
    return y, t


@torch.library.register_fake("fusenas::lowrank_conv2d_backward")
def _lowrank_conv2d_backward_fake(
    grad_out, x, w1, w2, scheme, stride, padding, dilation, output_mask, intermediate=None
):
    kh, kw = check_backward_args(
        grad_out, x, w1, w2, scheme, stride, padding, dilation, intermediate
    )
    return (
        torch.empty_like(x, memory_format=_memory_format(x)) if output_mask[0] else x.new_empty(0),
        w1.new_empty(w1.shape) if output_mask[1] else x.new_empty(0),
        w2.new_empty(w2.shape) if output_mask[2] else x.new_empty(0),
        x.new_empty(w2.shape[0]) if output_mask[3] else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, w1, w2, bias, scheme, stride, padding, dilation = inputs[:8]
    residual = inputs[8] if len(inputs) > 8 else None
    relu = len(inputs) > 9 and inputs[9] == "relu"
    y, t = output if isinstance(output, tuple) else (output, None)
    if t is not None:
        ctx.mark_non_differentiable(t)
    # t never receives a gradient; without this autograd would hand _backward a
    # zero-filled tensor of t's size (N x rank x Ho x W floats) on every call.
    ctx.set_materialize_grads(False)
    # ReLU's gradient mask comes from the output (y > 0 where the input was > 0).
    ctx.save_for_backward(x, w1, w2, y if relu else None)
    # t (non-differentiable, referenced by nothing else once lowrank_conv2d returns)
    # is held on ctx rather than saved: _backward drops it as soon as grad_w2 is done,
    # before grad_x is allocated, as the two-conv sequence frees its t.
    ctx.kept = t
    ctx.meta = (scheme, stride, padding, dilation, bias is not None, residual is not None, relu)
    ctx.n_inputs = len(inputs)
    ctx.backward_op = torch.ops.fusenas.lowrank_conv2d_backward


def _backward(ctx, grad_y, grad_t=None):
    if grad_y is None:  # nothing downstream used y (grads are not materialized)
        return (None,) * ctx.n_inputs
    x, w1, w2, y = ctx.saved_tensors
    scheme, stride, padding, dilation, has_bias, has_residual, relu = ctx.meta
    if relu:
        grad_y = grad_y * (y > 0)
    need = ctx.needs_input_grad
    grad_res = grad_y if has_residual and len(need) > 8 and need[8] else None
    mask = [need[0], need[1], need[2], has_bias and need[3]]
    grads = [None] * 8 + [grad_res, None]
    geo = (scheme, stride, padding, dilation)
    bwd = ctx.backward_op
    # A retained graph's second backward finds no t and recomputes it.
    t, ctx.kept = ctx.kept, None
    if t is not None and mask[2] and (mask[0] or mask[1]):
        # grad_w2, the only gradient that reads t, first; then t is released, so the
        # peak holds t or grad_x, not both. The same multiply-adds, but grad_y is read
        # twice: 6% more kernel time at 64 ch @56 spatial rank 48 (21.7 -> 6.0 + 17.0
        # ms, AVX-512); one pass kept fwd+bwd memory within the two convs in 12 of the
        # benchmark's 28 cases, two passes in 27 (docs/benchmarks/lowrank_notes.md).
        grads[2] = bwd(grad_y, x, w1, w2, *geo, [False, False, True, False], t)[2]
        t, mask[2] = None, False
    if any(mask):
        out = bwd(grad_y, x, w1, w2, *geo, mask, t)
        for i in range(4):
            if mask[i]:
                grads[i] = out[i]
    return tuple(grads[: ctx.n_inputs])


torch.library.register_autograd("fusenas::lowrank_conv2d", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "fusenas::lowrank_conv2d_with_intermediate", _backward, setup_context=_setup_context
)


class _EagerCPUTraining(torch.autograd.Function):
    """The registered ops' autograd for eager CPU calls, without the dispatcher.

    Through torch.ops, forward + backward of a tiny layer took 235 us against the
    two-conv sequence's 91 (torch.library's autograd glue rebuilds the schema's
    argument list about 20 times per call, 2 us each); this Function runs the same
    CPU kernels, context and backward directly, in 154 us for that layer (a 64 ch
    @8 spatial rank 16 step, N = 128, 2 threads: 1.94-2.05 -> 1.83-1.87 ms). It is
    the old-style Function (ctx in forward): one with setup_context binds its
    arguments through inspect.signature on every call, which cost about as much
    again. Traced and compiled calls, functorch transforms, tensor subclasses and
    other devices keep the registered ops.
    """

    @staticmethod
    def forward(ctx, x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation,
                keep):  # fmt: skip
        inputs = (x, w1, w2, bias, scheme, stride, padding, dilation, residual, activation)
        y, t = _forward_cpu(*inputs, keep=keep)
        _setup_context(ctx, inputs, (y, t))
        ctx.backward_op = _lowrank_conv2d_backward_cpu
        return (y, t) if keep else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_t=None):
        return (*_backward(ctx, grad_y), None)


def lowrank_conv2d(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scheme: str,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    residual: torch.Tensor | None = None,
    activation: str = "none",
    save_intermediate: bool | None = None,
) -> torch.Tensor:
    """A convolution given as two low-rank factors, computed in one fused pass on CPU.

    Args:
        x: (N, C, H, W), float32 or bfloat16 for the CPU kernel (float64 and other
            devices run the two-conv reference), NCHW-contiguous or channels_last
            (other strides are read as they are).
        w1: scheme "channel": (r, C, kh, kw); scheme "spatial": (r, C, kh, 1).
        w2: scheme "channel": (Nout, r, 1, 1); scheme "spatial": (Nout, r, 1, kw).
        bias: (Nout,) or None.
        scheme: "channel" or "spatial" (see the module docstring).
        stride, padding, dilation: int or pair, those of the equivalent dense
            kh x kw conv.
        residual: None or a tensor of the output's shape, dtype and device, added
            to the conv's output (a residual block's shortcut).
        activation: "none" or "relu", applied last.
        save_intermediate: when training on CPU with w2 requiring a gradient, True
            keeps the first factor's output t (float32, N x r x Ho x Wo, or x W for
            "spatial", in x's memory format) from the forward for grad_w2, as the
            two-conv sequence does (and, like it, releases t once grad_w2 is done,
            before grad_x is allocated; a retained graph's second backward
            recomputes t);
            False recomputes t in the backward instead (that memory is not held
            between forward and backward, for one more first-factor pass). None
            (default) keeps t when the first factor has at least
            ``KEEP_INTERMEDIATE_MIN_DEPTH`` multiply-adds per value of t
            (C x kh x kw, or C x kh for "spatial"): below that, recomputing t costs
            less than writing and reading it back.
    Returns:
        (N, Nout, Ho, Wo) = activation(conv(x) + bias + residual), in x's dtype
        and memory format. Differentiable with respect to x, w1, w2, bias and
        residual. On CPU in float32 the epilogue runs in the kernel's output
        pass (no extra pass over y); elsewhere it is applied after the conv.
    """
    for name, t in (("x", x), ("w1", w1), ("w2", w2), ("bias", bias), ("residual", residual)):
        if not isinstance(t, torch.Tensor) and not (name in ("bias", "residual") and t is None):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    stride, padding, dilation = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )  # fmt: skip
    args = (x, w1, w2, bias, scheme, list(stride), list(padding), list(dilation))
    if residual is not None or activation != "none":
        args = (*args, residual, activation)
    eager = _native.eager_cpu((x, w1, w2, bias, residual))
    if eager and not _needs_grad(x, w1, w2, bias, residual):
        # No autograd, not tracing or compiling: skip the dispatcher's Python round trips.
        return _lowrank_conv2d_cpu(*args)
    # t is worth keeping only for a CPU call whose w2 needs a gradient (checked first:
    # under torch.jit.trace the shapes below are traced values).
    keep = x.device.type == "cpu" and torch.is_grad_enabled() and w2.requires_grad
    if keep and save_intermediate is None:
        save_intermediate = w1.dim() == 4 and (
            w1.shape[1] * w1.shape[2] * w1.shape[3] >= KEEP_INTERMEDIATE_MIN_DEPTH
        )
    keep = bool(keep and save_intermediate)
    if eager:
        if len(args) == 8:
            args = (*args, None, "none")
        out = _EagerCPUTraining.apply(*args, keep)
        return out[0] if keep else out
    if keep:
        return torch.ops.fusenas.lowrank_conv2d_with_intermediate.default(*args)[0]
    return torch.ops.fusenas.lowrank_conv2d.default(*args)


# Multiply-adds of the first factor per value of its output from which the
# backward reads the kept intermediate rather than recomputing it (2 threads,
# N = 128, keep vs recompute per training step. Zen 5: C x kh 48 (16 ch spatial)
# keeps 12% slower, 144 (16 ch 3x3) even, 192 (64 ch spatial) 9% faster, 2304
# (256 ch 3x3) 20% faster. Zen 4, after the plane backward's grad_w2 by rank
# (session 16): 48 3-15% slower, 144 2-5% faster at ranks 7 (both layouts) and
# 11% at rank 16 (channels_last), 96 (32 ch spatial) 0-8% faster: so from 144.)
KEEP_INTERMEDIATE_MIN_DEPTH = 144


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record a call on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def workspace_bytes(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    scheme: str,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    backward: bool = False,
) -> int:
    """Bytes the native CPU kernel allocates outside torch tensors (tile buffers, packed
    weights, gradient accumulators) for these arguments at torch's thread count; 0 when
    the reference runs instead (channels_last float32 calls: the pixel-major path's)."""
    stride, padding, dilation = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )  # fmt: skip
    kh, kw = check_lowrank_args(x, w1, w2, None, scheme, stride, padding, dilation)
    if x.device.type != "cpu" or _native_reason(x) is not None:
        return 0
    return _native.cpu().lowrank_conv2d_workspace_bytes(
        *_geometry(x, w1, w2, scheme, stride, padding, dilation, kh, kw), backward,
        _DTYPE_CODE[x.dtype], torch.get_num_threads(),
        x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
    )  # fmt: skip

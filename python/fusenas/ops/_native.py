"""Loads the compiled extensions once and says which path an op takes.

``fusenas._C`` (CPU kernels) and ``fusenas._C_cuda`` (CUDA kernels) are
optional: a pure-Python install (FUSENAS_SKIP_EXT=1) or a machine without a
GPU falls back to the torch reference in ``_reference.py``, with one warning
per op and reason.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

_cache: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()


def _load(name: str) -> ModuleType | None:
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"fusenas.{name}")
        except ImportError as exc:  # not built, or built for another Python
            _cache[name] = None
            _errors[name] = str(exc)
    return _cache[name]


def cpu() -> ModuleType | None:
    """fusenas._C, or None when it was not built."""
    return _load("_C")


def cuda() -> ModuleType | None:
    """fusenas._C_cuda, or None when it was not built."""
    return _load("_C_cuda")


def load_error(name: str) -> str | None:
    _load(name)
    return _errors.get(name)


def warn_fallback(op: str, reason: str) -> None:
    """Warns once per (op, reason) that the pure-torch reference runs instead of a kernel."""
    key = (op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"fusenas.{op}: using the pure-torch reference ({reason})", RuntimeWarning, stacklevel=3
        )


def eager_mode() -> bool:
    """Whether ops may call their kernels directly, skipping the dispatcher (whose
    Python round trips cost 10 us a call, 80-150 us per forward + backward with
    autograd): not while tracing (torch.jit.trace: the trace must record the
    registered op, or it would bake the result in as a constant) or compiling, and
    not under torch.func transforms (they wrap tensors without changing their type;
    a torch without this private check counts as inside one)."""
    import torch

    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch_active is None or functorch_active():
        return False
    return not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def is_plain(t) -> bool:
    """torch.Tensor or nn.Parameter (a module's weights: its __torch_function__ is
    disabled, so it behaves as a tensor). Any other subclass (fake, functional,
    distributed tensors) must take the registered op."""
    import torch

    return type(t) is torch.Tensor or type(t) is torch.nn.Parameter


def eager_cpu(tensors) -> bool:
    """eager_mode() with plain CPU tensors (is_plain; None entries ignored): then an op
    may run its CPU kernels directly, or behind a plain torch.autograd.Function."""
    # is_cpu, not device.type: this runs per layer call, and building the
    # device object costs about 0.3 us a tensor.
    return eager_mode() and all(t is None or (is_plain(t) and t.is_cpu) for t in tensors)

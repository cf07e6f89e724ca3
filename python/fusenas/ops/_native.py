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


def eager_cpu(tensors) -> bool:
    """Whether plain CPU tensors (None entries ignored) are used in eager mode.

    Then an op may run its CPU kernels behind a plain torch.autograd.Function
    instead of the dispatcher: the Python round trips of a custom op with
    autograd cost 80-150 us per forward + backward. Not while tracing or
    compiling, under torch.func transforms (they wrap tensors without changing
    their type; a torch without this private check counts as inside one), for
    tensor subclasses or other devices.
    """
    import torch

    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch_active is None or functorch_active() or torch.compiler.is_compiling():
        return False
    # is_cpu, not device.type: this runs per layer call, and building the
    # device object costs about 0.3 us a tensor.
    return all(t is None or (type(t) is torch.Tensor and t.is_cpu) for t in tensors)

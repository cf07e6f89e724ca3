"""Process-wide settings that decide how fast CPU inference and training run.

``retain_freed_memory`` keeps memory that tensors give back inside the
process. Every forward pass allocates its activations anew (a CIFAR
ResNet-20 at batch 64: 1-4 MiB each, 4 MiB through its first stage). glibc's malloc serves
blocks of that size from fresh ``mmap`` pages or a heap top that ``free``
trims back to the kernel, so each pass touches its activations' pages for
the first time again: one page fault per 4 KiB, each zeroing its page. On
this project's 2-core VM that was 4,100-5,600 faults and 4-9 ms of a 20 ms
TRP ResNet-20 pass at batch 64 (8,100-12,100 in the dense baseline's pass),
and it grows with the bytes a layer writes rather than its arithmetic, so
it is a larger share of a cheaper (low-rank, low-bit) layer's time. Keeping the
freed blocks (as jemalloc or tcmalloc, the allocators CPU inference guides
preload, also do) removes that cost; the price is that the process keeps
its peak heap instead of shrinking after it.

The fusenas CLI applies it at start (``FUSENAS_RETAIN_MEMORY=0`` turns it
off); library users call it themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX):
# blocks up to 32 MiB come from the heap, larger ones keep their own mapping.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
# Free memory at the heap's top that stays mapped instead of being trimmed.
_TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    # gnu_get_libc_version exists only in glibc: other C libraries' mallopt
    # (where there is one) does not take glibc's parameters.
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def retain_freed_memory() -> bool:
    """Keep freed blocks of up to 32 MiB in the process for reuse (glibc only).

    Sets glibc's mmap threshold to its 32 MiB maximum and its trim threshold
    to 1 GiB, so repeated forward passes reuse their activation memory
    instead of faulting in fresh pages. Process-wide and lasting; calling it
    again does nothing. Returns True when the setting is in effect, False
    where the C library is not glibc (nothing is changed there).
    """
    global _applied
    if _applied is None:
        fn = _mallopt()
        _applied = bool(
            fn is not None
            and fn(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
            and fn(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
        )
    return _applied


def retain_freed_memory_from_env() -> bool:
    """``retain_freed_memory()`` unless the environment sets ``FUSENAS_RETAIN_MEMORY=0``."""
    value = os.environ.get("FUSENAS_RETAIN_MEMORY", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"FUSENAS_RETAIN_MEMORY: expected 0 or 1, got {value!r}")
    return value == "1" and retain_freed_memory()


def freed_memory_retained() -> bool:
    """Whether ``retain_freed_memory`` is in effect in this process."""
    return bool(_applied)

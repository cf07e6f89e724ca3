"""Peak heap bytes of one call, counting every malloc in the process.

A benchmark calls ``preload_or_fallback()`` first thing: on Linux with a C
compiler it builds ``heap_peak.c`` (once, into ``$FUSENAS_CACHE_DIR`` or
``~/.cache/fusenas``) and re-executes the process with the shim in
``LD_PRELOAD``; ``peak_during(fn)`` then returns the growth of live heap bytes
during fn: torch's tensors, oneDNN's scratchpad and fusenas' kernel buffers
counted alike. The shim adds an atomic add and ``malloc_usable_size`` per
malloc/free (tens of ns), nothing per FLOP. Without it (``active()`` False)
the caller falls back to another measurement and says so.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_SOURCE = Path(__file__).with_name("heap_peak.c")
_MARK = "FUSENAS_HEAP_PEAK_EXEC"  # set on the re-executed process: never loop


@functools.cache  # the process either has the shim for its whole life or never
def _lib() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(None)
        reset, peak = lib.heap_peak_reset, lib.heap_peak
    except (OSError, AttributeError):
        return None
    reset.restype = peak.restype = ctypes.c_longlong
    return lib


def _build() -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or sys.platform != "linux":
        return None
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("FUSENAS_CACHE_DIR", Path.home() / ".cache" / "fusenas"))
    out = cache / f"libheap_peak_{digest}.so"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(_SOURCE), "-ldl"]
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
        os.replace(tmp, out)  # atomic: a concurrent build never sees half a library
    except OSError:  # unwritable cache, compiler gone: the caller falls back
        return None
    return out


def preload_or_fallback() -> bool:
    """True when the shim is loaded; else re-executes this process with it when it can
    be built (does not return then) and returns False when it cannot."""
    if _lib() is not None:
        return True
    if os.environ.get(_MARK):
        return False  # preloaded but not effective (e.g. a static allocator): fall back
    shim = _build()
    if shim is None:
        return False
    env = dict(os.environ, **{_MARK: "1"})
    env["LD_PRELOAD"] = " ".join(p for p in (str(shim), env.get("LD_PRELOAD", "")) if p)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return False  # not reached


def active() -> bool:
    """Whether the shim is loaded in this process (peak_during works)."""
    return _lib() is not None


def peak_during(fn: Callable[[], object]) -> int:
    """Peak live heap bytes during fn above those live when it starts (needs active())."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("heap_peak: the shim is not loaded; call preload_or_fallback() first")
    base = lib.heap_peak_reset()
    fn()
    return lib.heap_peak() - base

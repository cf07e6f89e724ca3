"""Where packed weights live on the CPU: 2 MiB-aligned memory advised for huge pages.

A cold batch-1 k-bit matmul streams its weight from DRAM once per call. On
4 KiB pages that costs a page walk every 4 KiB, and the kernels' prefetches
run ahead of the walks; on 2 MiB pages the same calls ran 1-15% faster
(typically 3-8%) on a Zen 5 machine (``docs/benchmarks/kbit_notes.md``,
"Session 29"). torch's allocator hands out memory that is not 2 MiB-aligned
and, under the common transparent-huge-page setting ``madvise``, never backed
by huge pages. So the codes fusenas packs (``fusenas.quant.pack_codes``), the
CPU table layout of 2- and 3-bit weights and the tensors of a loaded packed
file are placed in memory from ``fusenas._C.HugePageBuffer``: a private
mapping on a 2 MiB boundary, advised ``MADV_HUGEPAGE``. Whether huge pages
then back it is the OS's call (THP setting ``always`` or ``madvise``, free
memory); the memory is ordinary CPU memory either way.

Only CPU tensors of at least :data:`MIN_BYTES` move: a huge page needs a whole
aligned 2 MiB. ``FUSENAS_HUGE_PAGES=0`` turns this off (torch's allocator throughout),
as does a build without the extension.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

MIN_BYTES = 2 << 20  # one huge page
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _ext():
    # Imported here: fusenas.ops imports fusenas.quant, which packs codes with this module.
    from fusenas.ops import _native

    return _native.cpu()


def enabled() -> bool:
    """Whether large CPU weights go to huge-page memory (extension built, not switched off)."""
    if os.environ.get("FUSENAS_HUGE_PAGES", "1") == "0":
        return False
    ext = _ext()
    return ext is not None and hasattr(ext, "HugePageBuffer")


def thp_setting() -> str:
    """The OS's transparent-huge-page mode (``always``, ``madvise``, ``never``), or ``unknown``."""
    try:
        text = _THP_SETTING.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unknown"


def _eligible(nbytes: int, device: torch.device) -> bool:
    return device.type == "cpu" and nbytes >= MIN_BYTES and enabled()


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor of ``shape`` and ``dtype``, in huge-page memory when eligible."""
    nbytes = math.prod(shape) * dtype.itemsize
    if not _eligible(nbytes, torch.device("cpu")):
        return torch.zeros(shape, dtype=dtype)
    buf = _ext().HugePageBuffer(nbytes)
    # frombuffer keeps buf alive for as long as any tensor views this memory.
    return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(shape)


def place(t: torch.Tensor, *, copy: bool = False) -> torch.Tensor:
    """``t`` in the memory a packed weight should stream from.

    A CPU tensor of at least :data:`MIN_BYTES` comes back as a contiguous copy
    in huge-page memory (when :func:`enabled`); any other tensor comes back as
    it is, or as ``t.clone()`` when ``copy`` is set. Not for tensors that need
    autograd (packed weights are buffers).
    """
    if not _eligible(t.numel() * t.element_size(), t.device):
        return t.clone() if copy else t
    out = empty(tuple(t.shape), t.dtype)
    out.copy_(t)
    return out


def is_placed(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage starts on a 2 MiB boundary (as :func:`place` leaves it)."""
    return t.device.type == "cpu" and t.untyped_storage().data_ptr() % (2 << 20) == 0

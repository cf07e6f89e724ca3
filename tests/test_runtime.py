"""fusenas.runtime: freed memory is kept for reuse (checked by counting page faults)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fusenas import runtime

# Four residual blocks' worth of 4 MiB activations (conv, add, ReLU at batch
# 64, 16 channels, 32 x 32, as a CIFAR ResNet's first stage): prints the minor
# page faults per pass after warm-up. With glibc's defaults the heap gives
# these blocks back to the kernel between passes (about 4,000 faults of
# 4 KiB each per pass on the CI VM); with the memory kept, none.
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    import torch.nn.functional as F
    from fusenas import runtime
    if sys.argv[1] == "1":
        assert runtime.retain_freed_memory()
        assert runtime.freed_memory_retained()
    torch.set_num_threads(2)
    w = torch.randn(16, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    x0 = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    def passes(n):
        for _ in range(n):
            x = x0
            for _ in range(4):
                x = F.relu(F.conv2d(x, w, padding=1) + x)
    passes(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    passes(5)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
    """
)


def _faults(retain: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if retain else "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(runtime._mallopt() is None, reason="needs glibc (mallopt)")
def test_retained_memory_is_reused_without_page_faults():
    default, kept = _faults(False), _faults(True)
    assert default >= 1000, default  # at least one 4 MiB activation faulted in per pass
    assert kept < 100, kept


def test_env_switch_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("FUSENAS_RETAIN_MEMORY", "yes")
    with pytest.raises(ValueError, match="FUSENAS_RETAIN_MEMORY"):
        runtime.retain_freed_memory_from_env()

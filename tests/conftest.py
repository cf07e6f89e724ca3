"""Shared fixtures: where the real data lives, and GPU skipping."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# torch.compile's on-disk graph cache keys a custom op by its name, not by its fake
# kernel: a graph cached before a fake kernel changed (say, the strides it gives an
# output) would be replayed against the new kernel. Each test run compiles afresh.
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="fusenas-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _OWN_INDUCTOR_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE is not None:
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)


DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (skips the test when absent)."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}")
    return DATA_DIR


def gpu_skip_reason() -> str | None:
    """Why ``gpu`` tests cannot run here, or None: they need a CUDA device and fusenas._C_cuda."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    from fusenas.ops import _native

    if _native.cuda() is None:
        return f"fusenas._C_cuda not built ({_native.load_error('_C_cuda')})"
    return None


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    reason = gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

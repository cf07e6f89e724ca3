"""Shared fixtures: where the real data lives, and GPU skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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

"""Selecting layers by module name: fnmatch include / exclude patterns.

Shared by the model conversions (``quantize_``, ``decompose_``) so that every
config selects layers the same way.
"""

from __future__ import annotations

import fnmatch
from typing import Any


def as_patterns(value: Any, name: str) -> tuple[str, ...]:
    """A str or a sequence of str as a tuple; TypeError naming ``name`` otherwise."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{name}: expected a tuple of fnmatch patterns (str), got {value!r}")
    return tuple(value)


def selects(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Whether ``name`` matches an include pattern and no exclude pattern."""
    hit = any(fnmatch.fnmatchcase(name, p) for p in include)
    return hit and not any(fnmatch.fnmatchcase(name, p) for p in exclude)

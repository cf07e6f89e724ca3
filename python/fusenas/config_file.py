"""Driver configs: a dataclass, filled from a YAML file and ``key=value`` overrides.

Every driver (search, compression) declares its settings as a dataclass with
defaults and validation; this module fills one from a YAML mapping and then
from command-line overrides (``--set epochs=3 --set arch_lr=3e-4``; values
parsed as YAML, so numbers, bools, lists and null work). An unknown key is an
error that names the closest valid key, so a typo never silently runs the
default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _check_keys(cls: type, keys: Sequence[str], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown setting {key!r}{hint} (valid: {', '.join(names)})")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: cannot parse {value!r} ({exc})") from exc
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
) -> T:
    """A ``cls`` instance from defaults, then the YAML file at ``path``, then ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config: no such file: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config: {p} is not valid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"config: {p} must hold a mapping of settings, got {type(loaded)}")
        _check_keys(cls, list(loaded), f"config {p}")
        values.update(loaded)
    extra = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)
    _check_keys(cls, list(extra), "--set")
    values.update(extra)
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a list where a number belongs, caught by __post_init__
        raise ValueError(f"config: {exc}") from exc


def dump_config(config: Any) -> dict[str, Any]:
    """The config as a plain dict (for logs, checkpoints and the run's config.yaml)."""
    return dataclasses.asdict(config)

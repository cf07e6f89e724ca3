"""How the experiment scripts hand over their results: the Markdown table is printed, and
written (with the rows as JSON beside it) atomically, so an interrupted run never leaves a
half-written file that a later docs update would copy."""

from __future__ import annotations

import json
from pathlib import Path

from fusenas._atomic import atomic_write_bytes


def write_json(path: Path, data: object) -> None:
    """Writes data as indented JSON to path atomically (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def publish(text: str, data: object, md_path: Path | None) -> None:
    """Prints the Markdown text; given md_path, writes it there and data to md_path's .json."""
    print(text)
    if md_path is None:
        return
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(md_path, text.encode())
    write_json(md_path.with_suffix(".json"), data)

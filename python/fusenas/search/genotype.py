"""DARTS-space genotypes: which op feeds each intermediate node from which input.

A genotype is what a DARTS-family search returns and what the evaluation
network is built from. It is stored as JSON (never pickle):
``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5],
"reduce": [...], "reduce_concat": [...]}``; node 0 and 1 are the cell's two
inputs, intermediate node i (from 2) has two incoming edges, listed in order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusenas._atomic import write_json_atomic


@dataclass(frozen=True)
class Genotype:
    """normal / reduce: ((op name, input node), ...), two per intermediate node."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genotype:
        try:
            out = cls(
                tuple((str(op), int(j)) for op, j in d["normal"]),
                tuple(int(i) for i in d["normal_concat"]),
                tuple((str(op), int(j)) for op, j in d["reduce"]),
                tuple(int(i) for i in d["reduce_concat"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"genotype: malformed genotype dict ({exc}): {d!r}") from exc
        for kind in ("normal", "reduce"):
            edges = getattr(out, kind)
            if len(edges) % 2:
                raise ValueError(f"genotype.{kind}: expected two edges per node, got {len(edges)}")
            for i, (_, j) in enumerate(edges):
                if not 0 <= j < 2 + i // 2:
                    raise ValueError(f"genotype.{kind}: edge {i} reads node {j}, not yet computed")
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON atomically (temp file in the same directory, then rename)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        return cls.from_dict(json.loads(Path(path).read_text()))

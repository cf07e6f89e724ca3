"""NAS-Bench-201 look-ups: the CIFAR-10 accuracy of every cell of the space.

Reads ``nb201_cifar10.csv`` (``../shared/data/nasbench201``: 15,625 cells,
``arch_str``, ``c10_test_200ep`` and the 12-epoch figures) once, and answers
"how good is this cell" for the search drivers' logs and reports.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from fusenas.search.spaces.nb201 import parse_arch_str


def default_table_path() -> Path:
    rel = Path("nasbench201") / "nb201_cifar10.csv"
    candidates = []
    if os.environ.get("FUSENAS_DATA"):
        candidates.append(Path(os.environ["FUSENAS_DATA"]) / rel)
    candidates.append(Path.cwd().parent / "shared" / "data" / rel)
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data" / rel)
    return next((c for c in candidates if c.is_file()), candidates[0])


@dataclass(frozen=True)
class Nb201Table:
    """arch_str -> CIFAR-10 test accuracy (%) after 200 epochs (mean over seeds)."""

    test_200ep: dict[str, float]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Nb201Table:
        path = Path(path) if path is not None else default_table_path()
        if not path.is_file():
            raise FileNotFoundError(f"path: NAS-Bench-201 table not found at {path}")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"arch_str", "c10_test_200ep"} <= set(
                reader.fieldnames
            ):
                raise ValueError(f"path: {path} lacks the arch_str / c10_test_200ep columns")
            table = {row["arch_str"]: float(row["c10_test_200ep"]) for row in reader}
        return cls(table)

    def accuracy(self, arch: str) -> float:
        """CIFAR-10 test accuracy of ``arch`` (200 epochs); KeyError if not in the table."""
        parse_arch_str(arch)
        return self.test_200ep[arch]

    def percentile(self, arch: str) -> float:
        """Share of the table (%) that ``arch`` is at least as accurate as."""
        acc = self.accuracy(arch)
        values = self.test_200ep.values()
        return 100.0 * sum(v <= acc for v in values) / len(self.test_200ep)

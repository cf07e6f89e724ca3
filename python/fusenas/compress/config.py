"""CompressConfig: the settings of a compression run (``fusenas compress ...``).

Defaults follow TRP's CIFAR-10 recipe (SGD lr 0.1, momentum 0.9, weight decay
1e-4, batch 128, 164 epochs with the learning rate divided by 10 at 50% and
75%) except ``dataset`` (the built-in digits set, so a run works with no data)
and ``epochs`` (the paper's 164 is hours of CPU; pass it explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusenas.data.datasets import DATASETS
from fusenas.nn.lowrank_factors import SCHEMES

MODELS = ("resnet20", "resnet32", "resnet56", "darts")
METHODS = ("trp", "baseline")


@dataclass
class CompressConfig:
    """Settings of a compression run.

    Attributes:
        method: "trp" (Trained Rank Pruning) or "baseline" (the same training
            without it: the same-budget reference).
        model: "resnet20" / "resnet32" / "resnet56", or "darts" (the evaluation
            network of ``genotype``, a genotype.json from a search, with
            ``channels`` and ``layers``).
        dataset, data_dir, limit: the training images (a seeded subset with limit).
        test_size: images held out of them as the test split (5000).
        epochs, batch_size, lr, momentum, weight_decay: SGD; the learning rate is
            divided by 10 at the fractions ``milestones`` of the epochs.
        scheme, energy, period, nuclear_weight, export_threshold: TRP's settings
            (see fusenas.compress.trp.TRPSettings).
        latency_batches: batch sizes of the latency report (2 threads).
        seed, threads, device, out_dir.
    """

    method: str = "trp"
    model: str = "resnet20"
    genotype: str | None = None
    channels: int = 16
    layers: int = 8
    dataset: str = "digits"
    data_dir: str | None = None
    limit: int | None = None
    test_size: int = 5000
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    scheme: str = "channel"
    energy: float = 0.9
    period: int = 1
    nuclear_weight: float = 3e-4
    export_threshold: float = 0.05
    latency_batches: tuple[int, ...] = (1, 64)
    seed: int = 0
    threads: int | None = 2
    device: str = "cpu"
    out_dir: str = "runs/compress"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.model == "darts" and not self.genotype:
            raise ValueError("genotype: required (a genotype.json) when model is 'darts'")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: expected one of {SCHEMES}, got {self.scheme!r}")
        for name in ("epochs", "batch_size", "test_size", "channels", "layers", "period"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if not isinstance(self.energy, (int, float)) or not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy: expected a fraction in (0, 1], got {self.energy!r}")
        for name in ("lr", "momentum", "weight_decay", "nuclear_weight", "export_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
        if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones: expected fractions in (0, 1), got {self.milestones!r}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if not self.latency_batches or not all(
            isinstance(b, int) and b > 0 for b in self.latency_batches
        ):
            raise ValueError(
                f"latency_batches: expected positive integers, got {self.latency_batches!r}"
            )
        self.latency_batches = tuple(self.latency_batches)
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")

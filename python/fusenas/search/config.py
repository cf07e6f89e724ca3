"""SearchConfig: every setting of a PC-DARTS search, with PC-DARTS' CIFAR-10 values as defaults.

Loaded from YAML + ``--set key=value`` overrides through fusenas.config_file;
the defaults reproduce the paper's CIFAR-10 search except ``dataset`` (the
built-in digits set, so a search runs with no data download) and
``batch_size`` (64: CPU-sized).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusenas.data.datasets import DATASETS

SPACES = ("darts", "nb201")


def _positive_int(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")


def _non_negative(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {v!r}")


@dataclass
class SearchConfig:
    """Settings of ``fusenas search pcdarts``.

    Attributes (PC-DARTS' CIFAR-10 values unless noted):
        space: "darts" (8 candidates, 14 edges, normal + reduction cells) or
            "nb201" (NAS-Bench-201's 5 candidates, 6 edges, one cell type).
        dataset: "digits" (built in), "cifar10" or "fashion-mnist".
        data_dir: the CIFAR-10 .npz or batches directory / Fashion-MNIST IDX
            directory; None: the default place.
        limit: use this many training images (seeded subset), None: all.
        channels: C of the first cells (16).
        layers: darts: cells (8); nb201: cells per stage (5 in NAS-Bench-201).
        k: partial-channel proportion 1/k (4).
        edge_normalization: learn betas (True).
        epochs (50), warmup_epochs (15, architecture frozen), batch_size (64 here; 256 paper).
        lr (0.1), lr_min (0), momentum (0.9), weight_decay (3e-4), grad_clip (5):
            SGD with a cosine schedule for the weights.
        arch_lr (6e-4), arch_weight_decay (1e-3), arch_betas ((0.5, 0.999)): Adam for
            alphas and betas, first-order.
        augment: random crop + flip on 32x32 data sets.
        eval_limit: images of the architecture half scored each epoch (None: all).
        latency_weight: weight of the predicted-latency term in the architecture
            loss (0: off); needs latency_predictor.
        latency_predictor: path of a predictor fitted by ``fusenas latency fit``.
        seed, threads (None: torch's default), channels_last.
        fused: edges run the fused pc_mixed_op (True) or PC-DARTS' eager
            formulation from torch ops (False: the reference, for comparisons).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        out_dir: where the log, genotypes, plots and checkpoint go.
    """

    space: str = "darts"
    dataset: str = "digits"
    data_dir: str | None = None
    limit: int | None = None
    channels: int = 16
    layers: int = 8
    k: int = 4
    edge_normalization: bool = True
    epochs: int = 50
    warmup_epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_weight_decay: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    augment: bool = True
    eval_limit: int | None = 2000
    latency_weight: float = 0.0
    latency_predictor: str | None = None
    seed: int = 0
    threads: int | None = None
    channels_last: bool = False
    fused: bool = True
    device: str = "auto"
    out_dir: str = "runs/search"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space: expected one of {SPACES}, got {self.space!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
        for name in ("channels", "layers", "k", "epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("limit", "eval_limit", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if (
            isinstance(self.warmup_epochs, bool)
            or not isinstance(self.warmup_epochs, int)
            or (self.warmup_epochs < 0)
        ):
            raise ValueError(f"warmup_epochs: expected an integer >= 0, got {self.warmup_epochs!r}")
        if self.channels % self.k:
            raise ValueError(
                f"k: expected a divisor of channels={self.channels} (C/k channels go through "
                f"the candidates), got {self.k}"
            )
        for name in ("lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
                     "arch_weight_decay", "latency_weight"):  # fmt: skip
            _non_negative(name, getattr(self, name))
        betas = self.arch_betas
        if (
            not isinstance(betas, (list, tuple))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"arch_betas: expected two numbers in [0, 1), got {betas!r}")
        self.arch_betas = (float(betas[0]), float(betas[1]))
        if self.latency_weight > 0 and not self.latency_predictor:
            raise ValueError("latency_predictor: required when latency_weight > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("edge_normalization", "augment", "channels_last", "fused"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")

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

MODELS = ("resnet20", "resnet32", "resnet56", "darts", "nb201")
METHODS = ("trp", "baseline", "slq", "mlq", "dnq")
QUANT_METHODS = ("slq", "mlq", "dnq")


@dataclass
class CompressConfig:
    """Settings of a compression run.

    Attributes:
        method: "trp" (Trained Rank Pruning), "baseline" (the same training
            without it: the same-budget reference), or the k-bit quantizers
            "slq" / "mlq" (single / multi-level quantization) and "dnq"
            (bit widths per layer from a policy-gradient controller).
        model: "resnet20" / "resnet32" / "resnet56", "darts" (the evaluation
            network of ``genotype``, a genotype.json from a search, with
            ``channels`` and ``layers`` cells) or "nb201" (NAS-Bench-201's network
            of the cell in ``genotype``: a genotype.json holding ``arch_str`` or
            the architecture string itself; ``layers`` cells per stage).
        min_kernel: TRP decomposes convs with kernels at least this wide (2, as
            TRP; 1 also factors 1x1 convs, where DARTS cells keep their MACs).
        dataset, data_dir, limit: the training images (a seeded subset with limit).
        test_size: images held out of them as the test split (5000).
        epochs, batch_size, lr, momentum, weight_decay: SGD; the learning rate is
            divided by 10 at the fractions ``milestones`` of the epochs.
        scheme, energy, period, nuclear_weight, export_threshold: TRP's settings
            (see fusenas.compress.trp.TRPSettings).
        bits: slq / mlq: the bit width of every quantized layer (2..8 or
            "ternary"; None: 4 for slq, ternary for mlq).
        init: a float checkpoint (e.g. a baseline run's dense.safetensors) to
            quantize; None: train one first for ``epochs`` epochs.
        stages: fractions of each layer quantized at successive stages (SLQ's
            width level); epochs_per_stage and retrain_lr: the re-training after each.
        depth_groups: mlq: layers are quantized in this many consecutive groups
            (incremental layer compensation), each through all stages.
        budget_bits, bit_choices, dnq_episodes, dnq_tradeoff: dnq's size budget
            (parameter-weighted average bits), candidate widths, controller
            episodes and accuracy / size trade-off.
        quant_exclude: fnmatch patterns of conv / linear layers kept in float.
        latency_batches: batch sizes of the latency report (2 threads).
        seed: seeds the initial weights, the batch order and (unless
            ``split_seed`` is set) the held-out split.
        split_seed: the held-out split's (and ``limit``'s subset's) seed; None:
            ``seed``. Runs with different ``seed`` and one ``split_seed`` train
            on the same images and are scored on the same test split.
        threads, device, out_dir.
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
    min_kernel: int = 2
    bits: int | str | None = None
    init: str | None = None
    stages: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    epochs_per_stage: int = 1
    retrain_lr: float = 0.01
    depth_groups: int = 3
    budget_bits: float = 3.0
    bit_choices: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    dnq_episodes: int = 40
    dnq_tradeoff: float = 0.05
    quant_exclude: tuple[str, ...] = ()
    latency_batches: tuple[int, ...] = (1, 64)
    seed: int = 0
    split_seed: int | None = None
    threads: int | None = 2
    device: str = "cpu"
    out_dir: str = "runs/compress"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.model in ("darts", "nb201") and not self.genotype:
            raise ValueError(f"genotype: required when model is {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: expected one of {SCHEMES}, got {self.scheme!r}")
        for name in (
            "epochs",
            "batch_size",
            "test_size",
            "channels",
            "layers",
            "period",
            "min_kernel",
        ):
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
        if self.bits is None and self.method in ("slq", "mlq"):
            self.bits = 4 if self.method == "slq" else "ternary"
        if self.bits is not None:
            from fusenas.quant.packed import parse_bits

            parse_bits(self.bits)
        if (
            not self.stages
            or list(self.stages) != sorted(self.stages)
            or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in self.stages)
            or self.stages[-1] != 1
        ):
            raise ValueError(
                f"stages: expected increasing fractions in (0, 1] ending at 1, got {self.stages!r}"
            )
        self.stages = tuple(float(f) for f in self.stages)
        for name in ("epochs_per_stage", "depth_groups", "dnq_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if not all(isinstance(b, int) and 2 <= b <= 8 for b in self.bit_choices):
            raise ValueError(f"bit_choices: expected widths in 2..8, got {self.bit_choices!r}")
        self.bit_choices = tuple(sorted(set(self.bit_choices)))
        if self.method == "dnq" and self.budget_bits < self.bit_choices[0]:
            raise ValueError(
                f"budget_bits: {self.budget_bits} is below the narrowest choice "
                f"{self.bit_choices[0]}; no bit assignment can meet it"
            )
        from fusenas._layer_select import as_patterns

        self.quant_exclude = as_patterns(self.quant_exclude, "quant_exclude")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if (v is not None or name == "seed") and (
                isinstance(v, bool) or not isinstance(v, int)
            ):
                raise ValueError(f"{name}: expected an integer, got {v!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")

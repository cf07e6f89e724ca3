"""Latency-aware search (arXiv 2001.06392): measure, fit a predictor, differentiate through it.

1. ``collect``: sample architectures of a space, build each one's network
   (the DARTS evaluation network or NAS-Bench-201's) and time its inference on
   this machine (CPU or GPU), with a progress bar; records go to a JSONL file.
2. ``fit``: a multi-layer regressor from the architecture encoding to the
   latency, trained on part of the records; the relative error on the held-out
   rest is reported (the paper reaches under 10%).
3. During search, the architecture loss adds ``latency_weight`` times the
   predictor applied to the *continuous* encoding of the supernet (softmaxed
   alphas, with the betas' edge weights), which is differentiable in the
   architecture parameters.

Encodings: NAS-Bench-201, the 6 x 5 one-hot of the chosen op per edge. DARTS,
per cell type a 14 x 8 matrix with a 1 at (edge, op) for each of the 8 kept
edges; its relaxation puts softmax(alpha) x the node-wise edge weight x 2 there
(each node keeps two edges, so a node's row sums match).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn
from tqdm.auto import tqdm

from fusenas._atomic import atomic_write_bytes
from fusenas.ops import PC_DARTS_PRIMITIVES
from fusenas.search.genotype import Genotype
from fusenas.search.spaces import darts, nb201

SPACES = ("darts", "nb201")


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space: expected one of {SPACES}, got {space!r}")


def encoding_size(space: str) -> int:
    _check_space(space)
    if space == "nb201":
        return len(nb201.EDGES) * len(nb201.NB201_PRIMITIVES)
    return 2 * darts.num_edges() * len(PC_DARTS_PRIMITIVES)


def _darts_edge_index(node: int, source: int) -> int:
    return sum(2 + i for i in range(node)) + source


def encode(space: str, arch: Genotype | dict | str) -> torch.Tensor:
    """float32 (encoding_size,) one-hot encoding of a discrete architecture."""
    _check_space(space)
    if space == "nb201":
        if not isinstance(arch, str):
            raise TypeError(f"arch: expected an NB201 architecture string, got {type(arch)}")
        enc = torch.zeros(len(nb201.EDGES), len(nb201.NB201_PRIMITIVES))
        for op, src, dst in nb201.parse_arch_str(arch):
            enc[nb201.EDGES.index((dst, src)), nb201.NB201_PRIMITIVES.index(op)] = 1.0
        return enc.flatten()
    g = Genotype.from_dict(arch) if isinstance(arch, dict) else arch
    if not isinstance(g, Genotype):
        raise TypeError(f"arch: expected a Genotype, got {type(arch).__name__}")
    parts = []
    for edges in (g.normal, g.reduce):
        enc = torch.zeros(darts.num_edges(), len(PC_DARTS_PRIMITIVES))
        for i, (op, src) in enumerate(edges):
            if op not in PC_DARTS_PRIMITIVES:
                raise ValueError(f"arch: unknown op {op!r}")
            enc[_darts_edge_index(i // 2, src), PC_DARTS_PRIMITIVES.index(op)] = 1.0
        parts.append(enc.flatten())
    return torch.cat(parts)


def encode_supernet(model: nn.Module) -> torch.Tensor:
    """The differentiable relaxation of a supernet's architecture, same layout as :func:`encode`."""
    if isinstance(model, nb201.Nb201Supernet):
        return F.softmax(model.alphas, dim=-1).flatten()
    if isinstance(model, darts.DartsSupernet):
        parts = []
        for alphas, betas in ((model.alphas_normal, model.betas_normal),
                              (model.alphas_reduce, model.betas_reduce)):  # fmt: skip
            if model.edge_normalization:
                edge = darts.node_normalised(betas)
            else:
                edge = torch.cat([torch.full((2 + i,), 1.0 / (2 + i)) for i in range(darts.STEPS)])
            parts.append((F.softmax(alphas, dim=-1) * (2.0 * edge)[:, None]).flatten())
        return torch.cat(parts)
    raise TypeError(f"model: expected a DARTS or NB201 supernet, got {type(model).__name__}")


def sample_architecture(space: str, gen: torch.Generator) -> Genotype | str:
    """A uniformly random architecture of ``space`` (DARTS: two distinct inputs per node)."""
    _check_space(space)
    if space == "nb201":
        ops = nb201.NB201_PRIMITIVES
        picks = torch.randint(0, len(ops), (len(nb201.EDGES),), generator=gen).tolist()
        nodes, e = [], 0
        for j in range(1, nb201.NODES):
            nodes.append("|" + "|".join(f"{ops[picks[e + i]]}~{i}" for i in range(j)) + "|")
            e += j
        return "+".join(nodes)
    usable = [p for p in PC_DARTS_PRIMITIVES if p != "none"]
    cells = []
    for _ in range(2):
        edges = []
        for i in range(darts.STEPS):
            sources = torch.randperm(2 + i, generator=gen)[:2].sort().values.tolist()
            for src in sources:
                edges.append((usable[int(torch.randint(0, len(usable), (1,), generator=gen))], src))
        cells.append(tuple(edges))
    concat = tuple(range(2, 2 + darts.STEPS))
    return Genotype(cells[0], concat, cells[1], concat)


def build_network(
    space: str,
    arch: Genotype | str,
    channels: int,
    layers: int,
    num_classes: int = 10,
    in_channels: int = 3,
) -> nn.Module:
    """The network whose latency a record measures (the derived, discrete architecture)."""
    _check_space(space)
    if space == "nb201":
        from fusenas.models.nb201_network import Nb201Network

        return Nb201Network(arch, channels, layers, num_classes, in_channels)
    from fusenas.models.darts_network import DartsNetwork

    return DartsNetwork(arch, channels, num_classes, layers, in_channels=in_channels)


@torch.inference_mode()
def time_network(net: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median latency in milliseconds of ``net(x)`` (synchronising CUDA around each call)."""
    import time

    net.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        net(x)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        net(x)
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def collect(
    space: str,
    n: int,
    path: str | os.PathLike,
    *,
    channels: int = 16,
    layers: int = 8,
    batch_size: int = 1,
    image_size: int = 32,
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    passes: int = 1,
) -> list[dict[str, Any]]:
    """Times ``n`` sampled architectures; writes and returns their records.

    Each architecture's latency is the median of ``repeats`` calls, and with
    ``passes`` > 1 the fastest of that many interleaved passes over all of them.
    Each record: ``{"space", "arch", "latency_ms", "batch_size", "device",
    "channels", "layers", "image_size", "passes"}``.
    """
    _check_space(space)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes: expected a positive integer, got {passes!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    archs = [sample_architecture(space, gen) for _ in range(n)]
    best = [float("inf")] * n
    # Several interleaved passes, keeping each architecture's fastest: on a shared
    # machine the background load drifts over minutes, and a slow spell would
    # otherwise land on whichever architectures were timed during it.
    bar = tqdm(total=n * passes, desc=f"latency {space}", unit="arch", disable=not progress)
    for _ in range(passes):
        for i, arch in enumerate(archs):
            net = build_network(space, arch, channels, layers).to(device)
            best[i] = min(best[i], time_network(net, x, repeats, warmup))
            bar.update(1)
    bar.close()
    records = []
    for arch, ms in zip(archs, best, strict=True):
        stored = arch if isinstance(arch, str) else arch.to_dict()
        records.append({"space": space, "arch": stored, "latency_ms": ms,
                        "batch_size": batch_size, "device": str(device), "channels": channels,
                        "layers": layers, "image_size": image_size, "passes": passes})  # fmt: skip
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``collect`` JSONL file, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no latency records at {path}")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            float(r["latency_ms"]), r["arch"], r["space"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"path: {path} line {i} is not a latency record ({exc})") from exc
        records.append(r)
    if len({r["space"] for r in records}) > 1:
        raise ValueError(f"path: {path} mixes records of several spaces")
    return records


class LatencyPredictor(nn.Module):
    """MLP: architecture encoding (..., D) float32 -> predicted latency (...,) in milliseconds."""

    def __init__(self, space: str, hidden: tuple[int, ...] = (128, 64), scale_ms: float = 1.0,
                 measured_on: dict[str, Any] | None = None):  # fmt: skip
        super().__init__()
        _check_space(space)
        self.space, self.hidden = space, tuple(hidden)
        # The networks the latencies were measured on (channels, layers, batch_size,
        # image_size, device): where a found architecture is timed again.
        self.measured_on = dict(measured_on or {})
        dims = [encoding_size(space), *self.hidden, 1]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers[:-1])
        self.register_buffer("scale_ms", torch.tensor(float(scale_ms)))

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        # Predicts latency / scale (targets near 1 train well), softplus keeps it positive.
        return F.softplus(self.mlp(encoding)).squeeze(-1) * self.scale_ms

    def expected(self, model: nn.Module) -> torch.Tensor:
        """Predicted latency (ms, 0-dim) of a supernet's relaxed architecture; differentiable."""
        enc = encode_supernet(model)
        return self(enc.to(self.scale_ms.device, self.scale_ms.dtype))

    def measure(self, arch: Genotype | str, repeats: int = 20) -> float:
        """Measured latency (ms) of ``arch``'s network as the training records were timed."""
        m = self.measured_on
        if not {"channels", "layers"} <= set(m):
            raise ValueError("latency_predictor: fitted on records without network sizes")
        net = build_network(self.space, arch, int(m["channels"]), int(m["layers"]))
        size = int(m.get("image_size", 32))
        x = torch.rand(int(m.get("batch_size", 1)), 3, size, size)
        return time_network(net, x, repeats, warmup=3)

    def check_space(self, space: str) -> None:
        if space != self.space:
            raise ValueError(f"latency_predictor: fitted on space {self.space!r}, not {space!r}")

    def save(self, path: str | os.PathLike) -> None:
        meta = {"format": "fusenas-latency-v1", "space": self.space,
                "hidden": json.dumps(list(self.hidden)),
                "measured_on": json.dumps(self.measured_on)}  # fmt: skip
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(path, save_bytes(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyPredictor:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency_predictor: no file at {path}")
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
            if meta.get("format") != "fusenas-latency-v1":
                raise ValueError(f"format {meta.get('format')!r}")
            model = cls(meta["space"], tuple(json.loads(meta["hidden"])),
                        measured_on=json.loads(meta.get("measured_on", "{}")))  # fmt: skip
            model.load_state_dict(state)
        except Exception as exc:
            raise ValueError(
                f"latency_predictor: {path} is not a latency predictor ({exc})"
            ) from exc
        return model.eval()


@dataclass
class FitReport:
    """Relative errors |pred - true| / true on the training and held-out records."""

    train_mean_rel_error: float
    test_mean_rel_error: float
    test_max_rel_error: float
    n_train: int
    n_test: int


def fit(
    records: list[dict[str, Any]],
    hidden: tuple[int, ...] = (128, 64),
    test_fraction: float = 0.2,
    steps: int = 3000,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> tuple[LatencyPredictor, FitReport]:
    """Fits a :class:`LatencyPredictor` on ``records``; returns it and its held-out errors.

    The default weight decay (1e-2) matters with a few hundred records: on 400
    NAS-Bench-201 architectures timed on a 2-core CPU, 1e-4 reaches 0.2% training
    error and 13% held-out, 1e-2 about 6% and 7%.
    """
    if len(records) < 5:
        raise ValueError(f"records: need at least 5 measured architectures, got {len(records)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    space = records[0]["space"]
    x = torch.stack([encode(space, r["arch"]) for r in records])
    y = torch.tensor([float(r["latency_ms"]) for r in records])
    if (y <= 0).any():
        raise ValueError("records: latencies must be positive")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(records), generator=gen)
    n_test = max(1, int(round(len(records) * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)
    keys = ("channels", "layers", "batch_size", "image_size", "device")
    measured_on = {k: records[0][k] for k in keys if k in records[0]}
    model = LatencyPredictor(space, hidden, float(y[train].mean()), measured_on)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        # Squared relative error: every architecture counts the same, fast or slow.
        loss = ((model(x[train]) - y[train]) / y[train]).square().mean()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        rel = ((model(x) - y) / y).abs()
    report = FitReport(float(rel[train].mean()), float(rel[test].mean()), float(rel[test].max()),
                       len(train), len(test))  # fmt: skip
    return model, report

"""PC-DARTS edge benchmark: fusenas.ops.pc_mixed_op against eager PyTorch and torch.compile.

Side by side in one run, on 2 threads (torch.set_num_threads(2)), for one
PC-DARTS edge (MixedOp, all 8 candidates) at batch N=64:

- mixing part: everything except the parametric candidates (slice, the
  parameter-free candidates none / max_pool_3x3+BN / avg_pool_3x3+BN / skip,
  weighted sum, cat with the bypass, channel shuffle, edge scale); the
  parametric outputs are given leaf tensors. Implementations:
    eager    PC-DARTS' formulation from torch ops (BatchNorm in training mode
             with batch statistics, no running buffers: the same work the fused
             op does),
    compile  torch.compile (inductor) of that same function,
    fused    torch.ops.fusenas.pc_mixed_op;
- whole edge: the parametric candidates too (sep_conv_3x3/5x5, dil_conv_3x3/5x5
  as PC-DARTS defines them, BatchNorm2d(affine=False); FactorizedReduce for
  skip_connect at stride 2) computed by torch modules, then the mixing:
    eager    PC-DARTS' MixedOp,
    compile  torch.compile of the whole eager edge,
    fused    the same torch modules, then pc_mixed_op.

The bytes autograd keeps for backward (distinct storages reached through
saved-tensor hooks, inputs included) are recorded for eager and fused.

Each is timed forward (autograd recording, as in training) and forward +
backward (torch.autograd.grad w.r.t. x, the parametric outputs or module
weights, the mixing weights and the edge scale, for a fixed random grad).
Rounds interleave the implementations so a disturbance hits all of them; the
median over rounds is reported. Before timing, the fused outputs and gradients
are checked against eager.

Grid: N=64; (C, H=W) in {(16, 32), (32, 16), (64, 8)}; K in {2, 4, 8}; stride
1 and 2 with FUSENAS_BENCH_FULL=1, else a quick subset (3 configurations).

    python benchmarks/bench_pc_mixed.py --json pc_mixed.json
    python benchmarks/report_pc_mixed.py pc_mixed.json docs/benchmarks/pc_mixed_op.md

Other knobs: FUSENAS_BENCH_ROUNDS (default 7), FUSENAS_BENCH_MIN_MS (time per
measurement, default 30), FUSENAS_BENCH_CHANNELS_LAST=1 (channels_last inputs),
FUSENAS_BENCH_THREADS (default 2), FUSENAS_BENCH_CLOCK=cpu (process CPU time
instead of wall time: on a shared machine it is far less disturbed by other
processes, and with 1 thread it equals the wall time of an idle machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import fusenas
from fusenas._atomic import write_json_atomic
from fusenas.info import cpu_model
from fusenas.ops import PC_DARTS_PRIMITIVES, _native, pc_mixed_op

N = 64
OPS = list(PC_DARTS_PRIMITIVES)
THREADS = int(os.environ.get("FUSENAS_BENCH_THREADS", "2"))


@dataclass(frozen=True)
class Config:
    c: int
    hw: int
    k: int
    stride: int

    @property
    def name(self) -> str:
        return f"C={self.c} {self.hw}x{self.hw} K={self.k} s={self.stride}"


def configs(full: bool) -> list[Config]:
    if not full:
        return [Config(16, 32, 4, 1), Config(16, 32, 4, 2), Config(64, 8, 2, 1)]
    return [
        Config(c, hw, k, s)
        for c, hw in ((16, 32), (32, 16), (64, 8))
        for k in (2, 4, 8)
        for s in (1, 2)
    ]


# ---- PC-DARTS candidate operations (search-time definitions, affine=False) ----


class SepConv(nn.Sequential):
    def __init__(self, c: int, k: int, stride: int, padding: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, stride, padding, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, 1, padding, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
        )


class DilConv(nn.Sequential):
    def __init__(self, c: int, k: int, stride: int, padding: int, dilation: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
        )


class FactorizedReduce(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(c, c // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c, c // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c, affine=False)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def parametric_ops(ck: int, stride: int) -> nn.ModuleList:
    """The parametric candidates of OPS, in OPS order, on C/K channels."""
    mods = []
    for name in OPS:
        if name == "skip_connect" and stride == 2:
            mods.append(FactorizedReduce(ck))
        elif name == "sep_conv_3x3":
            mods.append(SepConv(ck, 3, stride, 1))
        elif name == "sep_conv_5x5":
            mods.append(SepConv(ck, 5, stride, 2))
        elif name == "dil_conv_3x3":
            mods.append(DilConv(ck, 3, stride, 2, 2))
        elif name == "dil_conv_5x5":
            mods.append(DilConv(ck, 5, stride, 4, 2))
    return nn.ModuleList(mods).train()


# ---- the three implementations ------------------------------------------------


def mixing_eager(x, params, weights, scale, k: int, stride: int):
    """PC-DARTS' MixedOp mixing from torch ops, parametric outputs given."""
    ck = x.shape[1] // k
    xa, xb = x[:, :ck], x[:, ck:]
    it = iter(params)
    y = None
    for w, name in zip(weights, OPS, strict=True):
        if name == "none":
            c = xa[:, :, ::stride, ::stride].mul(0.0)
        elif name == "max_pool_3x3":
            c = F.batch_norm(F.max_pool2d(xa, 3, stride, 1), None, None, training=True)
        elif name == "avg_pool_3x3":
            c = F.avg_pool2d(xa, 3, stride, 1, count_include_pad=False)
            c = F.batch_norm(c, None, None, training=True)
        elif name == "skip_connect" and stride == 1:
            c = xa
        else:
            c = next(it)
        y = w * c if y is None else y + w * c
    bypass = xb if stride == 1 else F.max_pool2d(xb, 2, 2)
    out = torch.cat([y, bypass], dim=1)
    n, c, h, w_ = out.shape
    out = out.view(n, k, c // k, h, w_).transpose(1, 2).reshape(n, c, h, w_)
    return out * scale


def mixing_fused(x, params, weights, scale, k: int, stride: int):
    return pc_mixed_op(x, params, weights, ops=OPS, k=k, stride=stride, edge_scale=scale)[0]


def edge_with(mixing: Callable, mods: nn.ModuleList):
    def edge(x, weights, scale, k: int, stride: int):
        xa = x[:, : x.shape[1] // k]
        return mixing(x, [m(xa) for m in mods], weights, scale, k, stride)

    return edge


# ---- timing --------------------------------------------------------------------


@dataclass
class Result:
    config: str
    c: int
    hw: int
    k: int
    stride: int
    part: str  # "mixing" or "edge"
    mode: str  # "fwd" or "fwd+bwd"
    impl: str  # "eager", "compile" or "fused"
    ms_median: float
    ms_min: float
    rounds: int
    iters: int


def saved_for_backward_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for backward during fn()."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def _load() -> float:
    return os.getloadavg()[0]


CLOCK = time.process_time if os.environ.get("FUSENAS_BENCH_CLOCK") == "cpu" else time.perf_counter


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_ms: float):
    """Median and min ms per call of each fn, rounds interleaving the fns."""
    iters = {}
    for name, fn in fns.items():
        for _ in range(3):  # warm up (compilation, allocator, caches)
            fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-6)
        iters[name] = max(1, int(min_ms / 1e3 / one))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = CLOCK()
            for _ in range(iters[name]):
                fn()
            samples[name].append((CLOCK() - t0) / iters[name] * 1e3)
    return {n: (statistics.median(s), min(s), iters[n]) for n, s in samples.items()}


def _close(a, b, what: str):
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=lambda m: f"{what}: {m}")


def bench_config(cfg: Config, rounds: int, min_ms: float, channels_last: bool) -> list[Result]:
    torch._dynamo.reset()  # a fresh compile per shape (no automatic dynamic shapes)
    torch.manual_seed(0)
    ck, ho = cfg.c // cfg.k, cfg.hw // cfg.stride
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(N, cfg.c, cfg.hw, cfg.hw).contiguous(memory_format=fmt).requires_grad_()
    mods = parametric_ops(ck, cfg.stride)
    params = [
        torch.randn(N, ck, ho, ho).contiguous(memory_format=fmt).requires_grad_() for _ in mods
    ]
    weights = torch.softmax(torch.randn(len(OPS)), 0).requires_grad_()
    scale = torch.tensor(0.6).requires_grad_()
    grad = torch.randn(N, cfg.c, ho, ho).contiguous(memory_format=fmt)
    k, s = cfg.k, cfg.stride

    mixing = {"eager": mixing_eager, "compile": torch.compile(mixing_eager), "fused": mixing_fused}
    edges = {
        "eager": edge_with(mixing_eager, mods),
        "compile": torch.compile(edge_with(mixing_eager, mods)),
        "fused": edge_with(mixing_fused, mods),
    }
    mix_inputs = [x, *params, weights, scale]
    edge_inputs = [x, *mods.parameters(), weights, scale]

    # Correctness first: fused and compile against eager, outputs and gradients.
    for part, impls, inputs, call in (
        ("mixing", mixing, mix_inputs, lambda f: f(x, params, weights, scale, k, s)),
        ("edge", edges, edge_inputs, lambda f: f(x, weights, scale, k, s)),
    ):
        ref = call(impls["eager"])
        ref_g = torch.autograd.grad(ref, inputs, grad)
        for name in ("compile", "fused"):
            out = call(impls[name])
            _close(out, ref, f"{cfg.name} {part} {name} output")
            grads = torch.autograd.grad(out, inputs, grad)
            for i, (a, b) in enumerate(zip(grads, ref_g, strict=True)):
                _close(a, b, f"{cfg.name} {part} {name} grad {i}")

    results = []
    memory = []
    for part, impls, call in (
        ("mixing", mixing, lambda f: f(x, params, weights, scale, k, s)),
        ("edge", edges, lambda f: f(x, weights, scale, k, s)),
    ):
        for impl in ("eager", "fused"):  # compiled graphs bypass the hooks
            nbytes = saved_for_backward_bytes(lambda f=impls[impl], call=call: call(f))
            memory.append({"config": cfg.name, "part": part, "impl": impl, "saved_bytes": nbytes})
            print(f"{cfg.name:<22} {part:<7} saved    {impl:<8} {nbytes / 2**20:8.2f} MiB")
    for part, impls, inputs, call in (
        ("mixing", mixing, mix_inputs, lambda f: f(x, params, weights, scale, k, s)),
        ("edge", edges, edge_inputs, lambda f: f(x, weights, scale, k, s)),
    ):
        for mode in ("fwd", "fwd+bwd"):

            def make(f, call=call, inputs=inputs, mode=mode):
                if mode == "fwd":
                    return lambda: call(f)
                return lambda: torch.autograd.grad(call(f), inputs, grad)

            timed = time_interleaved({n: make(f) for n, f in impls.items()}, rounds, min_ms)
            for impl, (med, mn, iters) in timed.items():
                results.append(
                    Result(
                        cfg.name,
                        cfg.c,
                        cfg.hw,
                        cfg.k,
                        cfg.stride,
                        part,
                        mode,
                        impl,
                        med,
                        mn,
                        rounds,
                        iters,
                    )  # fmt: skip
                )
                print(f"{cfg.name:<22} {part:<7} {mode:<8} {impl:<8} {med:8.3f} ms", flush=True)
    return results, memory


def environment() -> dict:
    info = _native.cpu().build_info() if _native.cpu() is not None else {}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "fusenas": fusenas.__version__,
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
        "isa": info.get("pc_mixed_active_isa", "reference"),
        "batch": N,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="pc_mixed.json", help="where to write the results")
    parser.add_argument("--full", action="store_true", help="full grid (FUSENAS_BENCH_FULL=1)")
    args = parser.parse_args(argv)
    full = args.full or os.environ.get("FUSENAS_BENCH_FULL") == "1"
    rounds = int(os.environ.get("FUSENAS_BENCH_ROUNDS", "7"))
    min_ms = float(os.environ.get("FUSENAS_BENCH_MIN_MS", "30"))
    channels_last = os.environ.get("FUSENAS_BENCH_CHANNELS_LAST") == "1"
    torch.set_num_threads(THREADS)
    env = environment()
    env.update(grid="full" if full else "quick", channels_last=channels_last, rounds=rounds,
               clock="process cpu time" if CLOCK is time.process_time else "wall")  # fmt: skip
    env["load_before"] = _load()
    t0 = time.time()
    results, memory = [], []
    for cfg in configs(full):
        r, m = bench_config(cfg, rounds, min_ms, channels_last)
        results += r
        memory += m
    env["load_after"] = _load()
    env["seconds"] = round(time.time() - t0, 1)
    rows = [asdict(r) for r in results]
    data = {"environment": env, "results": rows, "saved_for_backward": memory}
    write_json_atomic(args.json, data)
    print(f"wrote {args.json} ({len(results)} rows, {env['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak heap growth of one low-rank conv call without a timing loop: fused vs two convs.

The quick grid (bench_lowrank.py) measures peak memory after each variant's timing
loop, with every variant of a case alive in one process. This script measures
layers the way a single training or inference script would meet them: no timing
loop, two warm-up calls per variant, then one measured call (growth of live heap
bytes, every malloc counted, through the LD_PRELOAD shim of heap_peak.py). oneDNN's
scratchpad differs between the two settings (512 ch @7 channel rank 77 forward:
6.6 MiB for the two convs in the grid, 3.7 here).

    python benchmarks/lowrank_fresh_memory.py                 # every layer below
    python benchmarks/lowrank_fresh_memory.py 512@7ch77 512@7sp384

channels_last float32, 2 threads, N = 32 (ImageNet layers) or 128 (CIFAR).
Prints one line per layer, variant and pass, in MiB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heap_peak  # noqa: E402  (benchmarks/heap_peak.py)
from bench_lowrank import rank_for  # noqa: E402  (the grid's ranks)

# name: (channels, pixels, scheme, MAC reduction), layers of bench_lowrank's grid
LAYERS = {
    "512@7sp384": (512, 7, "spatial", 2),
    "512@7ch77": (512, 7, "channel", 6),
    "512@7ch230": (512, 7, "channel", 2),
    "256@14sp192": (256, 14, "spatial", 2),
    "16@32sp12": (16, 32, "spatial", 2),
}


def measure(name: str) -> list[tuple[str, str, float]]:
    """[(variant, pass, MiB)] for one layer."""
    from fusenas.ops import lowrank_conv2d
    from fusenas.ops.lowrank_conv import factor_params

    c, px, scheme, reduction = LAYERS[name]
    rank = rank_for(scheme, c, c, reduction)
    n = 128 if c <= 64 else 32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, px, px, generator=g).contiguous(memory_format=torch.channels_last)
    k1, k2 = ((3, 1), (1, 3)) if scheme == "spatial" else ((3, 3), (1, 1))
    w1 = torch.randn(rank, c, *k1, generator=g) * 0.05
    w2 = torch.randn(c, rank, *k2, generator=g) * 0.05
    bias = torch.zeros(c)
    (_, p1, _), (_, p2, _) = factor_params(scheme, (1, 1), (1, 1), (1, 1))
    grad = torch.randn(n, c, px, px, generator=g).contiguous(memory_format=torch.channels_last)

    def fused(*a):
        return lowrank_conv2d(*a, scheme=scheme, stride=1, padding=1)

    def two_convs(x, w1, w2, b):
        return F.conv2d(F.conv2d(x, w1, None, 1, p1), w2, b, 1, p2)

    rows = []
    for variant, fn in (("fusenas", fused), ("two_convs", two_convs)):
        for mode in ("fwd", "fwdbwd"):
            leaves = [
                t.detach().clone().requires_grad_(mode == "fwdbwd") for t in (x, w1, w2, bias)
            ]

            def step(fn=fn, mode=mode, leaves=leaves):
                for t in leaves:
                    t.grad = None
                if mode == "fwd":
                    with torch.no_grad():
                        return fn(*leaves)
                fn(*leaves).backward(grad)

            step()
            step()
            for t in leaves:
                t.grad = None
            rows.append((variant, mode, heap_peak.peak_during(step) / 2**20))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="*", help=f"any of {', '.join(LAYERS)} (default: all)")
    args = parser.parse_args()
    unknown = [name for name in args.layers if name not in LAYERS]
    if unknown:
        parser.error(f"layers: unknown {unknown}; expected any of {list(LAYERS)}")
    heap_peak.preload_or_fallback()  # may re-execute this script with the shim loaded
    if not heap_peak.active():
        sys.exit("lowrank_fresh_memory: the heap shim could not be loaded (needs Linux and cc)")
    torch.set_num_threads(2)
    for name in args.layers or list(LAYERS):
        for variant, mode, mib in measure(name):
            print(f"{name:12s} {variant:10s} {mode:7s} {mib:8.2f} MiB", flush=True)


if __name__ == "__main__":
    main()

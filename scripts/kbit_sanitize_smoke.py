"""Drives every k-bit CPU kernel path over odd shapes, for scripts/sanitize.sh.

Under AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitize.sh loads
a sanitized fusenas._C first) this is the wide net for out-of-bounds reads and
UB: every bit width (2..8, ternary), symmetric and asymmetric, per-channel and
group scales (16..128), K and N that are not multiples of the SIMD width or of
the 128-element packing block, M = 1..33 (the GEMV and the GEMM paths) and a
larger GEMM, float32 and bfloat16 activations, with and without bias, 1, 2 and
more threads than rows, and each CPU path (FUSENAS_CPU_ISA=scalar|avx2|avx512,
capped by the hardware). Each output is compared with the pure-torch reference,
so a sanitizer-clean run is also a correct one. Tensors are allocated at their
exact sizes, so ASan's redzones sit right after the last valid byte.

    python scripts/kbit_sanitize_smoke.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import fusenas
from fusenas.ops import _native
from fusenas.ops._reference import dequantize_reference, kbit_matmul_reference

ALL_BITS: list[int | str] = [2, 3, 4, 5, 6, 7, 8, "ternary"]
# (M, N, K, group_size, symmetric); group None = one scale per output channel.
SHAPES = [
    (1, 1, 1, None, True),
    (1, 3, 7, None, False),
    (1, 17, 129, None, True),
    (2, 5, 255, None, False),
    (1, 67, 4096, 128, True),
    (3, 33, 96, 48, False),
    (4, 19, 160, 32, True),
    (7, 9, 384, 128, False),
    (16, 31, 272, 16, True),
    (17, 65, 640, 64, False),
    (33, 47, 1000, None, True),
    (64, 96, 512, 128, False),
]
M_SWEEP_SHAPE = (21, 160, 32, False)  # N, K, group, symmetric; M runs over 1..33


def isas() -> list[str]:
    order = ["scalar", "avx2", "avx512"]
    hw = _native.cpu().build_info()["hardware_isa"]
    return order[: order.index(hw) + 1]


def check(x: torch.Tensor, pw, bias: torch.Tensor | None, what: str) -> None:
    y = fusenas.ops.kbit_matmul(x, pw, bias)
    ref = kbit_matmul_reference(
        x, pw.codes, pw.scales, pw.zeros, bias, pw.bits, pw.ternary, pw.group_size
    )
    k = x.shape[-1]
    if x.dtype == torch.bfloat16:
        # The bf16 kernels may round the dequantized weights to bf16 (AVX512-BF16 dot
        # products) and round the output: bound the error by 2^-7 of sum |x * w| plus the
        # output rounding, instead of a flat tolerance that cancellation can defeat.
        w = dequantize_reference(pw.codes, pw.scales, pw.zeros, k, pw.bits, pw.ternary,
                                 pw.group_size)  # fmt: skip
        bound = 2.0**-7 * (x.float().abs() @ w.abs().T + ref.float().abs()) + 1e-6
        err = (y.float() - ref.float()).abs()
        if not bool((err <= bound).all()):
            i = int((err / bound).argmax())
            raise AssertionError(
                f"{what}: kernel differs from the reference: |err| {err.flatten()[i]:.3g} > "
                f"bound {bound.flatten()[i]:.3g} at flat index {i}"
            )
        return
    try:
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, k**0.5))
    except AssertionError as exc:
        raise AssertionError(f"{what}: kernel differs from the reference\n{exc}") from None


def run(quick: bool) -> int:
    if _native.cpu() is None:
        print("fusenas._C is not built: nothing to sanitize", file=sys.stderr)
        return 2
    calls = 0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    thread_counts = [1, 2] if quick else [1, 2, 5]
    for isa in isas():
        os.environ["FUSENAS_CPU_ISA"] = isa
        for bits in ALL_BITS:
            for dtype in (torch.float32, torch.bfloat16):
                for i, (m, n, k, g, sym) in enumerate(SHAPES):
                    sym = sym or bits == "ternary"
                    w = torch.randn(n, k, generator=gen)
                    pw = fusenas.quantize_weight(w, bits, g, sym)
                    x = torch.randn(m, k, generator=gen).to(dtype)
                    bias = torch.randn(n, generator=gen).to(dtype) if i % 2 else None
                    threads = thread_counts[i % len(thread_counts)]
                    torch.set_num_threads(threads)
                    what = f"isa={isa} bits={bits} {dtype} M={m} N={n} K={k} g={g} sym={sym}"
                    check(x, pw, bias, f"{what} threads={threads}")
                    calls += 1
                    if dtype == torch.float32:
                        out = fusenas.ops.dequantize_weight(pw)
                        ref = dequantize_reference(
                            pw.codes, pw.scales, pw.zeros, k, pw.bits, pw.ternary, pw.group_size
                        )
                        if not torch.equal(out, ref):
                            raise AssertionError(f"{what}: dequantize differs from the reference")
                        calls += 1
                n, k, g, sym = M_SWEEP_SHAPE
                pw = fusenas.quantize_weight(
                    torch.randn(n, k, generator=gen), bits, g, sym or bits == "ternary"
                )
                torch.set_num_threads(2)
                for m in range(1, 34, 4 if quick else 1):
                    x = torch.randn(m, k, generator=gen).to(dtype)
                    check(x, pw, None, f"isa={isa} bits={bits} {dtype} M={m} N={n} K={k} g={g}")
                    calls += 1
        print(f"  {isa}: ok ({calls} kernel calls so far)", flush=True)
    os.environ.pop("FUSENAS_CPU_ISA", None)
    print(
        f"kbit sanitize smoke: {calls} kernel calls over {len(isas())} CPU paths passed "
        f"in {time.perf_counter() - t0:.1f}s (fusenas._C from {_native.cpu().__file__})"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer M values and thread counts")
    return run(p.parse_args().quick)


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmarks of the k-bit matmul: fusenas's CUDA kernels against F.linear.

Run on a machine with a GPU and fusenas._C_cuda built:

    pytest benchmarks/bench_kbit_cuda.py --benchmark-only --benchmark-json=kbit_cuda.json

Each benchmark group is one shape (M, K, N) of a linear layer of a 7B LLM
(4096 -> 4096, 4096 -> 11008, 11008 -> 4096) at M = 1, 8 (decoding), 128 and 512
(prefill). In a group: F.linear with a float16 and a bfloat16 weight (cuBLAS,
the baseline a user would keep) and fusenas with 4-bit weights in groups of
128 (float16 and bfloat16 activations) and 2-, 3- and 8-bit weights.
The ratio fusenas / F.linear per group is the figure of merit; extra_info
carries the bytes of weight each variant streams, for a bandwidth read-out.
Every timed call ends with torch.cuda.synchronize(), so a round is the
kernel's time plus one launch and one synchronisation. Skips without a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import fusenas
from fusenas.ops import _native, kbit_matmul

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or _native.cuda() is None,
        reason="needs a CUDA device and fusenas._C_cuda",
    ),
]

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K, N)
MS = [1, 8, 128, 512]
# (name, kind, bits, group size, activation dtype)
VARIANTS = [
    ("F.linear fp16", "torch", None, None, torch.float16),
    ("F.linear bf16", "torch", None, None, torch.bfloat16),
    ("fusenas 4-bit g128 fp16", "fusenas", 4, 128, torch.float16),
    ("fusenas 4-bit g128 bf16", "fusenas", 4, 128, torch.bfloat16),
    ("fusenas 2-bit g128 fp16", "fusenas", 2, 128, torch.float16),
    ("fusenas 3-bit g128 fp16", "fusenas", 3, 128, torch.float16),
    ("fusenas 8-bit g128 fp16", "fusenas", 8, 128, torch.float16),
]


@functools.lru_cache(maxsize=2)
def _dense_weight(k: int, n: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(k * 31 + n)
    return torch.randn(n, k, device="cuda", generator=g) / k**0.5


@functools.lru_cache(maxsize=8)
def _packed_weight(k: int, n: int, bits: int, group: int) -> fusenas.PackedWeight:
    return fusenas.quantize_weight(_dense_weight(k, n), bits, group, symmetric=True)


@functools.lru_cache(maxsize=4)
def _cast_weight(k: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return _dense_weight(k, n).to(dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize(("k", "n"), SHAPES, ids=[f"K{k}-N{n}" for k, n in SHAPES])
def test_kbit_matmul_cuda(benchmark, k, n, m, variant):
    name, kind, bits, group, dtype = variant
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    if kind == "torch":
        w = _cast_weight(k, n, dtype)

        def op():
            return F.linear(x, w)

        weight_bytes = w.numel() * w.element_size()
    else:
        pw = _packed_weight(k, n, bits, group)

        def op():
            return kbit_matmul(x, pw)

        weight_bytes = pw.nbytes()

    def run():
        op()
        torch.cuda.synchronize()

    run()  # warm-up: cuBLAS handles, first launch
    benchmark.group = f"kbit_cuda M={m} K={k} N={n}"
    benchmark.extra_info.update(
        variant=name,
        m=m,
        k=k,
        n=n,
        bits=bits,
        group_size=group,
        dtype=str(dtype).removeprefix("torch."),
        weight_bytes=weight_bytes,
        flops=2 * m * k * n,
        device=torch.cuda.get_device_name(),
    )
    benchmark(run)

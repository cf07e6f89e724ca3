"""``python -m fusenas.info``: what was built, and which path each op takes here.

Prints the fusenas and torch versions, ``fusenas._C.build_info()`` (the CPU ISA
chosen at run time, OpenMP threads, compiler), ``fusenas._C_cuda.build_info()``
when the CUDA extension imports (archs, devices), torch's thread settings, where
packed CPU weights are placed (huge pages, ``fusenas.weight_memory``), and
for ``kbit_matmul``, ``lowrank_conv2d`` and ``pc_mixed_op`` whether CPU float32 /
bfloat16 / float16 (float64) and CUDA inputs run a native kernel or the pure-torch
reference, and why.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

from fusenas.ops import _native


def _call_build_info(ext: Any) -> dict[str, Any] | str:
    fn = getattr(ext, "build_info", None)
    if fn is None:
        return "no build_info() in this build"
    try:
        return dict(fn())
    except Exception as exc:  # a broken build must not break the report
        return f"build_info() failed: {exc}"


def kbit_matmul_paths() -> dict[str, str]:
    """Device / dtype -> "native kernel (...)" or "reference (why)" for kbit_matmul."""
    from fusenas.ops.kbit_matmul import _CPU_DTYPES, _CUDA_DTYPES

    paths: dict[str, str] = {}
    cpu = _native.cpu()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        key = f"cpu {str(dtype).removeprefix('torch.')}"
        if cpu is None:
            paths[key] = f"reference (fusenas._C not built: {_native.load_error('_C')})"
        elif dtype not in _CPU_DTYPES:
            paths[key] = f"reference (no CPU kernel for {str(dtype).removeprefix('torch.')})"
        else:
            info = _call_build_info(cpu)
            isa = info.get("active_isa", "?") if isinstance(info, dict) else "?"
            if isinstance(info, dict) and info.get("avx512_bf16_active"):
                isa += " + avx512_bf16"
            lut = ""
            if hasattr(cpu, "kbit_lut_available") and cpu.kbit_lut_available():
                lut = (
                    "; 2-bit/3-bit/ternary at batch 1: table GEMV (avx512_vnni)"
                    if cpu.kbit_lut_enabled()
                    else "; table GEMV off (FUSENAS_CPU_LUT=0)"
                )
            paths[key] = f"native kernel (fusenas._C, {isa}){lut}"
    cuda = _native.cuda()
    dtypes = ", ".join(str(d).removeprefix("torch.") for d in _CUDA_DTYPES)
    if not torch.cuda.is_available():
        why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA device"
        paths["cuda"] = f"unavailable ({why})"
    elif cuda is None:
        paths["cuda"] = f"reference (fusenas._C_cuda not built: {_native.load_error('_C_cuda')})"
    elif not hasattr(cuda, "kbit_matmul_cuda"):
        paths["cuda"] = "unusable (fusenas._C_cuda has no kbit_matmul_cuda: placeholder build)"
    else:
        paths["cuda"] = f"native kernel (fusenas._C_cuda) for {dtypes}; reference for others"
    return paths


def _vec8_note(double_pumped: bool) -> str:
    """When the pixel-major path takes the 8-wide (avx512-ymm) kernels on an AVX-512 host, as
    pixel_major_kernels (csrc/cpu/lowrank_conv_tiles.h) decides."""
    force = os.environ.get("FUSENAS_LOWRANK_VEC8", "")
    if force:
        return (
            "; avx512-ymm kernels for every layer (FUSENAS_LOWRANK_VEC8=1)" if force == "1" else ""
        )
    if os.environ.get("FUSENAS_CPU_ISA") or not double_pumped:
        return ""
    return (
        "; AVX-512 on 256-bit units: 8-wide avx512-ymm kernels for ranks whose last 16-wide"
        " vector is at most half full"
    )


def lowrank_conv2d_paths() -> dict[str, str]:
    """Device / dtype -> "native kernel (...)" or "reference (why)" for lowrank_conv2d."""
    from fusenas.ops.lowrank_conv import _CPU_DTYPES, _native_reason

    paths: dict[str, str] = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        key = f"cpu {str(dtype).removeprefix('torch.')}"
        reason = _native_reason(torch.empty(0, dtype=dtype))
        if reason is None and dtype in _CPU_DTYPES:
            info = _call_build_info(_native.cpu())
            isa = info.get("lowrank_isa", "?") if isinstance(info, dict) else "?"
            paths[key] = f"native kernel (fusenas._C, {isa})"
            if dtype == torch.float32:
                off = os.environ.get("FUSENAS_LOWRANK_WINOGRAD") == "0"
                paths[key] += (
                    "; channels_last: pixel-major, Winograd F(4, 3) for 3-tap factors and"
                    " F(4x4, 3x3) for channel-scheme 3x3 factors at stride 1"
                    + (" off (FUSENAS_LOWRANK_WINOGRAD=0)" if off else "")
                )
                if isa == "avx512":
                    paths[key] += _vec8_note(info.get("avx512_double_pumped", False))
        else:
            paths[key] = f"reference ({reason})"
    if not torch.cuda.is_available():
        why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA device"
        paths["cuda"] = f"unavailable ({why})"
    else:
        from fusenas.ops.lowrank_conv_cuda import cuda_path

        if cuda_path() == "cudnn":
            paths["cuda"] = "cuDNN two convs (default; FUSENAS_LOWRANK_CUDA=fused: fused kernels)"
        elif _native.cuda() is None:
            paths["cuda"] = "reference (fusenas._C_cuda not built)"
        else:
            paths["cuda"] = "fused kernels (fusenas._C_cuda; FUSENAS_LOWRANK_CUDA=fused)"
    return paths


def pc_mixed_op_paths() -> dict[str, str]:
    """Device / dtype -> which path fusenas::pc_mixed_op takes, and why."""
    paths: dict[str, str] = {}
    cpu = _native.cpu()
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        key = f"cpu {str(dtype).removeprefix('torch.')}"
        if cpu is None:
            paths[key] = f"reference (fusenas._C not built: {_native.load_error('_C')})"
        elif not hasattr(cpu, "pc_mixed_forward_cpu"):
            paths[key] = "reference (fusenas._C has no pc_mixed kernels: stale build)"
        elif dtype != torch.float32:
            paths[key] = f"reference (no CPU kernel for {str(dtype).removeprefix('torch.')})"
        else:
            info = _call_build_info(cpu)
            isa = info.get("pc_mixed_active_isa", "?") if isinstance(info, dict) else "?"
            paths[key] = f"native kernel (fusenas._C, {isa}; H * W < 2**24)"
    if not torch.cuda.is_available():
        why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA device"
        paths["cuda"] = f"unavailable ({why})"
    elif torch._C._dispatch_has_kernel_for_dispatch_key("fusenas::pc_mixed_op", "CUDA"):
        paths["cuda"] = "CUDA kernel registered"
    else:
        paths["cuda"] = "reference (no CUDA kernel registered: CompositeExplicitAutograd fallback)"
    return paths


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers, from /proc/cpuinfo
    (virtual machines often report only "AMD EPYC": the numbers tell Zen 3 from Zen 5),
    or platform.processor() where that file is absent."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def weight_memory_info() -> str:
    """Where packed CPU weights are placed (fusenas.weight_memory), with the OS's THP mode."""
    from fusenas import weight_memory

    thp = f"transparent huge pages: {weight_memory.thp_setting()}"
    if weight_memory.enabled():
        return f"2 MiB-aligned, advised for huge pages from 2 MiB ({thp})"
    off = "FUSENAS_HUGE_PAGES=0" if _native.cpu() is not None else "fusenas._C not built"
    return f"torch's allocator ({off}; {thp})"


def collect_info() -> dict[str, Any]:
    """Everything :func:`main` prints, as a dict."""
    from fusenas import __version__

    cpu, cuda = _native.cpu(), _native.cuda()
    return {
        "fusenas": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "fusenas._C": _call_build_info(cpu) if cpu is not None else
        f"not built ({_native.load_error('_C')})",
        "fusenas._C_cuda": _call_build_info(cuda) if cuda is not None else
        f"not built ({_native.load_error('_C_cuda')})",
        "cuda devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch threads": torch.get_num_threads(),
        "torch interop threads": torch.get_num_interop_threads(),
        "kbit weights (CPU)": weight_memory_info(),
        "kbit_matmul": kbit_matmul_paths(),
        "lowrank_conv2d": lowrank_conv2d_paths(),
        "pc_mixed_op": pc_mixed_op_paths(),
    }  # fmt: skip


def format_info(info: dict[str, Any]) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k:<22} {v}" for k, v in value.items()]
        else:
            lines.append(f"{key:<24} {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    print(format_info(collect_info()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

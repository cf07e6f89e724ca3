"""Build step: drive CMake + Ninja to build fusenas._C (CPU) and fusenas._C_cuda.

Knobs (environment variables):
  FUSENAS_CUDA=auto|on|off   auto (default) builds _C_cuda when nvcc is found
  FUSENAS_CUDA_ARCHS         CUDA archs, e.g. "80;90" (default); never "native"
  FUSENAS_SKIP_EXT=1         pure-Python install; ops fall back to the torch reference
  FUSENAS_SANITIZE=1         build _C with AddressSanitizer + UBSan (scripts/sanitize.sh)
  FUSENAS_BUILD_TYPE         CMake build type (default Release)
  MAX_JOBS                   parallel compile jobs
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)

        import pybind11

        cuda = "on" if _cuda_wanted() else "off"
        archs = os.environ.get("FUSENAS_CUDA_ARCHS", "80;90")
        if "native" in archs:
            raise ValueError("FUSENAS_CUDA_ARCHS=native is not allowed: name the archs")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('FUSENAS_BUILD_TYPE', 'Release')}",
            f"-DFUSENAS_CUDA={cuda.upper()}",
            f"-DFUSENAS_CUDA_ARCHS={archs}",
            f"-DFUSENAS_SANITIZE={'ON' if os.environ.get('FUSENAS_SANITIZE') == '1' else 'OFF'}",
        ]
        if shutil.which("ninja") or _pip_ninja():
            args.append("-GNinja")
            if _pip_ninja():
                args.append(f"-DCMAKE_MAKE_PROGRAM={_pip_ninja()}")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


def _cuda_wanted() -> bool:
    """FUSENAS_CUDA=on|off, or auto: build _C_cuda when nvcc is found."""
    mode = os.environ.get("FUSENAS_CUDA", "auto").lower()
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"FUSENAS_CUDA must be auto, on or off, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return bool(shutil.which("nvcc") or Path(cuda_home, "bin", "nvcc").exists())


def _pip_ninja() -> str | None:
    try:
        import ninja

        path = Path(ninja.BIN_DIR) / "ninja"
        return str(path) if path.exists() else None
    except ImportError:
        return None


class CMakeBuildOnce(CMakeBuild):
    """One CMake run builds every extension; the others only need copying."""

    def build_extension(self, ext: Extension) -> None:
        if not getattr(self, "_cmake_done", False):
            super().build_extension(ext)
            self._cmake_done = True


skip = os.environ.get("FUSENAS_SKIP_EXT") == "1"
# _C_cuda_emu: the CUDA kernels' block code compiled for the host, run by
# tests/test_cuda_emulation.py on machines without a GPU (CMake option FUSENAS_CUDA_EMU).
extensions = [CMakeExtension("fusenas._C"), CMakeExtension("fusenas._C_cuda_emu")]
if _cuda_wanted():
    extensions.append(CMakeExtension("fusenas._C_cuda"))
setup(
    ext_modules=[] if skip else extensions,
    cmdclass={} if skip else {"build_ext": CMakeBuildOnce},
)

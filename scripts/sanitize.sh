#!/usr/bin/env bash
# Builds the CPU extension (fusenas._C) with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs the k-bit kernel tests against it. See docs/sanitizers.md.
#
#   bash scripts/sanitize.sh [pytest args...]     (default: tests/test_kbit_matmul.py)
#
# Why it is shaped this way:
# - The sanitized build goes to its own directory (a temp dir, or $FUSENAS_SANITIZE_DIR), via
#   CMake directly with FUSENAS_SANITIZE=ON: the installed/editable fusenas._C is never touched.
# - Python and torch are not instrumented, so libasan must be the first library loaded:
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) (plus libstdc++, see below). Python itself
#   "leaks" at exit, so leak detection is off (detect_leaks=0); everything else halts on the
#   first report. pytest runs with --capture=sys so a report written to fd 2 by a dying
#   process reaches the terminal instead of pytest's capture file.
# - The sanitized .so is loaded as fusenas._C before fusenas is imported, by a tiny loader
#   module (a pytest plugin, -p fusenas_asan_loader) written into the temp dir; it checks
#   that fusenas really resolves to it.
# - First a harness self-test: an out-of-bounds read driven through the raw binding must be
#   reported by ASan (proves the sanitizer is live), then the smoke script (every bit width,
#   odd shapes, M = 1..33, both dtypes, every CPU path), then the kernel tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
PY="$(command -v "$PY")"
WORK="${FUSENAS_SANITIZE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fusenas-asan.XXXXXX")}"
BUILD="$WORK/build"
LIBDIR="$WORK/lib"
mkdir -p "$BUILD" "$LIBDIR"
echo "== sanitize: work dir $WORK"

GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DFUSENAS_SANITIZE=ON -DFUSENAS_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$LIBDIR" \
  -DPython_EXECUTABLE="$PY" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >"$WORK/cmake-configure.log"
cmake --build "$BUILD" --target _C -j "${MAX_JOBS:-$(nproc)}" >"$WORK/cmake-build.log" 2>&1 || {
  tail -n 40 "$WORK/cmake-build.log"
  exit 1
}
SO="$(ls "$LIBDIR"/_C*.so)"
SYMS="$(nm -D "$SO")"  # (not piped into grep -q: with pipefail, SIGPIPE would fail the check)
for sym in __asan_report_load __ubsan_handle_; do
  if [[ "$SYMS" != *"$sym"* ]]; then
    echo "error: $SO is not instrumented (no $sym* symbols)" >&2
    exit 1
  fi
done
echo "== sanitize: built $SO"

cat >"$WORK/fusenas_asan_loader.py" <<'EOF'
"""Loads the sanitized build as fusenas._C before fusenas is imported (scripts/sanitize.sh)."""
import importlib.util
import os
import sys

import torch  # noqa: F401  (load torch's own libraries first, as a normal import does)

_path = os.environ["FUSENAS_SANITIZED_C"]
_spec = importlib.util.spec_from_file_location("fusenas._C", _path)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
sys.modules["fusenas._C"] = _mod

import fusenas  # noqa: E402
from fusenas.ops import _native  # noqa: E402

fusenas._C = _mod
assert _native.cpu() is _mod, "fusenas did not pick up the sanitized fusenas._C"
print(f"[fusenas_asan_loader] fusenas._C = {_mod.__file__}", file=sys.stderr)
EOF

# libstdc++ is preloaded too: Python does not link it, so without it ASan's __cxa_throw
# interceptor finds no real __cxa_throw and aborts on the first C++ exception (torch raises
# them for every bad-input error).
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export FUSENAS_SANITIZED_C="$SO"
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:strict_init_order=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
run_sanitized() { LD_PRELOAD="$PRELOAD" "$PY" "$@"; }

echo "== sanitize: harness self-test (an out-of-bounds read must be caught)"
set +e
run_sanitized - >"$WORK/selftest.log" 2>&1 <<'EOF'
import fusenas_asan_loader  # noqa: F401
import torch
from fusenas.ops import _native
from fusenas.quant.packing import row_bytes

# Bypass the Python validation on purpose: codes one row short of what N says.
n, k, bits = 4, 256, 4
codes = torch.zeros(n - 1, row_bytes(k, bits), dtype=torch.uint8)
scales = torch.ones(n, k // 128)
x = torch.ones(1, k)
y = torch.empty(1, n)
_native.cpu().kbit_matmul_cpu(
    x.data_ptr(), 1, k, 0, codes.data_ptr(), scales.data_ptr(), 0, n, k, row_bytes(k, bits),
    bits, False, 128, 0, y.data_ptr(), n, 1,
)
print("NOT CAUGHT")
EOF
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q "heap-buffer-overflow" "$WORK/selftest.log"; then
  echo "error: ASan did not report the deliberate out-of-bounds read (rc=$rc):" >&2
  tail -n 30 "$WORK/selftest.log" >&2
  exit 1
fi
echo "   ok: ASan reported the deliberate heap-buffer-overflow (log: $WORK/selftest.log)"

echo "== sanitize: smoke (all bit widths, odd shapes, M=1..33, both dtypes, every CPU path)"
run_sanitized -c "import fusenas_asan_loader, runpy, sys; sys.argv = ['kbit_sanitize_smoke.py']; runpy.run_path('$ROOT/scripts/kbit_sanitize_smoke.py', run_name='__main__')"

TESTS=("$@")
if [ "${#TESTS[@]}" -eq 0 ]; then
  TESTS=(tests/test_kbit_matmul.py)
fi
if [ -e "$ROOT/${TESTS[0]}" ] || [ "${TESTS[0]#-}" != "${TESTS[0]}" ]; then
  echo "== sanitize: pytest ${TESTS[*]}"
  cd "$ROOT"
  run_sanitized -m pytest -p fusenas_asan_loader -p no:cacheprovider -q --capture=sys "${TESTS[@]}"
else
  echo "== sanitize: ${TESTS[0]} not found; the smoke run above is the kernel coverage"
fi
echo "== sanitize: clean (ASan + UBSan) — build and logs in $WORK"

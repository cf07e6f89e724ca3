#!/usr/bin/env bash
# On a machine with a CUDA GPU: build fusenas (both extensions, for this GPU's arch),
# run every GPU test, then (optionally) the GPU benchmarks. Logs and JSON go to $OUT
# (default ./gpu_out). Uses the python3 already there (its torch may be a CUDA build
# of another version than the CPU pin; fusenas has no torch headers, so that is fine).
#
#   bash scripts/gpu_check.sh [tests] [bench] [compute-sanitizer]
#
# Stages are time-boxed so one call fits a 10-minute device lease. Optional filters:
# BENCH_K (pytest -k for the benchmarks), SAN_K and SAN_TIMEOUT (the sanitizer run).
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE=/tmp/fusenas_gpu
STAGES="${*:-tests}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

if [ ! -f "$SITE/fusenas/_C_cuda.stamp" ]; then
  arch=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
  echo "== build (sm_$arch, $(nproc) jobs)"
  start=$(date +%s)
  FUSENAS_CUDA=on FUSENAS_CUDA_ARCHS="$arch" MAX_JOBS=$(nproc) \
    $PY -m pip install -q --no-deps --no-build-isolation --target "$SITE" . >"$OUT/build.log" 2>&1 \
    || { tail -60 "$OUT/build.log"; exit 1; }
  echo "built in $(($(date +%s) - start)) s"
  touch "$SITE/fusenas/_C_cuda.stamp"
else
  # A warm machine keeps the last build: refresh its Python files (the extensions
  # are rebuilt only on a fresh machine, so C++ edits need one).
  cp -r python/fusenas/. "$SITE/fusenas/"
fi
export PYTHONPATH="$SITE"
$PY -m fusenas.info 2>&1 | tee "$OUT/info.txt"

for stage in $STAGES; do
  case "$stage" in
  tests)
    echo "== GPU tests"
    timeout 420 $PY -m pytest -m gpu -p no:cacheprovider -q -rfE --benchmark-skip tests \
      2>&1 | tee "$OUT/tests.log" | tail -60
    ;;
  bench)
    echo "== GPU benchmarks"
    for b in kbit lowrank pc_mixed; do
      timeout 170 $PY -m pytest -p no:cacheprovider -q "benchmarks/bench_${b}_cuda.py" ${BENCH_K:+-k "$BENCH_K"} \
        --benchmark-only --benchmark-json="$OUT/${b}_cuda.json" --benchmark-min-rounds=20 \
        --benchmark-max-time=0.2 --benchmark-columns=median --benchmark-sort=name \
        2>&1 | tee "$OUT/bench_${b}.log" | tail -5
    done
    ;;
  compute-sanitizer)
    echo "== compute-sanitizer memcheck on the GPU tests"
    timeout "${SAN_TIMEOUT:-400}" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
      $PY -m pytest -m gpu -p no:cacheprovider -q -x --benchmark-skip ${SAN_K:+-k "$SAN_K"} \
      tests/test_kbit_cuda.py tests/test_lowrank_cuda.py tests/test_pc_mixed_cuda.py \
      2>&1 | tee "$OUT/sanitizer.log" | tail -40
    ;;
  *) echo "unknown stage $stage" ;;
  esac
done

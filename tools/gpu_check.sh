#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and a CUDA build of torch already installed (no network
# needed): builds unet_fast with its CUDA kernels for that GPU, runs the test suite on CUDA
# tensors, times each op and the 572 U-Net step against the composite, eager and under
# torch.compile (tools/gpu_report.py), lists the tile each Triton convolution autotuned to,
# and writes one markdown report, with the test log beside it. About 8 minutes.
#
#   tools/gpu_check.sh [--dry-run] [REPORT]        (REPORT: default ./gpu-check.md)
#
# --dry-run does the same on a machine without a GPU, on the CPU: unet_fast as PYTHON has it
# installed (the build from the tracked files is tools/cuda_compile_check.sh's check), one test
# file, a 188x188 U-Net, one round. A check of the script, not a measurement.
# PYTHON (default python3) is the interpreter that has torch; unet_fast is built into a scratch
# folder put first on its path. The repository is not written to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
report=$(realpath -m "${1:-gpu-check.md}")
python=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # absolute: the steps below change folder
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $dry_run = 0 ] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "tools/gpu_check.sh: $python's torch sees no CUDA device (--dry-run checks the script without one)" >&2
  exit 2
fi

mkdir -p "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src")
if [ $dry_run = 1 ]; then
  echo "not built (dry run): unet_fast as $python has it installed" | tee "$work/build.txt"
else
  echo "== building unet_fast"
  if [ -z "${CUDA_HOME:-}" ]; then
    for candidate in /usr/local/cuda /usr/local/cuda-*; do
      if [ -x "$candidate/bin/nvcc" ]; then export CUDA_HOME=$candidate; break; fi
    done
  fi
  export UNET_FAST_CUDA=1
  export UNET_FAST_CUDA_ARCH=${UNET_FAST_CUDA_ARCH:-$("$python" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")}
  start=$(date +%s)
  if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -m pip install --quiet --no-build-isolation --no-deps --no-index \
      --target "$work/site" "$work/src" > "$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
  fi
  echo "built in $(( $(date +%s) - start )) s: CUDA kernels for sm_$UNET_FAST_CUDA_ARCH, CUDA_HOME=${CUDA_HOME:-unset}" \
    | tee "$work/build.txt"
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== tests"
if [ $dry_run = 1 ]; then
  tests=("$work/src/tests/test_ops_max_pool.py")
  limit=600
  device=cpu size=188 rounds=1
else
  # The ops and the model first, so that a run cut short by the limit has checked them.
  tests=("$work"/src/tests/test_ops_*.py "$work/src/tests/test_unet.py" "$work/src/tests")
  limit=${GPU_CHECK_TEST_SECONDS:-270}
  device=cuda size=572 rounds=5
fi
workers=()
if [ $dry_run = 0 ] && "$python" -c "import xdist" 2>/dev/null; then workers=(-n "${GPU_CHECK_TEST_WORKERS:-4}"); fi
start=$(date +%s)
(cd "$work" && timeout "$limit" "$python" -m pytest -q -p no:cacheprovider "${workers[@]}" "${tests[@]}") \
  > "$work/tests.log" 2>&1 || true
echo "tests ran $(( $(date +%s) - start )) s (limit $limit s): $(tail -n 1 "$work/tests.log")"
cp "$work/tests.log" "${report%.md}-tests.log"

echo "== benchmarks and the report"
(cd "$work" && "$python" "$work/src/tools/gpu_report.py" --report "$report" --tests-log "$work/tests.log" \
  --build-log "$work/build.txt" --device $device --size $size --rounds $rounds)

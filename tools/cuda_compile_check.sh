#!/usr/bin/env bash
# Builds unet_fast's CUDA kernels for sm_80 and sm_90 against a CUDA build of torch and checks
# that every op of the extension has a CUDA kernel. Needs nvcc, not a GPU.
#
#   tools/cuda_compile_check.sh [WORK_DIR]
#
# WORK_DIR (default: a new temporary folder) holds the scratch virtual environment; one that
# already has the CUDA torch is reused. The repository itself is not written to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${1:-}" ]; then
  work=$1
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
python=${PYTHON:-python3.11}
torch_version=${UNET_FAST_CUDA_TORCH:-2.14.1}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if ! "$work/venv/bin/python" -c "import scipy, torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version' or torch.version.cuda is None)" 2>/dev/null; then
  echo "== scratch environment with torch $torch_version (CUDA build) in $work/venv"
  rm -rf "$work/venv"
  "$python" -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --upgrade pip setuptools wheel
  "$work/venv/bin/pip" install --quiet "torch==$torch_version" numpy scipy ninja
fi
venv_python="$work/venv/bin/python"
site=$("$venv_python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

if [ -z "${CUDA_HOME:-}" ]; then
  for candidate in /usr/local/cuda /usr/local/cuda-*; do
    if [ -x "$candidate/bin/nvcc" ]; then CUDA_HOME=$candidate; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] || { echo "set CUDA_HOME to a CUDA toolkit (the folder holding bin/nvcc)" >&2; exit 2; }
export CUDA_HOME
# A toolkit without every library header (cusparse.h, ...) borrows those of torch's CUDA wheels.
for include in "$site"/nvidia/*/include "$site"/nvidia/*/*/include; do
  [ -d "$include" ] && export CPATH="${CPATH:+$CPATH:}$include"
done
echo "== CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1))"

echo "== building the extension with UNET_FAST_CUDA=1"
rm -rf "$work/src"
mkdir -p "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src")
start=$(date +%s)
(cd "$work/src" && UNET_FAST_CUDA=1 "$work/venv/bin/pip" install --quiet --no-build-isolation --no-deps .)
echo "   built in $(( $(date +%s) - start )) s"

echo "== checking that every op has a CUDA kernel"
(cd "$work" && "$venv_python" - "$site" <<'PY'
import glob
import sys

import torch

# The extension alone (not the package, whose Python dependencies this environment lacks).
torch.ops.load_library(*glob.glob(f"{sys.argv[1]}/unet_fast/_C*.so"))

def ops_with_kernel(key):
    return {name for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
            if name.startswith("unet_fast::")}

# On CUDA tensors unet_fast.ops.up_conv2x2 runs cuDNN's transposed convolution, a GEMM there
# already (unet_fast/ops/up_conv.py); its C++ op is the CPU's.
CPU_ONLY = {"unet_fast::up_conv2x2", "unet_fast::up_conv2x2_backward"}
cpu, cuda = ops_with_kernel("CPU"), ops_with_kernel("CUDA")
missing = sorted(cpu - cuda - CPU_ONLY)
print(f"   CUDA kernels: {', '.join(sorted(cuda))}")
if missing or not cuda:
    raise SystemExit(f"ops without a CUDA kernel: {missing or 'all'}")
PY
)
echo "== CUDA compile check passed"

#!/usr/bin/env bash
# Creates ./.venv (Python 3.11) with the CPU build of torch 2.13.0 and kbit installed editable.
# Safe to re-run: an existing environment is reused and only missing pieces are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"

# torch is pinned first and explicitly, so no later requirement can pull a CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[test,integrations,bench]"

# Backend wheels (each installs where its platform supports it; a backend that cannot work here
# reports itself unavailable at run time instead of failing the install).
# --- backends: one line each ---
KBIT_CUDA_BUILD=${KBIT_CUDA_BUILD:-OFF} $PIP install -q ./backends/cuda  # kbit-cuda, Python only: kernels compile in ci/check_cuda_build.sh (CI) and ci/test_cuda_gpu.sh (GPU); KBIT_CUDA_BUILD=ON builds all 7 archs here
$PIP install -q ./backends/triton  # kbit-triton (+ triton==3.9.0 on Linux x86_64): ROCm/XPU/NVIDIA GPUs; CPU only under TRITON_INTERPRET=1 (ci/test.sh)
$PIP install -q ./backends/mps  # kbit-mps: Python + Metal sources (compiled at run time), installs anywhere, serves only macOS with an MPS device
$PIP install -q ./backends/cpu  # kbit-cpu: kernels_cpu/ built by CMake through scikit-build-core; re-runs rebuild incrementally in backends/cpu/build/
# --- end backends ---
.venv/bin/python -m kbit >/dev/null

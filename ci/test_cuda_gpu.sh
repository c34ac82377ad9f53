#!/usr/bin/env bash
# kbit-cuda on a GPU machine: the one command. Builds kbit-cuda for this machine's GPU, then runs
#   1. the conformance suite on the cuda backend plus tests/test_cuda_gpu.py (-m gpu), which includes
#      compute-sanitizer racecheck / synccheck of every kernel when compute-sanitizer is installed;
#   2. the same under compute-sanitizer --tool memcheck (torch's caching allocator off, so every tensor
#      is its own allocation and out-of-bounds accesses are caught), if compute-sanitizer is installed;
#   3. python -m kbit bench.
#     bash ci/test_cuda_gpu.sh            # uses ./.venv/bin/python, or $PYTHON
# Needs nvcc, cmake, an NVIDIA GPU and a Python environment whose torch is a CUDA build (ci/setup.sh builds
# a CPU-only one: point PYTHON at another environment). KBIT_CUDA_ARCHS overrides the detected arch.
# Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PIP="$PYTHON -m pip --disable-pip-version-check"

$PYTHON - <<'PY'
import sys, torch
ok = torch.version.cuda is not None and torch.cuda.is_available()
sys.exit(0 if ok else f"ci/test_cuda_gpu.sh: torch {torch.__version__} sees no CUDA device (need a CUDA build of torch and a GPU)")
PY
ARCH=${KBIT_CUDA_ARCHS:-$($PYTHON -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")}
echo "== building kbit-cuda for sm_$ARCH"
$PIP install -q -e ".[test]"
KBIT_CUDA_BUILD=ON KBIT_CUDA_ARCHS=$ARCH $PIP install -q ./backends/cuda
$PYTHON -m kbit

export KBIT_CUDA_REQUIRED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
# kbit-cuda's own tests, and every conformance test on the (backend cuda, device cuda) provider.
TESTS=(tests/test_cuda_gpu.py tests/test_cuda_backend.py tests/test_cuda_host_check.py --pyargs kbit.testing)
SELECT="test_cuda_ or cuda-cuda"
echo "== conformance on cuda + GPU tests"
$PYTHON -m pytest "${TESTS[@]}" -k "$SELECT" -q -p no:cacheprovider "$@"

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
if [ -n "$SANITIZER" ]; then
  echo "== the same under compute-sanitizer --tool memcheck"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 99 \
    $PYTHON -m pytest "${TESTS[@]}" -k "($SELECT) and not compute_sanitizer and not 2_31" -q -p no:cacheprovider -x
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi

echo "== python -m kbit bench"
$PYTHON -m kbit bench

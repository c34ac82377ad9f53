#!/usr/bin/env bash
# Compiles kernels_cuda/ (every .cu file) for sm_90 with nvcc through its CMakeLists.txt, then checks that
# libkbit_cuda.so exports exactly the entry points kernels_cuda/kbit_cuda.h declares. No GPU needed.
# The library lands in build/kbit-cuda/, where tests/test_cuda_backend.py checks it again (symbols, load).
# About 15 s on 2 cores from scratch (all seven default archs: about 1 min); incremental afterwards.
# Without nvcc it says so and exits 0.
# Usage: bash ci/check_cuda_build.sh [ARCHS]   (default 90; e.g. "80;90")
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=${1:-90}
BUILD=build/kbit-cuda
NVCC=${CUDACXX:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$candidate" ]; then NVCC=$candidate; break; fi
  done
fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_build: no nvcc found (set CUDACXX); skipping the CUDA compile check"
  exit 0
fi

# Every .cu file of kernels_cuda/ must be a source of the library.
listed=$(sed -n '/^set(KBIT_CUDA_SOURCES/,/^)/p' kernels_cuda/CMakeLists.txt | grep -oE '[a-z0-9_]+\.cu' | sort)
present=$(cd kernels_cuda && ls -- *.cu | sort)
if [ "$listed" != "$present" ]; then
  echo "check_cuda_build: KBIT_CUDA_SOURCES in kernels_cuda/CMakeLists.txt differs from the .cu files:"
  diff <(echo "$listed") <(echo "$present") || true
  exit 1
fi

start=$(date +%s)
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S kernels_cuda -B "$BUILD" "${generator[@]}" -DCMAKE_CUDA_COMPILER="$NVCC" -DKBIT_CUDA_ARCHS="$ARCHS" \
  -DKBIT_CUDA_BUILD=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)"
library=$BUILD/libkbit_cuda.so

# Entry points of the header: every "KBIT_CUDA_API <type> kbit_cuda_<name>(" declaration.
declared=$(grep -oE 'KBIT_CUDA_API[^(]*\bkbit_cuda_[a-z0-9_]+\(' kernels_cuda/kbit_cuda.h \
  | grep -oE 'kbit_cuda_[a-z0-9_]+' | sort -u)
exported=$(nm -D --defined-only "$library" | awk '{print $NF}' | sort -u)
if [ "$declared" != "$exported" ]; then
  echo "check_cuda_build: $library exports other symbols than kernels_cuda/kbit_cuda.h declares:"
  diff <(echo "$declared") <(echo "$exported") || true
  exit 1
fi
echo "check_cuda_build: $(echo "$declared" | wc -l) entry points of kbit_cuda.h exported by $library" \
  "(sm_${ARCHS//;/, sm_}; $(( $(date +%s) - start )) s)"

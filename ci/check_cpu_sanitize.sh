#!/usr/bin/env bash
# Builds kernels_cpu and its golden-file driver (kernels_cpu/tests/driver.cpp) natively with
# AddressSanitizer + UndefinedBehaviorSanitizer (then ThreadSanitizer) and runs the driver on every ISA this CPU can run
# (KBIT_CPU_ISA=scalar, avx2, avx512_base, avx512 on x86-64; scalar, neon on arm64), and once as detected: every kernel file,
# its tails and odd sizes, with 1 and 3 threads. Needs ./.venv (ci/setup.sh) for the golden files.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build/cpu_sanitize
GOLDEN=build/cpu_golden
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi

.venv/bin/python ci/make_cpu_golden.py "$GOLDEN"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S kernels_cpu -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Debug -DKBIT_CPU_DRIVER=ON \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g $SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

case "$(uname -m)" in
  x86_64|amd64)
    ISAS=(scalar)
    flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
    has() { [[ " $flags " == *" $1 "* ]]; }
    if has avx2 && has fma && has f16c && has bmi2; then ISAS+=(avx2); fi
    if has avx512f && has avx512bw && has avx512vl && has avx512dq; then ISAS+=(avx512_base avx512); fi
    ;;
  aarch64|arm64) ISAS=(scalar neon) ;;
  *) ISAS=(scalar) ;;
esac

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for isa in "${ISAS[@]}"; do
  KBIT_CPU_ISA=$isa "$BUILD/kbit_cpu_driver" "$GOLDEN"
done
# As detected: on CPUs with split 512-bit operations (AMD Zen 4) several entry points take their avx2
# kernel next to the avx512 ones (dispatch.h, KBIT_DISPATCH_SPLIT512).
echo "as detected (no KBIT_CPU_ISA):"
env -u KBIT_CPU_ISA "$BUILD/kbit_cpu_driver" "$GOLDEN"

# ThreadSanitizer (a separate build: it cannot be combined with ASan): the thread pool's job hand-off
# (parallel.cpp) under the same cases, which run with 3 threads as well as 1.
TBUILD=build/cpu_tsan
TSAN="-fsanitize=thread -fno-omit-frame-pointer"
cmake -S kernels_cpu -B "$TBUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Debug -DKBIT_CPU_DRIVER=ON \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g $TSAN" -DCMAKE_EXE_LINKER_FLAGS="$TSAN" -DCMAKE_SHARED_LINKER_FLAGS="$TSAN" >/dev/null
cmake --build "$TBUILD" -j "$(nproc)"
export TSAN_OPTIONS=halt_on_error=1
for isa in "${ISAS[@]}"; do
  echo "ThreadSanitizer:"
  KBIT_CPU_ISA=$isa "$TBUILD/kbit_cpu_driver" "$GOLDEN"
done

#!/usr/bin/env bash
# Cross-compiles kernels_cpu and its golden-file driver for arm64 with Debian's g++-aarch64-linux-gnu
# and runs the driver under qemu-aarch64 (Debian qemu-user) with KBIT_CPU_ISA=neon and =scalar, against
# golden files computed by kbit's reference on this machine. Installs the two packages with apt-get
# when they are missing (needs root, as in CI). Needs ./.venv (ci/setup.sh) for the golden files.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build/cpu_neon
GOLDEN=build/cpu_golden
CXX_CROSS=aarch64-linux-gnu-g++
SYSROOT=/usr/aarch64-linux-gnu

missing=()
command -v "$CXX_CROSS" >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "check_cpu_neon: needs ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
.venv/bin/python ci/make_cpu_golden.py "$GOLDEN"
cmake -S kernels_cpu -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DKBIT_CPU_DRIVER=ON \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER="$CXX_CROSS" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

for isa in neon scalar; do
  KBIT_CPU_ISA=$isa qemu-aarch64 -L "$SYSROOT" "$BUILD/kbit_cpu_driver" "$GOLDEN"
done

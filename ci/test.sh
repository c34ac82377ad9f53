#!/usr/bin/env bash
# Sets up ./.venv (ci/setup.sh) and runs the test suite: tests/ plus the conformance suite shipped in kbit.testing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/python -m kbit
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
bash ci/check_cuda_build.sh  # compiles kernels_cuda/ for sm_90 and checks its exports (~15 s on 2 cores; skipped without nvcc)
bash ci/check_metal_logic.sh  # kernels_mps/ compiled as C++ through its shim and checked against reference goldens under ASan/UBSan (~30 s)
bash ci/check_cpu_sanitize.sh  # kernels_cpu/ + its golden-file driver under ASan/UBSan on every ISA this CPU runs (~1 min)
bash ci/check_cpu_neon.sh  # kernels_cpu/ cross-compiled for arm64, driver under qemu-aarch64 with NEON and scalar (~1 min; apt-get installs g++-aarch64-linux-gnu and qemu-user if missing)
.venv/bin/python -m pytest tests --pyargs kbit.testing -q -p no:cacheprovider "$@"
TRITON_INTERPRET=1 KBIT_BACKENDS=triton KBIT_CONFORMANCE_SMALL=1 .venv/bin/python -m pytest --pyargs kbit.testing -q -p no:cacheprovider -k "triton or (opcheck and not reference)" -W "ignore::RuntimeWarning:triton.runtime.interpreter"  # kbit-triton kernels on CPU through Triton's interpreter, small sizes (~2 min on 2 cores)

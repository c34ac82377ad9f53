#!/usr/bin/env bash
# kbit-triton on a GPU machine (AMD ROCm, Intel XPU, or NVIDIA): conformance suite + bench, one command.
#   bash ci/test_triton_gpu.sh            # uses ./.venv/bin/python, or $PYTHON
# Needs a Python environment whose torch is built for the GPU (ROCm, XPU or CUDA wheel) and a triton that
# compiles for it; ci/setup.sh builds a CPU-only environment, so it is not used here. Installs kbit and
# kbit-triton (editable) into that environment, then runs every conformance test on the triton backend
# (KBIT_BACKENDS=triton: the dispatcher serves each op with triton where it has a kernel), the
# interpreter/availability tests, and the timing table of ci/bench_triton.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON -m pip --disable-pip-version-check install -q -e ".[test]" -e ./backends/triton
$PYTHON - <<'PY'
import sys, torch
gpu = torch.cuda.is_available() or (getattr(torch, "xpu", None) is not None and torch.xpu.is_available())
sys.exit(0 if gpu else "ci/test_triton_gpu.sh: no CUDA, ROCm or XPU device visible to this torch build")
PY
export KBIT_BACKENDS=triton HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
unset TRITON_INTERPRET
$PYTHON -m kbit
$PYTHON -m pytest --pyargs kbit.testing -q -p no:cacheprovider -k "triton-cuda or triton-xpu or opcheck" "$@"
env -u KBIT_BACKENDS $PYTHON -m pytest tests/test_triton_backend.py -q -p no:cacheprovider
$PYTHON ci/bench_triton.py

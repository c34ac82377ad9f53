#!/usr/bin/env bash
# Verifies the logic of the Metal kernels (kernels_mps/) without Apple hardware: writes golden cases with
# kbit's pure-torch reference (ci/make_metal_golden.py), compiles the kernels as C++ through the shim
# (kernels_mps/shim/metal_shim.h) with address and undefined-behaviour sanitizers, and checks them.
# Each .metal file is also compiled alone as C++14, the language MSL is based on.
# What this cannot check: that the Metal compiler accepts the sources and how the GPU runs them; the
# conformance suite does that on a Mac (KBIT_BACKENDS=mps python -m pytest --pyargs kbit.testing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CXX=${CXX:-g++}
OUT=${KBIT_METAL_BUILD:-build/metal_logic}
mkdir -p "$OUT"
for src in kernels_mps/*.metal; do  # each file on its own, as compile_shader gets it, in C++14 (MSL's base language)
  "$CXX" -std=c++14 -fsyntax-only -Wall -Wextra -Werror -include kernels_mps/shim/metal_shim.h -x c++ "$src"
done
"$PYTHON" ci/make_metal_golden.py "$OUT/goldens.bin"
"$CXX" -std=c++20 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer -pthread kernels_mps/shim/test_kernels.cpp -o "$OUT/test_kernels"
"$OUT/test_kernels" "$OUT/goldens.bin"

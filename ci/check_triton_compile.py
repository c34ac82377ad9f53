"""Compile every kbit-triton kernel ahead of time for GPU targets, without a GPU.

Triton's interpreter (how CI runs the kernels) does not type-check or lower them; this script runs
triton's real compiler for NVIDIA (PTX -> cubin with the bundled ptxas) and AMD (HSACO) targets on
every kernel, for the constexpr combinations the host wrappers launch, so a kernel that would fail
to compile on a GPU fails here. Run with TRITON_INTERPRET unset:
``python ci/check_triton_compile.py [--targets cuda:80,cuda:90,hip:gfx942]``. Prints one line per
failure and exits non-zero if any; tests/test_triton_backend.py runs it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("ci/check_triton_compile.py: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kbit_triton.kernels import (
    dequantize_4bit,
    dequantize_blockwise,
    gemv_4bit,
    int8_mm_dequant,
    int8_vectorwise_quant,
    optimizer_rules,
    optimizer_update_8bit_blockwise,
    optimizer_update_32bit,
    quantize_4bit,
    quantize_blockwise,
)

F32_SCALARS = ["gnorm_scale", "lr", "decay", "beta1", "beta2", "beta3", "omb1", "omb2", "omb3", "alpha", "eps", "weight_decay", "c1", "c2"]
RULES = [v.value for v in (optimizer_rules.ADAM, optimizer_rules.MOMENTUM, optimizer_rules.RMSPROP,
                           optimizer_rules.ADAGRAD, optimizer_rules.LION, optimizer_rules.ADEMAMIX)]


def cases():
    """(label, kernel, signature {arg: type}, constexprs) for every launch configuration of interest."""
    for dt in ("fp32", "fp16", "bf16"):
        yield (f"quantize_4bit {dt}", quantize_4bit.quantize_4bit_kernel,
               dict(a_ptr=f"*{dt}", packed_ptr="*u8", absmax_ptr="*fp32", mids_ptr="*fp32", order_ptr="*i32",
                    n="i32", n_blocks="i32", n_mids="i32"),
               dict(HALF=32, BLOCKS=64, STEPS=4, ZERO_CODE=7))
        yield (f"dequantize_4bit {dt}", dequantize_4bit.dequantize_4bit_kernel,
               dict(packed_ptr="*u8", absmax_ptr="*fp32", code_ptr="*fp32", out_ptr=f"*{dt}", n="i32", log2_blocksize="i32"),
               dict(BYTES=1024))
        for even in (True, False):
            yield (f"gemv_4bit {dt} even_k={even}", gemv_4bit.gemv_4bit_kernel,
                   dict(a_ptr=f"*{dt}", packed_ptr="*u8", absmax_ptr="*fp32", code_ptr="*fp32", out_ptr=f"*{dt}",
                        N="i32", K="i32", log2_blocksize="i32"),
                   dict(EVEN_K=even, BLOCK_N=16, BLOCK_K=128))
        yield (f"quantize_blockwise {dt}", quantize_blockwise.quantize_blockwise_kernel,
               dict(a_ptr=f"*{dt}", q_ptr="*u8", absmax_ptr="*fp32", mids_ptr="*fp32", order_ptr="*i32",
                    n="i32", n_blocks="i32", blocksize="i32", n_mids="i32"),
               dict(ROWS=1, COLS=2048, STEPS=8))
        yield (f"dequantize_blockwise {dt}", dequantize_blockwise.dequantize_blockwise_kernel,
               dict(q_ptr="*u8", absmax_ptr="*fp32", code_ptr="*fp32", out_ptr=f"*{dt}", n="i32", blocksize="i32", code_len="i32"),
               dict(BLOCK=1024))
        for stats, codes, zero_cols in ((True, True, False), (True, False, True), (False, True, True)):
            yield (f"int8_vectorwise_quant {dt} stats={stats} codes={codes}", int8_vectorwise_quant.int8_vectorwise_quant_kernel,
                   dict(a_ptr=f"*{dt}", q_ptr="*i8", stats_ptr="*fp32", flags_ptr="*i32", n_rows="i32", K="i32", threshold="fp32"),
                   dict(STATS=stats, CODES=codes, OUTLIERS=zero_cols, ZERO_COLUMNS=zero_cols, BLOCK_K=1024))
        yield (f"int8_mm_dequant -> {dt}", int8_mm_dequant.int8_mm_dequant_kernel,
               dict(a_ptr="*i32", row_ptr="*fp32", col_ptr="*fp32", bias_ptr=f"*{dt}", out_ptr=f"*{dt}", rows="i32", N="i32"),
               dict(HAS_BIAS=True, BLOCK_M=16, BLOCK_N=128))
    scalars = {name: "fp32" for name in F32_SCALARS} | {"first": "i32"}
    for rule, dt in itertools.product(RULES, ("fp32", "bf16")):
        two = rule in (optimizer_rules.ADAM.value, optimizer_rules.ADEMAMIX.value)
        for norm_pass in (True, False):
            yield (f"optimizer_update_32bit rule={rule} {dt} norm_pass={norm_pass}", optimizer_update_32bit.optimizer_update_32bit_kernel,
                   dict(g_ptr=f"*{dt}", p_ptr=f"*{dt}", s1_ptr="*fp32", s2_ptr="*fp32", partial_ptr="*fp32", trust_ptr="*fp32", n="i32")
                   | scalars,
                   dict(RULE=rule, TWO_STATE=two, DECOUPLED=True, COUPLED=not two, SKIP_ZEROS=True, NORM_PASS=norm_pass, TRUST=True, BLOCK=1024))
        yield (f"optimizer_update_8bit_blockwise rule={rule} {dt}", optimizer_update_8bit_blockwise.optimizer_update_8bit_blockwise_kernel,
               dict(g_ptr=f"*{dt}", p_ptr=f"*{dt}", state1_ptr="*u8", state2_ptr="*u8", qmap1_ptr="*fp32", qmap2_ptr="*fp32",
                    absmax1_ptr="*fp32", absmax2_ptr="*fp32", mids1_ptr="*fp32", order1_ptr="*i32", mids2_ptr="*fp32", order2_ptr="*i32",
                    n="i32", n_blocks="i32", n_mids1="i32", n_mids2="i32") | scalars,
               dict(RULE=rule, TWO_STATE=two, DECOUPLED=True, COUPLED=not two, SKIP_ZEROS=True, STEPS1=8, STEPS2=8, ROWS=4, BLOCK=256))


def parse_target(text: str) -> GPUTarget:
    backend, arch = text.split(":")
    if backend == "cuda":
        return GPUTarget("cuda", int(arch), 32)
    return GPUTarget("hip", arch, 64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="cuda:80,cuda:90,hip:gfx942", help="comma-separated cuda:<sm> / hip:<gfx arch>")
    parser.add_argument("--only", default="", help="compile only cases whose label contains this")
    args = parser.parse_args()
    failures = compiled = 0
    for target in (parse_target(t) for t in args.targets.split(",")):
        for label, kernel, signature, constexprs in cases():
            if args.only not in label:
                continue
            full = {name: signature.get(name, "constexpr") for name in kernel.arg_names}
            options = {"enable_fp_fusion": label.startswith("gemv")}
            try:
                triton.compile(ASTSource(kernel, full, constexprs=constexprs), target=target, options=options)
                compiled += 1
            except Exception as exc:  # report every failing kernel, not just the first
                failures += 1
                print(f"FAIL {target.backend}:{target.arch} {label}: {type(exc).__name__}: {str(exc)[:800]}")
    print(f"{compiled} kernels compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time kbit-triton's kernels against the reference kernels on a GPU (run by ci/test_triton_gpu.sh).

Prints one row per op: median milliseconds of each (triton.testing.do_bench) and the triton
kernel's effective bandwidth over the bytes it must read and write. Numbers are reported, never
asserted. Usage: ``python ci/bench_triton.py [--device cuda|xpu] [--size 4096]``.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import kbit
import kbit_triton
from kbit import formats
from kbit.functional.codebooks import create_dynamic_map
from kbit.reference import KERNELS as REF


def cases(device: str, size: int):
    """(label, op, args, bytes moved) for an LLM-sized weight ``[size, size]`` and its activations."""
    W = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    n = W.numel()
    packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
    code4 = formats.code_4bit("nf4", device)
    dyn = create_dynamic_map().to(device)
    q8, absmax8 = REF["quantize_blockwise"](W, dyn, 4096)
    x = torch.randn(1, size, device=device, dtype=torch.bfloat16)
    acc = torch.randint(-2**20, 2**20, (size, size), dtype=torch.int32, device=device)
    stats = torch.rand(size, device=device)
    p = torch.randn(n, device=device) * 0.1
    g = torch.randn(n, device=device) * 0.01
    qmap1, qmap2 = create_dynamic_map(True).to(device), create_dynamic_map(False).to(device)
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    s8 = [torch.zeros(n, dtype=torch.uint8, device=device) for _ in range(2)] + [torch.zeros(nb, device=device) for _ in range(2)]
    s32 = [torch.zeros(n, device=device) for _ in range(2)]
    return [
        ("quantize_4bit nf4 B=64", "quantize_4bit", (W, 64, "nf4", torch.uint8), 2 * n + n // 2),
        ("dequantize_4bit nf4 -> bf16", "dequantize_4bit", (packed, absmax, 64, "nf4", [size, size], torch.bfloat16), n // 2 + 2 * n),
        ("gemv_4bit nf4 bf16", "gemv_4bit", (x, packed, [size, size], absmax, code4, 64), n // 2),
        ("quantize_blockwise B=4096", "quantize_blockwise", (W, dyn, 4096), 3 * n),
        ("dequantize_blockwise -> bf16", "dequantize_blockwise", (q8, absmax8, dyn, 4096, torch.bfloat16), 3 * n),
        ("int8_vectorwise_quant bf16", "int8_vectorwise_quant", (W, 0.0), 3 * n),
        ("int8_mm_dequant -> bf16", "int8_mm_dequant", (acc, stats, stats, torch.bfloat16, None), 6 * n),
        ("optimizer_update_32bit adam", "optimizer_update_32bit",
         ("adam", g, p, s32[0], s32[1], None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False), 24 * n),
        ("optimizer_update_8bit_blockwise adam", "optimizer_update_8bit_blockwise",
         ("adam", g, p, s8[0], s8[1], 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, qmap1, qmap2, s8[2], s8[3], 0.0, 1.0, False), 12 * n),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="xpu" if getattr(torch, "xpu", None) is not None and torch.xpu.is_available() else "cuda")
    parser.add_argument("--size", type=int, default=4096, help="weight is [size, size]")
    args = parser.parse_args()
    report = kbit.backends.report()
    print(report[: report.index("ops:")].rstrip())
    print(f"device {args.device}, weight [{args.size}, {args.size}]")
    print(f"{'op':<40}{'triton ms':>12}{'reference ms':>14}{'speedup':>9}{'triton GB/s':>13}")
    for label, op, op_args, nbytes in cases(args.device, args.size):
        t_tri = triton.testing.do_bench(lambda: kbit_triton.KERNELS[op](*op_args))
        t_ref = triton.testing.do_bench(lambda: REF[op](*op_args))
        print(f"{label:<40}{t_tri:>12.3f}{t_ref:>14.3f}{t_ref / t_tri:>9.1f}{nbytes / t_tri / 1e6:>13.1f}")


if __name__ == "__main__":
    main()

"""kbit demo: quantize a random linear layer to 4 bits, measure the error and memory, run matmul_4bit.

Runs on CPU in seconds; no downloads.
"""

from __future__ import annotations

import torch

import kbit as bnb


def megabytes(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> None:
    torch.manual_seed(0)
    out_features, in_features = 2048, 1024
    W = torch.randn(out_features, in_features, dtype=torch.bfloat16) / in_features**0.5
    print(f"dense weight {tuple(W.shape)} bf16: {megabytes(W):.2f} MiB")

    for quant_type in ("nf4", "fp4"):
        packed, state = bnb.functional.quantize_4bit(W, quant_type=quant_type, compress_statistics=True)
        W_hat = bnb.functional.dequantize_4bit(packed, state)
        err = (W.float() - W_hat.float()).abs().mean().item() / W.float().abs().mean().item()
        stats = [state.absmax, state.state2.absmax, state.state2.code, state.code]
        print(f"{quant_type}: packed {tuple(packed.shape)} {packed.dtype} + stats = {megabytes(packed, *stats):.2f} MiB, mean relative error {err:.3f}")

    x = torch.randn(4, in_features, dtype=torch.bfloat16)
    y = bnb.matmul_4bit(x, packed.t(), quant_state=state)
    y_dense = x @ W.t()
    rel = ((y.float() - y_dense.float()).norm() / y_dense.float().norm()).item()
    print(f"matmul_4bit {tuple(x.shape)} @ W.T -> {tuple(y.shape)} {y.dtype}, relative error vs dense {rel:.3f}")

    q8, state8 = bnb.functional.quantize_blockwise(W.float(), blocksize=256)
    err8 = (W.float() - bnb.functional.dequantize_blockwise(q8, state8)).abs().mean().item()
    print(f"8-bit blockwise: mean abs error {err8:.5f}")
    print()
    print(bnb.backends.report().splitlines()[1])


if __name__ == "__main__":
    main()

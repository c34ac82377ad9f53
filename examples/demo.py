"""kbit demo: 4-bit quantization, then QLoRA end to end on a tiny causal LM — on CPU, no downloads.

1. Quantize a random layer to NF4/FP4 and run matmul_4bit.
2. Train a tiny byte-level LM briefly, quantize its linears to NF4, add LoRA adapters, fine-tune them
   with kbit's AdamW8bit, save (bitsandbytes-compatible state dict), reload into a fresh model and
   generate.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import kbit as bnb
from kbit.nn import QuantConfig, add_lora, quantize_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_lm import TinyCausalLM, batches, encode  # noqa: E402

BASE_TEXT = (
    "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. "
    "all that glitters is not gold. the early bird catches the worm. "
)
NEW_TEXT = "kbit runs four bit models on any device. "


def megabytes(module: torch.nn.Module) -> float:
    tensors = list(module.state_dict().values())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def layer_demo() -> None:
    W = torch.randn(2048, 1024, dtype=torch.bfloat16) / 32
    for quant_type in ("nf4", "fp4"):
        packed, state = bnb.functional.quantize_4bit(W, quant_type=quant_type, compress_statistics=True)
        err = (W.float() - bnb.functional.dequantize_4bit(packed, state).float()).abs().mean() / W.float().abs().mean()
        print(f"  {quant_type}: 2048x1024 bf16 4.00 MiB -> {packed.numel() / 2**20:.2f} MiB packed, mean relative error {err:.3f}")
    x = torch.randn(4, 1024, dtype=torch.bfloat16)
    y = bnb.matmul_4bit(x, packed.t(), quant_state=state)
    print(f"  matmul_4bit {tuple(x.shape)} -> {tuple(y.shape)} {y.dtype}")


def train(model, params, opt, data, steps, generator) -> list[float]:
    losses = []
    stream = batches(data, seq_len=64, batch_size=16, generator=generator)
    for _ in range(steps):
        loss = model.loss(next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def build_quantized_lora_model() -> torch.nn.Module:
    model = quantize_model(TinyCausalLM(), QuantConfig(bits=4, quant_type="nf4", compute_dtype=torch.float32))
    add_lora(model, target=("qkv", "proj", "up", "down"), r=8, alpha=16)
    return model


def qlora_demo() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCausalLM()
    base = encode(BASE_TEXT * 40)
    t0 = time.perf_counter()
    pre = train(model, model.parameters(), torch.optim.AdamW(model.parameters(), lr=3e-3), base, 80, g)
    print(f"  pretrained float model: loss {pre[0]:.2f} -> {pre[-1]:.2f} ({time.perf_counter() - t0:.0f} s)")

    before = megabytes(model)
    quantize_model(model, QuantConfig(bits=4, quant_type="nf4", compute_dtype=torch.float32))
    print(f"  model memory: {before:.2f} MiB fp32 -> {megabytes(model):.2f} MiB with NF4 linears (embeddings, norms, lm_head kept)")

    wrapped = add_lora(model, target=("qkv", "proj", "up", "down"), r=8, alpha=16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"  LoRA on {len(wrapped)} layers: {sum(p.numel() for p in trainable):,} trainable parameters")
    new = encode(NEW_TEXT * 60)
    opt = bnb.optim.AdamW8bit(trainable, lr=3e-3, min_8bit_size=1024)
    t0 = time.perf_counter()
    losses = train(model, trainable, opt, new, 80, g)
    print(f"  fine-tuning loss: {sum(losses[:5]) / 5:.3f} -> {sum(losses[-5:]) / 5:.3f} ({time.perf_counter() - t0:.0f} s, AdamW8bit)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qlora.pt"
        torch.save(model.state_dict(), path)
        size = path.stat().st_size / 2**20
        reloaded = build_quantized_lora_model()
        reloaded.load_state_dict(torch.load(path, weights_only=True), strict=True)
    probe = encode(NEW_TEXT)[None, :32]
    same = torch.equal(model(probe), reloaded(probe))
    print(f"  saved {size:.2f} MiB, reloaded into a fresh model: identical logits = {same}")
    print(f"  generation from the reloaded model: {reloaded.generate('kbit runs', 40)!r}")


def main() -> None:
    start = time.perf_counter()
    print("4-bit quantization of a 2048x1024 layer:")
    layer_demo()
    print("QLoRA on a tiny causal LM (CPU):")
    qlora_demo()
    print(f"done in {time.perf_counter() - start:.0f} s; backends: python -m kbit")


if __name__ == "__main__":
    main()

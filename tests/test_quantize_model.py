"""kbit.nn.quantize_model and the LoRA wrapper."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit.nn import Linear4bit, Linear8bitLt, LoRALinear, QuantConfig, add_lora, quantize_model


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Sequential()).eval()


def named_lm_head():
    model = torch.nn.Module()
    model.body = torch.nn.Linear(32, 32)
    model.lm_head = torch.nn.Linear(32, 10)
    return model


@pytest.mark.parametrize("bits", [4, 8])
def test_replaces_linears_and_keeps_outputs_close(bits):
    model = mlp()
    x = torch.randn(5, 64)
    want = model(x)
    quantize_model(model, QuantConfig(bits=bits, compute_dtype=torch.float32, threshold=6.0))
    cls = Linear4bit if bits == 4 else Linear8bitLt
    assert isinstance(model[0], cls) and isinstance(model[2], cls)
    rel = ((model(x) - want).norm() / want.norm()).item()
    assert rel < (0.15 if bits == 4 else 0.02)


def test_weights_are_quantized_from_the_originals():
    model = mlp()
    W = model[0].weight.detach().clone()
    quantize_model(model)
    packed, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    assert torch.equal(model[0].weight.data, packed) and model[0].weight.quant_state == state


def test_skip_list():
    model = quantize_model(named_lm_head())
    assert isinstance(model.body, Linear4bit) and type(model.lm_head) is torch.nn.Linear
    model = quantize_model(named_lm_head(), QuantConfig(skip=()))
    assert isinstance(model.lm_head, Linear4bit)


def test_bad_config():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantConfig(bits=3)


def test_lora_starts_as_identity_and_trains_only_adapters():
    model = quantize_model(mlp(), QuantConfig(compute_dtype=torch.float32))
    x = torch.randn(3, 64)
    before = model(x)
    wrapped = add_lora(model, target=("0", "2"), r=4)
    assert wrapped == ["0", "2"] and isinstance(model[0], LoRALinear)
    assert torch.equal(model(x), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"]
    model(x).sum().backward()
    assert model[0].lora_B.grad is not None and model[0].lora_B.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="r must be positive"):
        LoRALinear(torch.nn.Linear(4, 4), r=0)

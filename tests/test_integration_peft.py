"""PEFT LoRA on kbit layers (kbit.integrations.peft): forward vs the float reference, training, merge/unmerge/unload.

The reference is dense float32: the base weight dequantized with kbit.functional (dequantize_4bit, or
CB * SCB / 127 for int8) plus ``scaling * B @ A``. Merged 4-bit / int8 weights must equal, bit for
bit, the re-quantization of that exact float merge.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

peft = pytest.importorskip("peft", minversion="0.19")

from peft import LoraConfig  # noqa: E402

import kbit  # noqa: E402
from kbit import functional as F  # noqa: E402
from kbit.integrations import peft as kpeft  # noqa: E402
from kbit.nn import Linear4bit, Linear8bitLt, QuantConfig, quantize_model  # noqa: E402
from kbit.testing.tolerances import ELEMENT_BOUND, EPS, MATMUL_4BIT_TOL, tol  # noqa: E402

#: Float32 matmul vs float32 matmul with the same operands summed in another order (the 4-bit entry
#: of the one tolerance table; the int8 paths dequantize to float32 the same way).
F32 = tol(MATMUL_4BIT_TOL, torch.float32)
#: Training on one fixed batch: the last three losses must sum to less than this fraction of the first
#: three (measured: 0.81 for 4-bit and 8-bit after STEPS steps at LR; the loss falls about 4.17 -> 3.26).
LOSS_DROP = 0.9
STEPS = 12
LR = 1e-2
TARGETS = ["up", "down"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = [pytest.param(4, "nf4", id="nf4"), pytest.param(4, "fp4", id="fp4"), pytest.param(8, None, id="int8")]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 48)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def quantized(bits: int, quant_type: str | None = "nf4", compress_statistics: bool = True, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Tiny with kbit layers quantized from ``dtype`` weights, computing in ``dtype``."""
    config = QuantConfig(bits=bits, quant_type=quant_type or "nf4", compute_dtype=dtype, compress_statistics=compress_statistics, skip=())
    return quantize_model(Tiny().to(dtype), config)


def lora_config(**kwargs) -> LoraConfig:
    """Random A and B (init_lora_weights=False), so the adapters change the output from the start."""
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, **kwargs})


def dense_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The float32 weight a kbit layer computes with."""
    w = layer.weight
    if isinstance(layer, Linear4bit):
        return F.dequantize_4bit(w.data, w.quant_state).float()
    if layer.state.has_fp16_weights:
        return w.data.float()
    return F.int8_vectorwise_dequant(w.data, w.SCB if w.SCB is not None else layer.state.SCB)


def delta(lora_layer, name: str = "default") -> torch.Tensor:
    B, A = lora_layer.lora_B[name].weight.detach(), lora_layer.lora_A[name].weight.detach()
    return (B.float() @ A.float()) * lora_layer.scaling[name]


def requantize_4bit(weight: torch.Tensor, like: Linear4bit):
    qs = like.weight.quant_state
    return F.quantize_4bit(weight.to(qs.dtype), blocksize=qs.blocksize, compress_statistics=qs.nested, quant_type=qs.quant_type, quant_storage=like.weight.dtype)


def test_get_peft_model_wraps_kbit_layers_and_trains_only_lora():
    config = kpeft.register(lora_config())
    assert config._custom_modules == {Linear4bit: kpeft.KbitLoraLinear4bit, Linear8bitLt: kpeft.KbitLoraLinear8bitLt}
    for bits, cls in ((4, kpeft.KbitLoraLinear4bit), (8, kpeft.KbitLoraLinear8bitLt)):
        model = peft.get_peft_model(quantized(bits), kpeft.register(lora_config()))
        inner = model.base_model.model
        assert type(inner.up) is cls and type(inner.down) is cls
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 * len(TARGETS) and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("bits, quant_type", LAYERS)
@pytest.mark.parametrize("lora_bias", [False, True], ids=["no_bias", "lora_bias"])
def test_forward_matches_float_reference(bits, quant_type, lora_bias):
    model = kpeft.get_peft_model(quantized(bits, quant_type), lora_config(lora_bias=lora_bias, r=8, lora_alpha=4))
    layer = model.base_model.model.up  # train mode: the int8 layer computes with its dequantized weight
    x = torch.randn(3, 2, 64).transpose(0, 1)  # 3-D, non-contiguous
    bias = layer.base_layer.bias.detach() + (layer.lora_B["default"].bias.detach() * layer.scaling["default"] if lora_bias else 0)
    expected = torch.nn.functional.linear(x, dense_weight(layer.base_layer) + delta(layer), bias)
    torch.testing.assert_close(layer(x), expected, **F32)
    out = model(x)
    ref_hidden = torch.relu(expected)
    down = model.base_model.model.down
    down_bias = down.base_layer.bias.detach() + (down.lora_B["default"].bias.detach() * down.scaling["default"] if lora_bias else 0)
    torch.testing.assert_close(out, torch.nn.functional.linear(ref_hidden, dense_weight(down.base_layer) + delta(down), down_bias), **F32)


@pytest.mark.parametrize("bits", [4, 8])
def test_disabled_adapter_and_base_rows_give_the_base_output(bits):
    base = quantized(bits).eval()
    x = torch.randn(2, 5, 64)
    base_out = base(x)
    model = kpeft.get_peft_model(base, lora_config()).eval()
    lora_out = model(x)
    assert not torch.allclose(lora_out, base_out, **F32)
    with model.disable_adapter():
        assert torch.equal(model(x), base_out)
    mixed = model(x, adapter_names=["__base__", "default"])
    assert torch.equal(mixed[0], base_out[0])
    torch.testing.assert_close(mixed[1], lora_out[1], **F32)


def tiny_llama(bits: int) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return quantize_model(model, QuantConfig(bits=bits, compute_dtype=torch.float32))


@pytest.mark.parametrize("bits, optimizer", [(4, "AdamW8bit"), (8, "torch.AdamW")])
def test_training_lowers_the_loss_and_leaves_the_base_unchanged(bits, optimizer):
    model = kpeft.get_peft_model(tiny_llama(bits), LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS))
    kbit_types = (kpeft.KbitLoraLinear4bit, kpeft.KbitLoraLinear8bitLt)
    assert sum(isinstance(m, kbit_types) for m in model.modules()) == 2 * len(LLAMA_TARGETS)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * len(LLAMA_TARGETS)
    if optimizer == "AdamW8bit":
        opt = kbit.optim.AdamW8bit(trainable, lr=LR, min_8bit_size=256)
    else:
        opt = torch.optim.AdamW(trainable, lr=LR)
    batch = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < LOSS_DROP * sum(losses[:3]), losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed although frozen"


@pytest.mark.parametrize(
    "quant_type, compress_statistics, dtype",
    [("nf4", True, torch.float32), ("fp4", False, torch.float32), ("nf4", True, torch.bfloat16)],
    ids=["nf4-nested", "fp4", "nf4-bf16"],
)
def test_merge_and_unload_4bit_requantizes_the_float_merge(quant_type, compress_statistics, dtype):
    model = kpeft.get_peft_model(quantized(4, quant_type, compress_statistics, dtype), lora_config())
    wrapped = {name: getattr(model.base_model.model, name) for name in TARGETS}
    merged_float = {n: dense_weight(m.base_layer) + delta(m) for n, m in wrapped.items()}
    expected = {n: requantize_4bit(merged_float[n], wrapped[n].base_layer) for n in TARGETS}
    biases = {n: m.base_layer.bias.detach().clone() for n, m in wrapped.items()}
    merged = model.merge_and_unload()
    assert not any("lora" in k for k in merged.state_dict())
    x = torch.randn(2, 3, 64).to(dtype)
    for name in TARGETS:
        layer = getattr(merged, name)
        assert type(layer) is Linear4bit
        packed, state = expected[name]
        assert layer.weight.quant_state.dtype == dtype
        assert torch.equal(layer.weight.data, packed)
        assert layer.quant_state is layer.weight.quant_state
        weight = dense_weight(layer)
        assert torch.equal(weight, F.dequantize_4bit(packed, state).float())
        # per block: |w_hat - w| <= h * absmax, plus the error of the stored (nested-quantized) absmax and
        # the rounding of w to the weight dtype; a block's largest element maps to code +-1, so the
        # stored absmax is the block's max |w_hat|
        exact = merged_float[name].reshape(-1, state.blocksize).abs().amax(1, keepdim=True)
        stored = weight.reshape(-1, state.blocksize).abs().amax(1, keepdim=True)
        limit = ELEMENT_BOUND[quant_type] * exact + (stored - exact).abs() + EPS[dtype] * exact
        assert ((weight - merged_float[name]).reshape(-1, state.blocksize).abs() <= limit).all()
        assert torch.equal(layer.bias, biases[name])
    hidden = torch.relu(torch.nn.functional.linear(x.float(), dense_weight(merged.up), merged.up.bias.float())).to(dtype).float()
    expected_out = torch.nn.functional.linear(hidden, dense_weight(merged.down), merged.down.bias.float()).to(dtype)
    torch.testing.assert_close(merged(x), expected_out, **tol(MATMUL_4BIT_TOL, dtype))


def test_merge_and_unload_int8_requantizes_the_float_merge():
    model = kpeft.get_peft_model(quantized(8), lora_config(lora_bias=True))
    wrapped = {name: getattr(model.base_model.model, name) for name in TARGETS}
    merged_float = {n: dense_weight(m.base_layer) + delta(m) for n, m in wrapped.items()}
    biases = {n: m.base_layer.bias.detach() + m.lora_B["default"].bias.detach() * m.scaling["default"] for n, m in wrapped.items()}
    merged = model.merge_and_unload()
    for name in TARGETS:
        layer = getattr(merged, name)
        assert type(layer) is Linear8bitLt
        CB, SCB, _ = F.int8_vectorwise_quant(merged_float[name].half())
        assert torch.equal(layer.weight.data, CB) and torch.equal(layer.weight.SCB, SCB)
        # half an int8 step per row, plus the float16 rounding of the weight before quantization
        bound = SCB[:, None] * (0.5 / 127 + EPS[torch.float16])
        assert ((dense_weight(layer) - merged_float[name]).abs() <= bound).all()
        torch.testing.assert_close(layer.bias.detach(), biases[name], **F32)
    x = torch.randn(4, 64)
    merged.train()  # int8 layers in training mode compute with the dequantized weight
    hidden = torch.relu(torch.nn.functional.linear(x, dense_weight(merged.up), merged.up.bias))
    torch.testing.assert_close(merged(x), torch.nn.functional.linear(hidden, dense_weight(merged.down), merged.down.bias), **F32)


def test_int8_layer_with_float_weights_merges_in_float():
    model = Tiny()
    for name in TARGETS:
        old = getattr(model, name)
        new = Linear8bitLt(old.in_features, old.out_features, has_fp16_weights=True)
        new.load_state_dict(old.state_dict())
        setattr(model, name, new)
    peft_model = kpeft.get_peft_model(model, lora_config())
    layer = peft_model.base_model.model.up
    expected = layer.base_layer.weight.detach().clone() + delta(layer)
    merged = peft_model.merge_and_unload()
    assert merged.up.weight.dtype == torch.float32
    torch.testing.assert_close(merged.up.weight.detach(), expected, **F32)


@pytest.mark.parametrize("bits", [4, 8])
def test_unmerge_restores_the_quantized_base_exactly(bits):
    model = kpeft.get_peft_model(quantized(bits), lora_config()).eval()
    layer = model.base_model.model.up
    x = torch.randn(2, 64)
    before_out = model(x)
    before = {k: v.clone() for k, v in layer.base_layer.state_dict().items()}
    model.merge_adapter()
    assert layer.merged
    merged_out = model(x)
    assert not torch.equal(layer.base_layer.weight.data, before["weight"])
    model.unmerge_adapter()
    assert not layer.merged
    after = layer.base_layer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), before_out)
    model.merge_adapter()  # merging again gives the same merged weights
    assert torch.equal(model(x), merged_out)


def test_merging_adapters_one_by_one_requantizes_once_from_the_original():
    model = kpeft.get_peft_model(quantized(4), lora_config())
    model.add_adapter("other", kpeft.register(lora_config(r=2, lora_alpha=6)))
    layer = model.base_model.model.up
    packed, _ = requantize_4bit(dense_weight(layer.base_layer) + delta(layer, "default") + delta(layer, "other"), layer.base_layer)
    model.base_model.merge_adapter(adapter_names=["default"])
    with pytest.warns(UserWarning, match="Already following adapters were merged"):
        model.base_model.merge_adapter(adapter_names=["other"])
    assert layer.merged_adapters == ["default", "other"]
    assert torch.equal(layer.base_layer.weight.data, packed)
    model.unmerge_adapter()
    merged = model.merge_and_unload(adapter_names=["default", "other"])
    assert torch.equal(merged.up.weight.data, packed)


def test_safe_merge_rejects_a_broken_adapter_and_changes_nothing():
    model = kpeft.get_peft_model(quantized(4), lora_config())
    layer = model.base_model.model.up
    before = layer.base_layer.weight.data.clone()
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model.merge_and_unload(safe_merge=True)
    assert not layer.merged and torch.equal(layer.base_layer.weight.data, before)


def test_unsupported_configurations_raise():
    with pytest.raises(ValueError, match="init_lora_weights"):
        kpeft.get_peft_model(quantized(4), lora_config(init_lora_weights="pissa"))
    with pytest.raises(ValueError, match="plain LoRA"):
        kpeft.get_peft_model(quantized(8), lora_config(use_dora=True))
    with pytest.raises(TypeError, match="LoraConfig"):
        kpeft.register(peft.IA3Config(target_modules=TARGETS))


def test_saved_adapter_loads_back_with_kbit_layers(tmp_path):
    base = quantized(4).eval()
    fresh = copy.deepcopy(base)
    model = kpeft.get_peft_model(base, lora_config()).eval()
    x = torch.randn(2, 64)
    model.save_pretrained(tmp_path)
    loaded = kpeft.from_pretrained(fresh, tmp_path).eval()
    assert type(loaded.base_model.model.up) is kpeft.KbitLoraLinear4bit
    assert torch.equal(loaded(x), model(x))


def test_import_kbit_does_not_import_peft():
    code = "import sys, kbit; assert not {'peft', 'transformers', 'kbit.integrations.peft'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)

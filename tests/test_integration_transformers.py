"""transformers integration: KbitConfig, the "kbit" quantizer of from_pretrained, bitsandbytes-format export.

Tiny models built from configs (no downloads). Oracles: the float model's logits, kbit.functional's
quantization of the float checkpoint weights, and logits saved before a checkpoint is reloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig  # noqa: E402
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, AutoQuantizationConfig  # noqa: E402
from transformers.utils.quantization_config import BitsAndBytesConfig  # noqa: E402

import kbit.functional as F  # noqa: E402
from kbit.functional.quant_state import unpack_tensor_to_dict  # noqa: E402
from kbit.integrations.transformers import KbitConfig, KbitHfQuantizer, bitsandbytes_config, from_pretrained_bnb, save_pretrained_bnb  # noqa: E402
from kbit.nn import Linear4bit, Linear8bitLt, QuantConfig, quantize_model  # noqa: E402

TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY_GPT2 = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
#: ||logits(quantized) - logits(float)|| / ||logits(float)|| of the tiny Llama, about twice the measured
#: 0.09-0.12 (nf4, nested, bf16 compute) and 0.009-0.010 (int8, threshold 6) over seeds 0-3.
LOGITS_REL_ERR = {4: 0.2, 8: 0.02}
#: Dequantized float model vs the 4-bit model computing in bfloat16 (bf16 rounding of activations).
DEQUANTIZED_REL_ERR = 0.02
CLS = {4: Linear4bit, 8: Linear8bitLt}


def kbit_config(bits: int, **kwargs) -> KbitConfig:
    return KbitConfig(load_in_4bit=bits == 4, load_in_8bit=bits == 8, **kwargs)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def tensors(path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(path / "model.safetensors"))


def quant_config_json(path) -> dict:
    return json.loads((path / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA)).eval()
    path = tmp_path_factory.mktemp("float")
    model.save_pretrained(path)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12))
    return SimpleNamespace(path=path, model=model, ids=ids, logits=logits(model, ids))


@pytest.fixture(scope="module", params=[4, 8], ids=["4bit", "8bit"])
def quantized(request, float_ckpt, tmp_path_factory):
    """Quantized while loading the float checkpoint, then saved (a "kbit" checkpoint)."""
    bits = request.param
    model = AutoModelForCausalLM.from_pretrained(float_ckpt.path, quantization_config=kbit_config(bits))
    path = tmp_path_factory.mktemp(f"kbit{bits}")
    model.save_pretrained(path)
    return SimpleNamespace(bits=bits, model=model, path=path, logits=logits(model, float_ckpt.ids))


# -- KbitConfig ---------------------------------------------------------------------------------


def test_config_defaults_and_round_trip():
    default = KbitConfig(load_in_8bit=True)
    assert (default.quant_type, default.compute_dtype, default.compress_statistics, default.quant_storage) == ("nf4", torch.bfloat16, True, torch.uint8)
    assert (default.skip_modules, default.llm_int8_threshold, default.quant_method) == (["lm_head"], 6.0, "kbit")
    config = KbitConfig(load_in_4bit=True, quant_type="fp4", compute_dtype="float16", compress_statistics=False, quant_storage="bfloat16", skip_modules=["lm_head", "mlp"], llm_int8_threshold=0)
    assert (config.compute_dtype, config.quant_storage) == (torch.float16, torch.bfloat16)
    data = config.to_dict()
    assert json.loads(config.to_json_string()) == data
    assert data == {"quant_method": "kbit", "bits": 4, "quant_type": "fp4", "compute_dtype": "float16", "compress_statistics": False, "quant_storage": "bfloat16", "skip_modules": ["lm_head", "mlp"], "llm_int8_threshold": 0.0}
    # transformers routes any dict with a true load_in_4bit/8bit to bitsandbytes: kbit writes "bits".
    assert "load_in_4bit" not in data and "load_in_8bit" not in data
    for source in (config, default):
        again = KbitConfig.from_dict(source.to_dict())
        assert again.to_dict() == source.to_dict() and again.compute_dtype == source.compute_dtype
        assert type(AutoQuantizationConfig.from_dict(source.to_dict())) is KbitConfig
    assert KbitConfig.from_dict({"quant_method": "kbit", "load_in_8bit": True}).bits == 8


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(load_in_4bit=True, load_in_8bit=True), ValueError, "exactly one of load_in_4bit and load_in_8bit"),
        (dict(), ValueError, "exactly one of .*, got load_in_4bit=False, load_in_8bit=False"),
        (dict(load_in_4bit=True, quant_type="nf3"), ValueError, "quant_type must be one of .*'nf3'"),
        (dict(load_in_4bit=True, compute_dtype="int8"), ValueError, "compute_dtype must be one of"),
        (dict(load_in_4bit=True, compute_dtype="float17"), ValueError, "compute_dtype must name a torch dtype"),
        (dict(load_in_4bit=True, compute_dtype=3), TypeError, "compute_dtype must be a torch.dtype"),
        (dict(load_in_4bit=True, quant_storage=torch.int32), ValueError, "quant_storage must be one of"),
        (dict(load_in_8bit=True, llm_int8_threshold=-1.0), ValueError, "llm_int8_threshold must be a number >= 0"),
        (dict(load_in_8bit=True, skip_modules="lm_head"), TypeError, "skip_modules must be a list"),
    ],
)
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=f"KbitConfig: {match}"):
        KbitConfig(**kwargs)


def test_config_from_dict_errors():
    with pytest.raises(ValueError, match="bits must be 4 or 8, got 3"):
        KbitConfig.from_dict({"quant_method": "kbit", "bits": 3})
    with pytest.raises(ValueError, match="quant_method must be 'kbit', got 'gptq'"):
        KbitConfig.from_dict({"quant_method": "gptq", "bits": 4})


def test_registered_with_transformers():
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["kbit"] is KbitConfig
    assert AUTO_QUANTIZER_MAPPING["kbit"] is KbitHfQuantizer


# -- from_pretrained / save_pretrained ------------------------------------------------------------


def test_quantize_on_load(quantized, float_ckpt):
    model, bits = quantized.model, quantized.bits
    assert type(model.lm_head) is torch.nn.Linear
    assert model.hf_quantizer.pre_quantized is False and model.is_quantized
    for i in range(TINY_LLAMA["num_hidden_layers"]):
        for name in LINEARS:
            layer = model.get_submodule(f"model.layers.{i}.{name}")
            assert isinstance(layer, CLS[bits]), name
            W = float_ckpt.model.get_submodule(f"model.layers.{i}.{name}").weight.detach()
            if bits == 4:  # oracle: kbit.functional on the float checkpoint weight
                packed, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
                assert torch.equal(layer.weight.data, packed) and layer.weight.quant_state == state
            else:
                CB, SCB, _ = F.int8_vectorwise_quant(W.half())
                assert torch.equal(layer.weight.data, CB) and torch.equal(layer.state.SCB if layer.state.SCB is not None else layer.weight.SCB, SCB)
                assert layer.state.threshold == 6.0
    err = rel_err(quantized.logits, float_ckpt.logits)
    assert 0 < err < LOGITS_REL_ERR[bits]


def test_save_and_reload_prequantized(quantized):
    assert quant_config_json(quantized.path) == kbit_config(quantized.bits).to_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(quantized.path)
    assert reloaded.hf_quantizer.pre_quantized is True
    assert isinstance(reloaded.config.quantization_config, KbitConfig)
    assert isinstance(reloaded.model.layers[1].mlp.down_proj, CLS[quantized.bits]) and type(reloaded.lm_head) is torch.nn.Linear
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(reloaded, ids), logits(quantized.model, ids))


def test_resaving_a_prequantized_model_writes_the_same_checkpoint(quantized, tmp_path):
    AutoModelForCausalLM.from_pretrained(quantized.path).save_pretrained(tmp_path)
    first, second = tensors(quantized.path), tensors(tmp_path)
    assert sorted(first) == sorted(second)
    for key, value in first.items():
        assert second[key].dtype == value.dtype and torch.equal(second[key], value), key


def test_prequantized_weight_without_its_companions_fails_loudly(quantized, tmp_path):
    state = tensors(quantized.path)
    prefix = "model.layers.0.mlp.up_proj."
    dropped = [k for k in state if k.startswith(prefix) and k != prefix + "weight"]
    assert dropped  # absmax, quant_map, quant_state... or SCB, weight_format
    safetensors_torch.save_file({k: v for k, v in state.items() if k not in dropped}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((quantized.path / "config.json").read_text())
    with pytest.raises(RuntimeError, match="automatic conversion of the weights"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_prequantized_float_weights_follow_the_requested_dtype(quantized, float_ckpt):
    model = AutoModelForCausalLM.from_pretrained(quantized.path, dtype=torch.bfloat16)
    assert model.model.norm.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == (torch.uint8 if quantized.bits == 4 else torch.int8)
    assert rel_err(logits(model, float_ckpt.ids), float_ckpt.logits) < LOGITS_REL_ERR[quantized.bits] + DEQUANTIZED_REL_ERR


def test_dequantize(float_ckpt, quantized):
    model = AutoModelForCausalLM.from_pretrained(quantized.path)
    q_proj = model.model.layers[0].self_attn.q_proj
    if quantized.bits == 4:
        want = F.dequantize_4bit(q_proj.weight.data, q_proj.weight.quant_state)
    else:
        want = F.int8_vectorwise_dequant(q_proj.weight.data, q_proj.weight.SCB)
    model = model.dequantize()
    assert not any(isinstance(m, (Linear4bit, Linear8bitLt)) for m in model.modules())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear and not hasattr(model.config, "quantization_config")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, want)
    assert rel_err(logits(model, float_ckpt.ids), quantized.logits) < DEQUANTIZED_REL_ERR


def test_skips_output_embedding_tied_weights_and_listed_modules(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=True)).save_pretrained(tmp_path)
    skip = ["mlp.up_proj", "model.layers.1"]  # transformers' matching: a suffix, a prefix at a module boundary
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=KbitConfig(load_in_4bit=True, skip_modules=skip))
    assert type(model.lm_head) is torch.nn.Linear  # tied to the input embedding, skipped although not listed
    assert model.lm_head.weight is model.model.embed_tokens.weight
    first, second = model.model.layers
    assert isinstance(first.self_attn.q_proj, Linear4bit) and isinstance(first.mlp.down_proj, Linear4bit)
    assert type(first.mlp.up_proj) is torch.nn.Linear
    assert not any(isinstance(m, Linear4bit) for m in second.modules())


def test_conv1d_models_are_quantized_in_linear_orientation(tmp_path):
    torch.manual_seed(0)
    float_model = AutoModelForCausalLM.from_config(GPT2Config(**TINY_GPT2)).eval()
    float_model.save_pretrained(tmp_path / "float")
    ids = torch.randint(0, TINY_GPT2["vocab_size"], (2, 12))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=KbitConfig(load_in_4bit=True, compute_dtype=torch.float32))
    c_fc = model.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, Linear4bit) and (c_fc.out_features, c_fc.in_features) == (256, 64)
    packed, _ = F.quantize_4bit(float_model.transformer.h[0].mlp.c_fc.weight.detach().t().contiguous(), quant_type="nf4", compress_statistics=True)
    assert torch.equal(c_fc.weight.data, packed)
    got = logits(model, ids)
    assert rel_err(got, logits(float_model, ids)) < LOGITS_REL_ERR[4]
    model.save_pretrained(tmp_path / "kbit")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "kbit"), ids), got)


# -- bitsandbytes format ------------------------------------------------------------------------


def test_bitsandbytes_export_and_import(quantized, float_ckpt, tmp_path):
    model = quantized.model
    save_pretrained_bnb(model, tmp_path)
    assert isinstance(model.config.quantization_config, KbitConfig)  # left as it was
    written = quant_config_json(tmp_path)
    assert written["quant_method"] == "bitsandbytes" and written["llm_int8_skip_modules"] == ["lm_head"]
    assert type(AutoQuantizationConfig.from_dict(written)) is BitsAndBytesConfig  # what stock transformers reads
    state = tensors(tmp_path)
    prefix = "model.layers.0.self_attn.q_proj."
    out_f, in_f = TINY_LLAMA["hidden_size"], TINY_LLAMA["hidden_size"]
    if quantized.bits == 4:
        assert (written["load_in_4bit"], written["load_in_8bit"], written["bnb_4bit_quant_type"]) == (True, False, "nf4")
        assert (written["bnb_4bit_use_double_quant"], written["bnb_4bit_compute_dtype"], written["bnb_4bit_quant_storage"]) == (True, "bfloat16", "uint8")
        expect = {  # SPEC §3: nested nf4 Linear4bit
            "weight": (torch.uint8, (out_f * in_f // 2, 1)),
            "weight.absmax": (torch.uint8, (out_f * in_f // 64,)),
            "weight.quant_map": (torch.float32, (16,)),
            "weight.nested_absmax": (torch.float32, (1,)),
            "weight.nested_quant_map": (torch.float32, (256,)),
        }
        packed = state[prefix + "weight.quant_state.bitsandbytes__nf4"]
        assert packed.dtype == torch.uint8 and prefix + "weight.quant_state.bitsandbytes__fp4" not in state
        meta = unpack_tensor_to_dict(packed)
        assert {k: meta[k] for k in ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize")} == {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [out_f, in_f], "nested_blocksize": 256}
    else:
        assert (written["load_in_8bit"], written["load_in_4bit"], written["llm_int8_threshold"], written["llm_int8_has_fp16_weight"]) == (True, False, 6.0, False)
        expect = {"weight": (torch.int8, (out_f, in_f)), "SCB": (torch.float32, (out_f,)), "weight_format": (torch.uint8, ())}
        assert state[prefix + "weight_format"].item() == 0
    for key, (dtype, shape) in expect.items():
        assert (state[prefix + key].dtype, tuple(state[prefix + key].shape)) == (dtype, shape), key
    assert state["lm_head.weight"].dtype == torch.float32
    reloaded = from_pretrained_bnb(AutoModelForCausalLM, tmp_path)
    assert isinstance(reloaded.model.layers[0].self_attn.q_proj, CLS[quantized.bits])
    assert torch.equal(logits(reloaded, float_ckpt.ids), quantized.logits)
    assert isinstance(reloaded.config.quantization_config, KbitConfig)


def test_export_of_a_quantize_model_model_with_bitsandbytes_defaults(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA)).eval()
    quantize_model(model, QuantConfig(bits=4, quant_type="fp4", compress_statistics=False, compute_dtype=torch.float32))
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12))
    want = logits(model, ids)
    save_pretrained_bnb(model, tmp_path)
    assert not hasattr(model.config, "quantization_config")
    written = quant_config_json(tmp_path)
    assert (written["bnb_4bit_quant_type"], written["bnb_4bit_use_double_quant"], written["bnb_4bit_compute_dtype"]) == ("fp4", False, "float32")
    assert tensors(tmp_path)["model.layers.0.mlp.up_proj.weight.absmax"].dtype == torch.float32  # not nested
    assert torch.equal(logits(from_pretrained_bnb(AutoModelForCausalLM, tmp_path), ids), want)


def test_from_bitsandbytes_applies_bitsandbytes_defaults():
    config = KbitConfig.from_bitsandbytes({"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert (config.bits, config.quant_type, config.compress_statistics, config.compute_dtype, config.skip_modules) == (4, "fp4", False, torch.float32, [])
    config = KbitConfig.from_bitsandbytes(BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=4.0, llm_int8_skip_modules=["out"]))
    assert (config.bits, config.llm_int8_threshold, config.skip_modules) == (8, 4.0, ["out"])
    with pytest.raises(ValueError, match="llm_int8_has_fp16_weight=True is not supported"):
        KbitConfig.from_bitsandbytes(BitsAndBytesConfig(load_in_8bit=True, llm_int8_has_fp16_weight=True))


def test_errors(float_ckpt):
    with pytest.raises(ValueError, match="must hold kbit Linear4bit or Linear8bitLt layers .*found 0 and 0"):
        bitsandbytes_config(float_ckpt.model)
    with pytest.raises(ValueError, match="has no quantization_config"):
        from_pretrained_bnb(AutoModelForCausalLM, float_ckpt.path)
    with pytest.raises(ValueError, match="offloads modules to 'disk'"):
        KbitHfQuantizer(KbitConfig(load_in_4bit=True)).validate_environment(device_map={"model": "cpu", "lm_head": "disk"})
    with pytest.raises(TypeError, match="quantization_config must be a KbitConfig, got BitsAndBytesConfig"):
        KbitHfQuantizer(BitsAndBytesConfig(load_in_4bit=True))


# -- import kbit is enough --------------------------------------------------------------------


def test_plain_import_kbit_registers_when_transformers_loads(float_ckpt, tmp_path):
    """A fresh interpreter: ``import kbit`` imports no transformers, yet from_pretrained of a "kbit"
    checkpoint works (the integration registers itself when transformers' registry is imported)."""
    model = AutoModelForCausalLM.from_pretrained(float_ckpt.path, quantization_config=KbitConfig(load_in_4bit=True))
    model.save_pretrained(tmp_path)
    torch.save({"ids": float_ckpt.ids, "logits": logits(model, float_ckpt.ids)}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch, kbit
        assert "transformers" not in sys.modules and "kbit.integrations.transformers" not in sys.modules
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        with torch.no_grad():
            assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        """
    )
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

"""torch.compile(fullgraph=True) over quantized models: one graph, no breaks, same numbers as eager.

Covers Linear4bit (NF4/FP4, f32 and bf16 compute, nested or plain absmax), Linear8bitLt (with and
without outlier threshold), inference and QLoRA training (backward through MatMul4Bit), on a tiny
MLP and the tiny causal LM of examples/tiny_lm.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo.testing

from kbit.nn import QuantConfig, add_lora, quantize_model
from kbit.testing.tolerances import MATMUL_4BIT_TOL, tol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from tiny_lm import TinyCausalLM, TinyConfig  # noqa: E402

LM_CFG = TinyConfig(d_model=64, n_layer=2, n_head=2, d_ff=128, max_len=32)
CONFIGS = {
    "nf4": QuantConfig(bits=4, quant_type="nf4", compute_dtype=torch.float32, skip=()),
    "fp4-bf16": QuantConfig(bits=4, quant_type="fp4", compute_dtype=torch.bfloat16, skip=()),  # casts f32 bias
    "nf4-plain-absmax": QuantConfig(bits=4, quant_type="nf4", compute_dtype=None, compress_statistics=False, skip=()),
    "int8": QuantConfig(bits=8, skip=()),
    "int8-outliers": QuantConfig(bits=8, threshold=6.0, skip=()),
}
#: Compiled frames for the first two calls: 2 where the first forward initialises module state.
FIRST_CALL_FRAMES = {"nf4": 1, "fp4-bf16": 1, "nf4-plain-absmax": 2, "int8": 2, "int8-outliers": 2}
#: aot_eager runs the very kernels eager runs, in the same order: the outputs must be identical.
EXACT = {"atol": 0.0, "rtol": 0.0}


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))


def tiny_lm() -> torch.nn.Module:
    return TinyCausalLM(LM_CFG)


def inputs(model_name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if model_name == "mlp":
        x = torch.randn(5, 64, generator=g)
        x[:, 3] = 9.0  # an outlier column for threshold=6.0
        return x
    return torch.randint(0, LM_CFG.vocab_size, (2, 11), generator=g)


def quantized(model_name: str, config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model({"mlp": mlp, "lm": tiny_lm}[model_name](), CONFIGS[config])


def compile_once(model, backend="aot_eager"):
    """fullgraph=True raises on any graph break; the counter proves one frame, one graph."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(model, backend=counter, fullgraph=True), counter


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("model_name", ["mlp", "lm"])
def test_inference_compiles_to_one_graph_and_matches_eager(model_name, config):
    model = quantized(model_name, config).eval()
    x = inputs(model_name)
    compiled, counter = compile_once(model)
    with torch.no_grad():
        out = compiled(x)  # the first forward runs compiled: compute-dtype inference, 8-bit state setup
        again = compiled(x)
        frames = counter.frame_count
        compiled(x)
        expected = model(x)  # eager last: it casts the bias in place (bitsandbytes behaviour)
    assert not torch._dynamo.utils.counters["graph_break"]
    # A first forward that initialises module state (compute dtype from the input, Linear8bitLt moving
    # its int8 weight into its MatmulLtState) is traced once as such; the steady state is one more.
    assert frames == FIRST_CALL_FRAMES[config] and counter.frame_count == frames
    assert counter.op_count > 0
    torch.testing.assert_close(out, expected, **EXACT)
    torch.testing.assert_close(again, expected, **EXACT)


@pytest.mark.parametrize("config", ["nf4", "fp4-bf16", "int8"])
def test_qlora_training_step_compiles_and_matches_eager(config):
    eager, to_compile = (quantized("lm", config) for _ in range(2))
    for model in (eager, to_compile):
        torch.manual_seed(0)
        add_lora(model, target=("qkv", "proj", "up", "down"), r=4)
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                torch.nn.init.constant_(p, 0.01)
    idx = inputs("lm")
    compiled, counter = compile_once(to_compile)
    loss = torch.nn.functional.cross_entropy(compiled(idx).flatten(0, 1).float(), idx.flatten())
    loss.backward()
    expected = torch.nn.functional.cross_entropy(eager(idx).flatten(0, 1).float(), idx.flatten())
    expected.backward()
    assert counter.frame_count == 1 and not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(loss, expected, **EXACT)
    grads = {n: p.grad for n, p in to_compile.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, p in eager.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, **EXACT, msg=lambda m, n=name: f"{n}: {m}")


def test_explain_reports_no_graph_break():
    model = quantized("lm", "nf4").eval()
    with torch.no_grad():
        report = torch._dynamo.explain(model)(inputs("lm"))
    assert report.graph_break_count == 0 and report.graph_count == 1, report.break_reasons


def test_compiled_graph_calls_the_kbit_ops():
    model = quantized("mlp", "nf4").eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(inputs("mlp"))
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    assert sum("kbit.gemm_4bit" in t for t in targets) == 2, targets


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize("config", ["nf4", "int8"])
def test_inductor_matches_eager(config):
    model = quantized("mlp", config).eval()
    x = inputs("mlp")
    compiled, counter = compile_once(model, backend="inductor")
    with torch.no_grad():
        out, expected = compiled(x), model(x)
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected, **tol(MATMUL_4BIT_TOL, torch.float32))

"""kbit.nn.Linear8bitLt / Int8Params / kbit.matmul: LLM.int8() modules against float math and the fixture."""

from __future__ import annotations

import pytest
import torch

import kbit
from kbit.nn import Int8Params, Linear8bitLt

from .conftest import load_fixture


def int8_module(threshold=0.0, N=32, K=64, dtype=torch.float16):
    dense = torch.nn.Linear(K, N).to(dtype)
    m = Linear8bitLt(K, N, has_fp16_weights=False, threshold=threshold)
    m.load_state_dict(dense.state_dict())
    return dense, m.to("cpu")


def dequantized(m):
    CB = m.state.CB if m.state.CB is not None else m.weight.data
    SCB = m.state.SCB if m.state.SCB is not None else m.weight.SCB
    return CB.float() * SCB.view(-1, 1) / 127


def test_int8_params_quantize_on_move():
    w = torch.randn(16, 32)
    p = Int8Params(w.clone(), has_fp16_weights=False, requires_grad=False).to("cpu")
    assert p.dtype == torch.int8 and p.SCB.shape == (16,) and p.CB is p.data or torch.equal(p.CB, p.data)
    torch.testing.assert_close(p.SCB, w.half().abs().amax(1).float())
    again = p.to("cpu")
    assert again.dtype == torch.int8 and torch.equal(again.SCB, p.SCB)
    fp = Int8Params(w.clone(), has_fp16_weights=True).to("cpu")
    assert fp.dtype == torch.float32


def test_fixture_loads_and_reproduces_training_mode_output():
    sd = load_fixture("linear8bitlt_thr6")
    m = Linear8bitLt(256, 64, has_fp16_weights=False, threshold=6.0)
    m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("__")})
    assert torch.equal(m(sd["__input_x"]), sd["__expected_y"])
    out = m.state_dict()
    assert sorted(out) == ["SCB", "bias", "weight", "weight_format"]
    assert torch.equal(out["weight"], sd["weight"]) and torch.equal(out["SCB"], sd["SCB"]) and out["weight_format"].item() == 0


def test_fixture_eval_mode_int8_path_within_spec():
    sd = load_fixture("linear8bitlt_thr6")
    m = Linear8bitLt(256, 64, has_fp16_weights=False, threshold=6.0).eval()
    m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("__")})
    y = m(sd["__input_x"])
    diff = (y.float() - sd["__expected_y"].float()).abs()
    assert diff.max() < 0.03 and m.state.idx.tolist() == [3]


def test_quantizing_the_source_weight_reproduces_the_fixture():
    sd = load_fixture("linear8bitlt_thr6")
    m = Linear8bitLt(256, 64, has_fp16_weights=False, threshold=6.0)
    m.load_state_dict({"weight": sd["__source_weight_fp16"], "bias": sd["bias"]})
    m = m.to("cpu")
    assert torch.equal(m.weight.data, sd["weight"]) and torch.equal(m.weight.SCB, sd["SCB"])


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_eval_forward_against_float(threshold):
    dense, m = int8_module(threshold)
    m.eval()
    x = torch.randn(8, 64, dtype=torch.float16)
    if threshold:
        x[:, 5] = 9.0
    y = m(x)
    want = torch.nn.functional.linear(x.float(), dense.weight.float(), dense.bias.float())
    assert y.dtype == torch.float16
    close = torch.isclose(y.float(), want, atol=0.035, rtol=0.2)
    assert close.float().mean() > 0.99


def test_outlier_columns_are_exact_in_float():
    dense, m = int8_module(6.0)
    m.eval()
    x = torch.zeros(4, 64, dtype=torch.float16)
    x[:, 7] = 10.0
    y = m(x)
    want = x.float() @ dequantized(m).t() + dense.bias.float()
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=1e-3)


def test_training_gradients_match_float_autograd():
    dense, m = int8_module(0.0, dtype=torch.float32)
    m.train()
    m.bias.requires_grad_(True)
    x = torch.randn(2, 3, 64, requires_grad=True)
    g = torch.randn(2, 3, 32)
    m(x).backward(g)
    W = dequantized(m)
    x2 = x.detach().clone().requires_grad_()
    b2 = dense.bias.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, W, b2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=0.015, rtol=0.1)
    torch.testing.assert_close(m.bias.grad, b2.grad, atol=0.015, rtol=0.1)


def test_has_fp16_weights_training_updates_the_weight():
    m = Linear8bitLt(64, 32, has_fp16_weights=True)
    x = torch.randn(4, 64)
    loss = m(x).square().mean()
    loss.backward()
    assert m.weight.grad is not None and m.weight.grad.shape == (32, 64) and m.weight.dtype == torch.float32


def test_matmul_function_with_int8_state():
    torch.manual_seed(0)
    W = torch.randn(16, 32, dtype=torch.float16)
    state = kbit.MatmulLtState(has_fp16_weights=False, is_training=False)
    CB, SCB, _ = kbit.functional.int8_vectorwise_quant(W)
    state.CB, state.SCB = CB, SCB
    A = torch.randn(5, 32, dtype=torch.float16)
    y = kbit.matmul(A, CB, state=state, threshold=3.0)
    assert state.threshold == 3.0 and y.shape == (5, 16) and y.dtype == torch.float16
    want = A.float() @ (CB.float() * SCB.view(-1, 1) / 127).t()
    assert torch.isclose(y.float(), want, atol=0.035, rtol=0.2).float().mean() > 0.99
    assert kbit.matmul(torch.empty(0, 32, dtype=torch.float16), CB, state=state).shape == (0, 16)


def test_state_removed_attributes_and_reset():
    state = kbit.MatmulLtState()
    with pytest.warns(FutureWarning):
        assert state.CxB is None
    state.CB = torch.zeros(1)
    state.reset_grads()
    assert state.CB is None


def test_load_errors():
    _, m = int8_module()
    sd = m.state_dict()
    with pytest.raises(ValueError, match="weight_format"):
        Linear8bitLt(64, 32, has_fp16_weights=False).load_state_dict({**sd, "weight_format": torch.tensor(1, dtype=torch.uint8)})
    missing = {k: v for k, v in sd.items() if k != "SCB"}
    with pytest.raises(RuntimeError, match="SCB"):
        Linear8bitLt(64, 32, has_fp16_weights=False).load_state_dict(missing)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        Linear8bitLt(64, 16, has_fp16_weights=False).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="has_fp16_weights=True"):
        Linear8bitLt(64, 32, has_fp16_weights=True).load_state_dict(sd)

"""kbit.nn.Linear4bit / Params4bit: SPEC §6 attributes, quantize-on-move, state dicts, gradients, errors."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch

import kbit
import kbit.functional as F
from kbit.nn import Linear4bit, LinearFP4, LinearNF4, Params4bit

from .conftest import load_fixture

FIXTURES = [("linear4bit_nf4_nested", "nf4"), ("linear4bit_fp4_plain", "fp4"), ("linear4bit_nf4_bf16storage", "nf4")]


def quantized_pair(quant_type="nf4", nested=True, bias=True, N=32, K=64, storage=torch.uint8):
    dense = torch.nn.Linear(K, N, bias=bias)
    m = Linear4bit(K, N, bias=bias, quant_type=quant_type, compress_statistics=nested, quant_storage=storage)
    m.load_state_dict(dense.state_dict())
    return dense, m.to("cpu")


def test_constructor_attributes():
    m = Linear4bit(64, 32)
    assert m.compute_dtype is None and m.compute_type_is_set is False and m.quant_state is None
    assert m.quant_storage == torch.uint8 and m.weight.quant_type == "fp4" and m.weight.blocksize == 64
    assert m.weight.compress_statistics is True and m.weight.requires_grad is False and not m.weight.bnb_quantized
    assert LinearNF4(64, 32).weight.quant_type == "nf4" and LinearFP4(64, 32, compute_dtype=torch.bfloat16).compute_type_is_set
    with pytest.raises(ValueError, match="quant_type"):
        Linear4bit(64, 32, quant_type="int4")


def test_quantize_on_move_to_cpu():
    dense, m = quantized_pair()
    w = m.weight
    assert isinstance(w, Params4bit) and w.bnb_quantized and w.dtype == torch.uint8 and w.shape == (1024, 1)
    assert m.quant_state is w.quant_state and w.quant_state.shape == (32, 64)
    assert w.absmax is w.quant_state.absmax and w.nested_blocksize == 256 and w.quant_map is w.quant_state.code
    moved = m.to("cpu")
    assert moved.weight.quant_state is w.quant_state  # a second move keeps the quantized data


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_dequantized_dense(quant_type, dtype):
    dense, m = quantized_pair(quant_type)
    x = torch.randn(2, 5, 64, dtype=dtype)
    W = F.dequantize_4bit(m.weight, m.weight.quant_state).to(dtype)
    want = torch.nn.functional.linear(x, W, dense.bias.to(dtype))
    y = m(x)
    assert y.dtype == dtype and m.compute_dtype == dtype
    torch.testing.assert_close(y, want, atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_forward_without_move_quantizes_lazily():
    m = Linear4bit(64, 32, quant_type="nf4")
    y = m(torch.randn(3, 64))
    assert m.weight.bnb_quantized and y.shape == (3, 32)


def test_float16_input_with_float32_compute_logs(caplog):
    _, m = quantized_pair()
    m.compute_dtype, m.compute_type_is_set = torch.float32, False
    with caplog.at_level(logging.WARNING, logger="kbit"):
        m(torch.randn(1, 64, dtype=torch.float16))
    assert "slow inference." in caplog.text


def test_state_dict_layout_matches_spec():
    _, m = quantized_pair("nf4", nested=True)
    sd = m.state_dict()
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}
    assert layout == {
        "weight": (torch.uint8, (1024, 1)),
        "bias": (torch.float32, (32,)),
        "weight.absmax": (torch.uint8, (32,)),
        "weight.quant_map": (torch.float32, (16,)),
        "weight.nested_absmax": (torch.float32, (1,)),
        "weight.nested_quant_map": (torch.float32, (256,)),
        "weight.quant_state.bitsandbytes__nf4": (torch.uint8, layout["weight.quant_state.bitsandbytes__nf4"][1]),
    }
    assert bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()).startswith(b'{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [32, 64]')


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
@pytest.mark.parametrize("nested", [False, True])
def test_state_dict_round_trip_is_bit_exact(storage, nested, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, m = quantized_pair("fp4", nested=nested, storage=storage)
    path = tmp_path / "m.safetensors"
    safetensors.save_file(m.state_dict(), str(path))
    fresh = Linear4bit(64, 32, quant_type="fp4", compress_statistics=nested, quant_storage=storage)
    fresh.load_state_dict(safetensors.load_file(str(path)))
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k].view(torch.uint8) if v.dtype == torch.bfloat16 else fresh.state_dict()[k], v.view(torch.uint8) if v.dtype == torch.bfloat16 else v), k
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), m(x))


def test_checkpoint_is_small():
    dense = torch.nn.Linear(400, 300).half()
    m = Linear4bit(400, 300, quant_type="nf4")
    m.load_state_dict(dense.state_dict())
    m = m.to("cpu")
    size = lambda sd: sum(v.numel() * v.element_size() for v in sd.values())  # noqa: E731
    assert size(m.state_dict()) < 0.29 * size(dense.state_dict())


@pytest.mark.parametrize("name, quant_type", FIXTURES)
def test_bitsandbytes_fixture_loads_and_reproduces_output(name, quant_type):
    sd = load_fixture(name)
    m = Linear4bit(320, 96, quant_type=quant_type, compute_dtype=torch.bfloat16)
    m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("__")}, strict=True)
    assert torch.equal(m(sd["__input_x"]), sd["__expected_y"])
    for k, v in m.state_dict().items():
        assert torch.equal(v.view(torch.uint8) if v.dtype == torch.bfloat16 else v, sd[k].view(torch.uint8) if sd[k].dtype == torch.bfloat16 else sd[k]), k


def test_from_prequantized():
    _, m = quantized_pair("nf4")
    sd = m.state_dict()
    stats = {k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")}
    host = Linear4bit(64, 32, quant_type="nf4")
    p = Params4bit.from_prequantized(sd["weight"], stats, device="cpu", module=host)
    assert p.bnb_quantized and p.quant_state == m.weight.quant_state and host.quant_state is p.quant_state


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda sd: sd.pop("weight.quant_state.bitsandbytes__nf4"), "quant_state"),
        (lambda sd: sd.__setitem__("weight.absmax", sd["weight.absmax"][:5]), "weight: .*absmax"),
    ],
)
def test_corrupt_state_dict_names_the_key(mutate, match):
    _, m = quantized_pair("nf4")
    sd = m.state_dict()
    mutate(sd)
    with pytest.raises(RuntimeError, match=match):
        Linear4bit(64, 32, quant_type="nf4").load_state_dict(sd)


def test_wrong_shape_and_quant_type_name_the_key():
    _, m = quantized_pair("nf4")
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        Linear4bit(64, 16, quant_type="nf4").load_state_dict(m.state_dict())
    with pytest.raises(RuntimeError, match="weight: the checkpoint holds quant_type 'nf4'"):
        Linear4bit(64, 32, quant_type="fp4").to("cpu").load_state_dict(m.state_dict())


def test_copies_pickles_and_splits():
    _, m = quantized_pair()
    x = torch.randn(3, 64)
    for clone in (copy.deepcopy(m), torch.load(_saved(m), weights_only=False)):
        assert isinstance(clone.weight, Params4bit) and torch.equal(clone(x), m(x))
    shallow = copy.copy(m.weight)
    assert shallow.quant_state is m.weight.quant_state
    a, b = torch.chunk(m.weight, 2)
    assert isinstance(a, Params4bit) and a.quant_type == "nf4" and a.shape == (512, 1)
    assert all(isinstance(t, Params4bit) for t in m.weight.split(256))


def _saved(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return buf


def test_backward_matches_float_autograd():
    dense, m = quantized_pair()
    W = F.dequantize_4bit(m.weight, m.weight.quant_state)
    m.bias.requires_grad_(True)
    x = torch.randn(4, 64, requires_grad=True)
    g = torch.randn(4, 32)
    m(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    b2 = dense.bias.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, W, b2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=0.015, rtol=0.05)
    torch.testing.assert_close(m.bias.grad, b2.grad, atol=0.015, rtol=0.05)
    assert m.weight.grad is None


def test_import_alias():
    import kbit as bnb

    assert bnb.nn.Linear4bit is Linear4bit and kbit.nn.LinearNF4 is LinearNF4

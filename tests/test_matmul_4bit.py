"""kbit.matmul_4bit: forward against dense math, gradients against float autograd on the dequantized weight."""

from __future__ import annotations

import pytest
import torch

import kbit
import kbit.functional as F


def quantized(N=48, K=64, quant_type="nf4", nested=True, dtype=torch.float32):
    W = (torch.randn(N, K) / K**0.5).to(dtype)
    packed, state = F.quantize_4bit(W, quant_type=quant_type, compress_statistics=nested)
    return W, packed, state, F.dequantize_4bit(packed, state)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (2, 3, 64)])
def test_forward_matches_dequantized_linear(quant_type, nested, shape):
    _, packed, state, dense = quantized(quant_type=quant_type, nested=nested)
    x = torch.randn(shape)
    bias = torch.randn(48)
    y = kbit.matmul_4bit(x, packed.t(), state, bias=bias)
    assert y.shape == (*shape[:-1], 48) and y.dtype == x.dtype
    torch.testing.assert_close(y, x @ dense.t() + bias, atol=1e-5, rtol=1e-5)


def test_error_against_true_weight_within_spec():
    # SPEC §9: (M, N, K) = (8, 512, 256), W randn / sqrt(K), nested NF4: mean error < 0.115.
    W = torch.randn(512, 256) / 16
    packed, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    x = torch.randn(8, 256)
    err = (kbit.matmul_4bit(x, packed.t(), state) - x @ W.t()).abs().mean()
    assert err < 0.115


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_float_autograd(dtype):
    _, packed, state, dense = quantized(dtype=dtype)
    x = torch.randn(2, 5, 64, dtype=dtype, requires_grad=True)
    bias = torch.randn(48, dtype=dtype, requires_grad=True)
    y = kbit.matmul_4bit(x, packed.t(), state, bias=bias)
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    b2 = bias.detach().clone().requires_grad_()
    (torch.nn.functional.linear(x2, dense.to(dtype), b2)).backward(g)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.015, "rtol": 0.1}
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    torch.testing.assert_close(bias.grad, b2.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradient_against_float64(dtype):
    """grad_A of bf16 / f16 activations (on the CPU in float32 where that is the faster matmul) stays
    within the half dtype's rounding of the exact product with the dequantized weight."""
    _, packed, state, dense = quantized(N=96, K=128, dtype=dtype)
    x = torch.randn(70, 128, dtype=dtype, requires_grad=True)
    y = kbit.matmul_4bit(x, packed.t(), state)
    g = torch.randn_like(y)
    y.backward(g)
    want = g.double() @ dense.double()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), want, atol=0.02, rtol=2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_matmul_dtype(dtype):
    from kbit.functional.devices import cpu_matmul_dtype

    native = {torch.bfloat16: torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
              torch.float16: torch.cpu._is_amx_fp16_supported(), torch.float32: True}[dtype]
    assert cpu_matmul_dtype(dtype) == (dtype if native else torch.float32)


def test_out_argument_and_empty_input():
    _, packed, state, dense = quantized()
    x = torch.randn(3, 64)
    out = torch.empty(3, 48)
    assert kbit.matmul_4bit(x, packed, state, out=out) is out
    assert kbit.matmul_4bit(torch.empty(0, 64), packed, state).shape == (0, 48)


def test_transposed_quantization_warns():
    W = torch.randn(64, 48)  # quantized as [K, N]
    packed, state = F.quantize_4bit(W, quant_type="nf4")
    x = torch.randn(2, 64)
    with pytest.warns(DeprecationWarning, match="Re-quantize"):
        y = kbit.matmul_4bit(x, packed, state)
    torch.testing.assert_close(y, x @ F.dequantize_4bit(packed, state), atol=1e-5, rtol=1e-5)


def test_errors():
    _, packed, state, _ = quantized()
    with pytest.raises(ValueError, match="quant_state"):
        kbit.matmul_4bit(torch.randn(2, 64), packed, None)
    with pytest.raises(ValueError, match="in_features"):
        kbit.matmul_4bit(torch.randn(2, 63), packed, state)

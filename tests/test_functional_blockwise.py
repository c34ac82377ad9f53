"""kbit.functional 8-bit blockwise API: SPEC §9 error bounds, nesting, argument checking."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit.testing import tolerances as T


def errors(A, y):
    err = (A.float() - y.float()).abs()
    return err.mean().item(), (err / (A.float().abs() + 1e-8)).mean().item()


@pytest.mark.parametrize("blocksize", [64, 128, 256, 512, 1024, 2048, 4096])
@pytest.mark.parametrize("nested", [False, True])
def test_randn_roundtrip_within_spec(blocksize, nested):
    A = torch.randn(1024, 1024)
    q, state = F.quantize_blockwise(A, blocksize=blocksize, nested=nested)
    state = F.QuantState(**{k: getattr(state, k) for k in ("absmax", "code", "blocksize", "dtype", "offset", "state2")})
    abs_err, rel_err = errors(A, F.dequantize_blockwise(q, state))
    assert abs_err < T.BLOCKWISE_RANDN_ABS and rel_err < T.BLOCKWISE_RANDN_REL


@pytest.mark.parametrize("signed", [True, False])
def test_uniform_roundtrip_within_spec(signed):
    A = torch.rand(1024, 1024)
    code = F.create_dynamic_map(signed=signed)
    q, state = F.quantize_blockwise(A, code=code, blocksize=256)
    abs_err, _ = errors(A, F.dequantize_blockwise(q, state))
    assert abs_err < (T.BLOCKWISE_UNIFORM_SIGNED_ABS if signed else T.BLOCKWISE_UNIFORM_UNSIGNED_ABS)


def test_per_element_bound_and_dtype():
    A = torch.randn(3, 5000, dtype=torch.bfloat16)
    q, state = F.quantize_blockwise(A, blocksize=256)
    y = F.dequantize_blockwise(q, state)
    assert y.dtype == torch.bfloat16 and q.shape == A.shape and q.dtype == torch.uint8
    scale = state.absmax.repeat_interleave(256)[: A.numel()].view(A.shape)
    bound = T.ELEMENT_BOUND["dynamic_signed"] * scale + scale * 2**-7
    assert ((A.float() - y.float()).abs() <= bound).all()


def test_absmax_only_call_gives_float32():
    A = torch.randn(1000)
    q, state = F.quantize_blockwise(A, blocksize=64)
    y = F.dequantize_blockwise(q, absmax=state.absmax, blocksize=64)
    assert y.dtype == torch.float32 and torch.equal(y, F.dequantize_blockwise(q, state))
    out = torch.empty(1000, dtype=torch.float16)
    assert F.dequantize_blockwise(q, state, out=out) is out


def test_state_keeps_a_copy_of_the_code():
    code = F.create_dynamic_map()
    _, state = F.quantize_blockwise(torch.randn(100), code=code, blocksize=64)
    code.zero_()
    assert state.code.abs().max() == 1.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"A": torch.randint(0, 5, (10,))}, TypeError, "A must have dtype"),
        ({"blocksize": 0}, ValueError, "blocksize must be a positive int, got 0"),
        ({"blocksize": 64.0}, ValueError, "blocksize"),
        ({"code": torch.zeros(16)}, ValueError, "code must have 256 entries"),
        ({"code": torch.zeros(256, dtype=torch.float64)}, TypeError, "code must have dtype"),
        ({"code": torch.zeros(256, device="meta")}, ValueError, "code must be on A's device"),
        ({"A": torch.tensor([float("nan")])}, ValueError, "A must be finite"),
    ],
)
def test_quantize_errors(kwargs, error, match):
    args = {"A": torch.randn(10), **kwargs}
    with pytest.raises(error, match=match):
        F.quantize_blockwise(**args)


def test_dequantize_errors():
    q, state = F.quantize_blockwise(torch.randn(1000), blocksize=64)
    with pytest.raises(ValueError, match="pass quant_state, or absmax"):
        F.dequantize_blockwise(q)
    with pytest.raises(TypeError, match="A must have dtype"):
        F.dequantize_blockwise(q.to(torch.int8), state)
    with pytest.raises(ValueError, match="absmax must have at least 16 entries"):
        F.dequantize_blockwise(q, absmax=state.absmax[:3], blocksize=64)

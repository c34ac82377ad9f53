"""kbit.functional 4-bit API: SPEC §9 error bounds, argument checking, bitsandbytes quirks."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import formats
from kbit.testing import tolerances as T


def roundtrip_errors(A, **kw):
    packed, state = F.quantize_4bit(A, **kw)
    y = F.dequantize_4bit(packed, state)
    err = (A.float() - y.float()).abs()
    return err.mean().item(), (err / (A.float().abs() + 1e-8)).mean().item()


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", formats.FOURBIT_BLOCKSIZES)
@pytest.mark.parametrize("dtype", formats.FLOAT_DTYPES)
def test_roundtrip_error_within_spec(quant_type, blocksize, dtype):
    A = torch.randn(1024, 1024).to(dtype)
    abs_err, rel_err = roundtrip_errors(A, blocksize=blocksize, quant_type=quant_type)
    slack = 1 + (T.HALF_PRECISION_SLACK if dtype != torch.float32 else 0)
    assert abs_err < (T.ROUNDTRIP_4BIT_ABS[quant_type][blocksize] + T.SIGMAS * T.ROUNDTRIP_4BIT_SIGMA_ABS[blocksize]) * slack
    assert rel_err < (T.ROUNDTRIP_4BIT_REL[quant_type][blocksize] + T.SIGMAS * T.ROUNDTRIP_4BIT_SIGMA_REL[blocksize]) * slack


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 128])
def test_nested_statistics_within_spec(quant_type, blocksize):
    A = torch.randn(512, 512)
    abs_err, rel_err = roundtrip_errors(A, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
    assert abs_err < 0.11 and rel_err < 0.28


def test_nested_state_layout():
    packed, state = F.quantize_4bit(torch.randn(300, 400), quant_type="nf4", compress_statistics=True)
    nb = formats.num_blocks(300 * 400, 64)
    assert state.nested and state.absmax.dtype == torch.uint8 and state.absmax.shape == (nb,)
    assert state.state2.blocksize == 256 and state.state2.absmax.shape == (formats.num_blocks(nb, 256),)
    assert state.offset.dim() == 0 and state.offset.dtype == torch.float32


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 7), (4097,), (0,), (0, 5)])
@pytest.mark.parametrize("storage", [torch.uint8, torch.float32])
def test_shapes_dtypes_and_storage(shape, storage):
    n = torch.Size(shape).numel()
    if formats.packed_4bit_numel(n, storage) < 0:
        with pytest.raises(ValueError, match="quant_storage"):
            F.quantize_4bit(torch.randn(shape), quant_storage=storage)
        return
    A = torch.randn(shape, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(A, quant_storage=storage, quant_type="nf4")
    assert packed.dtype == storage and packed.shape == (formats.packed_4bit_numel(n, storage), 1)
    y = F.dequantize_4bit(packed, state)
    assert y.shape == shape and y.dtype == torch.bfloat16
    assert state.shape == shape and state.dtype == torch.bfloat16


def test_identity_and_zero_blocks_are_exact():
    for quant_type in formats.QUANT_TYPES:
        I = torch.eye(128)
        packed, state = F.quantize_4bit(I, quant_type=quant_type)
        assert torch.equal(F.dequantize_4bit(packed, state), I)
        Z = torch.zeros(3, 64)
        assert torch.equal(F.dequantize_4bit(*F.quantize_4bit(Z, quant_type=quant_type)), Z)


def test_non_contiguous_input_equals_contiguous():
    A = torch.randn(64, 96).t()
    p1, s1 = F.quantize_4bit(A, quant_type="nf4")
    p2, s2 = F.quantize_4bit(A.contiguous(), quant_type="nf4")
    assert torch.equal(p1, p2) and s1 == s2


def test_one_by_x_input_is_transposed_on_dequantize():
    W = torch.randn(8, 16)
    packed, state = F.quantize_4bit(W, quant_type="nf4")
    assert F.dequantize_4bit(packed.t(), state).shape == (16, 8)
    assert torch.equal(F.dequantize_4bit(packed.t(), state), F.dequantize_4bit(packed, state).t())


def test_without_state_needs_absmax_and_out():
    W = torch.randn(4, 64)
    packed, state = F.quantize_4bit(W, quant_type="fp4")
    out = torch.empty(4, 64)
    y = F.dequantize_4bit(packed, absmax=state.absmax, out=out, quant_type="fp4")
    assert y is out and torch.equal(out, F.dequantize_4bit(packed, state))
    with pytest.raises(ValueError, match="absmax and out"):
        F.dequantize_4bit(packed, absmax=state.absmax)


def test_nf4_fp4_aliases():
    A = torch.randn(10, 64)
    p, s = F.quantize_nf4(A)
    assert s.quant_type == "nf4" and torch.equal(F.dequantize_nf4(p, s), F.dequantize_4bit(p, s))
    p, s = F.quantize_fp4(A, blocksize=128)
    assert s.quant_type == "fp4" and s.blocksize == 128 and torch.equal(F.dequantize_fp4(p, s), F.dequantize_4bit(p, s))


def test_deprecated_out_and_absmax_are_filled():
    A = torch.randn(4, 64)
    out = torch.empty(128, 1, dtype=torch.uint8)
    absmax = torch.empty(4)
    with pytest.warns(FutureWarning):
        packed, state = F.quantize_4bit(A, out=out, absmax=absmax)
    assert packed is out and state.absmax is absmax


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"A": torch.randn(64).to(torch.int32)}, TypeError, "A must have dtype"),
        ({"A": [1.0, 2.0]}, TypeError, "A must be a torch.Tensor"),
        ({"blocksize": 48}, ValueError, "blocksize must be a power of two in \\[32, 4096\\], got 48"),
        ({"blocksize": 8192}, ValueError, "blocksize"),
        ({"quant_type": "int4"}, ValueError, "quant_type must be 'nf4' or 'fp4'"),
        ({"quant_storage": torch.int32}, TypeError, "quant_storage"),
        ({"A": torch.tensor([1.0, float("nan")])}, ValueError, "A must be finite"),
        ({"A": torch.tensor([1.0, float("inf")])}, ValueError, "A must be finite"),
        ({"A": torch.randn(5), "quant_storage": torch.bfloat16}, ValueError, "multiple of 4"),
    ],
)
def test_quantize_errors(kwargs, error, match):
    args = {"A": torch.randn(64), **kwargs}
    with pytest.raises(error, match=match):
        F.quantize_4bit(**args)


def test_dequantize_errors():
    packed, state = F.quantize_4bit(torch.randn(8, 64), quant_type="nf4")
    with pytest.raises(TypeError, match="A must have dtype"):
        F.dequantize_4bit(packed.to(torch.int32), state)
    with pytest.raises(TypeError, match="quant_state must be a QuantState"):
        F.dequantize_4bit(packed, quant_state={"absmax": state.absmax})
    with pytest.raises(ValueError, match="holds 128 bytes"):
        F.dequantize_4bit(packed[:128], state)
    bad = F.QuantState(absmax=state.absmax[:3], shape=state.shape, dtype=state.dtype, blocksize=64, code=state.code, quant_type="nf4")
    with pytest.raises(ValueError, match="absmax must have 8 entries"):
        F.dequantize_4bit(packed, bad)
    with pytest.raises(ValueError, match="out must be on"):
        F.dequantize_4bit(packed, state, out=torch.empty(8, 64, device="meta"))


def test_gemv_4bit_functional():
    W = torch.randn(64, 128)
    packed, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    x = torch.randn(1, 128)
    dense = F.dequantize_4bit(packed, state)
    torch.testing.assert_close(F.gemv_4bit(x, packed.t(), state=state), x @ dense.t(), atol=1e-5, rtol=1e-5)
    out = torch.empty(1, 64)
    assert F.gemv_4bit(x, packed, out=out, state=state) is out
    with pytest.raises(ValueError, match="state"):
        F.gemv_4bit(x, packed)
    with pytest.raises(ValueError, match="leading dims multiplying to 1"):
        F.gemv_4bit(torch.randn(2, 128), packed, state=state)

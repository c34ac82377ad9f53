"""Interop: the LLM.int8() ops reproduce bitsandbytes 0.50.2's Linear8bitLt(256, 64, threshold=6.0) fixture.

The fixture's ``__expected_y`` was produced by a module in training mode on CPU, i.e. by SPEC §5's
MatMul8bitFp path (``linear(x, CB * SCB / 127 in x.dtype, bias)``): that reproduces it bit for bit, while
the int8 MatMul8bitLt path (the CUDA / eval route) lands within SPEC §9's Linear8bitLt-vs-float bound.
"""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit.testing import tolerances as T

from .conftest import load_fixture

#: The fixture module's threshold (Linear8bitLt(..., threshold=6.0)).
THRESHOLD = 6.0


@pytest.fixture(scope="module")
def sd():
    return load_fixture("linear8bitlt_thr6")


def test_weight_quantization_is_bit_exact(sd):
    W = sd["__source_weight_fp16"]
    CB, SCB, cols = F.int8_vectorwise_quant(W)
    assert cols is None
    assert torch.equal(CB, sd["weight"])
    assert torch.equal(SCB, sd["SCB"])
    assert sd["weight_format"].item() == 0


def test_float_path_reproduces_expected_y(sd):
    """MatMul8bitFp (training mode on CPU): dequantized weight in f16, then linear."""
    x = sd["__input_x"]
    W = F.int8_vectorwise_dequant(sd["weight"], sd["SCB"]).to(x.dtype)
    y = torch.nn.functional.linear(x, W, sd["bias"])
    assert torch.equal(y, sd["__expected_y"])


def test_int8_path_matches_within_spec(sd):
    """MatMul8bitLt forward with threshold 6.0, from the ops: quantize x.half() with outlier columns,
    int8 product of the non-outlier part plus the float product of the outlier columns, plus bias."""
    x = sd["__input_x"]
    CB, SCB = sd["weight"], sd["SCB"]
    CA, SCA, cols = torch.ops.kbit.int8_vectorwise_quant(x.half(), THRESHOLD)
    assert cols.tolist() == [3], "the fixture's input has one outlier column"
    assert CA[:, 3].eq(0).all()
    y, subA = torch.ops.kbit.int8_mixed_scaled_mm(x, CA, CB, SCA, SCB, cols, sd["bias"])
    assert torch.equal(subA, x[:, cols])
    assert y.dtype == x.dtype and y.shape == sd["__expected_y"].shape
    err = (y.float() - sd["__expected_y"].float()).abs()
    assert (err > T.INT8_LINEAR_VS_FP_ATOL).float().mean().item() < T.INT8_LINEAR_VS_FP_FRACTION
    assert err.max().item() <= T.INT8_LINEAR_VS_FP_MAX

"""Conformance: kbit::int8_mixed_scaled_mm (SPEC §1, §5): int8 product plus the float product of outlier columns."""

from __future__ import annotations

import pytest
import torch

from kbit import backends

from .int8_asserts import assert_float_near_oracle
from .tolerances import INT8_DEQUANT_TOL, INT8_MIXED_ULPS, tol

OP = "int8_mixed_scaled_mm"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
#: Outlier threshold of the tests (exact in every float dtype).
THRESHOLD = 3.0


def oracle(A, CA, CB, SCA, SCB, cols, bias):
    """float64: CA @ CB.T scaled + bias + A[:, cols] @ (CB[:, cols] * SCB / 127).T, and the summed |terms|."""
    K = CA.shape[-1]
    acc = (CA.to("cpu", torch.int64).reshape(-1, K) @ CB.to("cpu", torch.int64).t()).to(torch.float64)
    scb = SCB.to("cpu", torch.float64)
    out = acc * SCA.to("cpu", torch.float64)[:, None] * scb[None, :] / 127.0**2
    mag = out.abs()
    if bias is not None:
        out = out + bias.to("cpu", torch.float64)
        mag = mag + bias.to("cpu", torch.float64).abs()
    if cols is not None and cols.numel():
        c = cols.cpu()
        subA = A.to("cpu", torch.float64).reshape(-1, K)[:, c]
        subB = CB.to("cpu", torch.float64)[:, c] * scb[:, None] / 127.0
        out = out + subA @ subB.t()
        mag = mag + subA.abs() @ subB.abs().t()
    shape = (*CA.shape[:-1], CB.shape[0])
    return out.view(shape), mag.view(shape)


def make_inputs(a_shape, N, dtype, device, threshold, bias=True):
    """Activations with outliers in columns 1 and K-1 (when K allows), quantized by the reference."""
    A = torch.randn(a_shape)
    K = a_shape[-1]
    if threshold and K > 2:
        M = A.view(-1, K)
        M[0, 1] = 4 * threshold
        M[-1, K - 1] = -2 * threshold
    A = A.to(device=device, dtype=dtype)
    W = (torch.randn(N, K) / K**0.5).to(device=device, dtype=dtype)
    b = torch.randn(N).to(device=device, dtype=dtype) if bias else None
    return A, W, b


def quantize(provider, A, W, threshold):
    CA, SCA, cols = provider.reference("int8_vectorwise_quant", A, threshold)
    CB, SCB, _ = provider.reference("int8_vectorwise_quant", W, 0.0)
    return CA, CB, SCA, SCB, cols


def check(provider, A, CA, CB, SCA, SCB, cols, bias):
    args = (A, CA, CB, SCA, SCB, cols, bias)
    before = [t.clone() if t is not None else None for t in args]
    out, subA = provider(OP, *args)
    assert all(x is None or torch.equal(x, y) for x, y in zip(before, args)), "inputs were modified"
    K = CA.shape[-1]
    rows = CA.numel() // K
    assert out.dtype == A.dtype and out.shape == (*CA.shape[:-1], CB.shape[0]) and out.device == A.device
    want, mag = oracle(A, CA, CB, SCA, SCB, cols, bias)
    assert_float_near_oracle(out, want, mag, compute_dtype=A.dtype, ulps=INT8_MIXED_ULPS)
    n_out = 0 if cols is None else cols.numel()
    assert subA.dtype == A.dtype and subA.shape == (rows, n_out)
    if n_out:
        assert torch.equal(subA, A.reshape(rows, K)[:, cols]), "subA is exactly A's outlier columns"
    if not provider.is_reference:
        ref_out, ref_sub = provider.reference(OP, *args)
        torch.testing.assert_close(out, ref_out, **tol(INT8_DEQUANT_TOL, A.dtype))
        assert torch.equal(subA, ref_sub)
    return out, subA


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("a_shape,N", [((1, 1), 1), ((1, 7), 3), ((4, 33), 5), ((2, 3, 65), 8), ((5, 1025), 2)], ids=str)
def test_matches_oracle(provider, device, a_shape, N, dtype, threshold):
    A, W, bias = make_inputs(a_shape, N, dtype, device, threshold)
    CA, CB, SCA, SCB, cols = quantize(provider, A, W, threshold)
    if threshold and a_shape[-1] > 2:
        assert cols.numel() >= 2
    check(provider, A, CA, CB, SCA, SCB, cols, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_without_outliers_is_scaled_mm(provider, device, dtype):
    A, W, bias = make_inputs((3, 2, 40), 6, dtype, device, 0.0)
    CA, CB, SCA, SCB, _ = quantize(provider, A, W, 0.0)
    plain = provider.reference("int8_scaled_mm", CA, CB, SCA, SCB, bias, dtype)
    empty = torch.empty(0, dtype=torch.int64, device=device)
    for cols in (None, empty):
        out, subA = check(provider, A, CA, CB, SCA, SCB, cols, bias)
        assert subA.shape == (6, 0)
        if provider.is_reference:
            assert torch.equal(out, plain)


def test_without_bias(provider, device):
    A, W, _ = make_inputs((4, 33), 5, torch.float16, device, THRESHOLD, bias=False)
    check(provider, A, *quantize(provider, A, W, THRESHOLD), None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_single_row_with_outlier(provider, device, dtype):
    A, W, bias = make_inputs((1, 16), 4, dtype, device, 0.0)
    A[0, 5] = 10.0
    CA, CB, SCA, SCB, cols = quantize(provider, A, W, THRESHOLD)
    assert cols.tolist() == [5] and CA[0, 5].item() == 0
    check(provider, A, CA, CB, SCA, SCB, cols, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outlier_decomposition_tracks_float_product(provider, device, dtype):
    """Large outliers contribute through the float path: the result stays near A @ W.T + bias."""
    A, W, bias = make_inputs((8, 64), 16, dtype, device, THRESHOLD)
    A[:, 7] = 50.0
    CA, CB, SCA, SCB, cols = quantize(provider, A, W, THRESHOLD)
    out, _ = check(provider, A, CA, CB, SCA, SCB, cols, bias)
    Wd = CB.double() * SCB.double()[:, None] / 127.0
    true = A.double() @ Wd.t() + bias.double()
    step = SCA.double()[:, None] / 127.0 * Wd.abs().sum(1)[None, :]  # at most half a step per element, per row
    assert ((out.double() - true).abs() <= 0.5 * step + INT8_MIXED_ULPS * torch.finfo(dtype).eps * (true.abs() + 1)).all()


@pytest.mark.parametrize("outliers", [False, True])
def test_opcheck(provider, device, outliers):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    threshold = THRESHOLD if outliers else 0.0
    A, W, bias = make_inputs((2, 3, 33), 7, torch.float16, device, threshold)
    CA, CB, SCA, SCB, cols = quantize(provider, A, W, threshold)
    torch.library.opcheck(torch.ops.kbit.int8_mixed_scaled_mm.default, (A, CA, CB, SCA, SCB, cols, bias))
    torch.library.opcheck(torch.ops.kbit.int8_mixed_scaled_mm.default, (A, CA, CB, SCA, SCB), {"outlier_cols": cols})

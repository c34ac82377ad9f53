"""Conformance: kbit::int8_double_quant (SPEC §1, §5): row-wise and column-wise int8 with shared outliers."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

from .int8_asserts import assert_int8_codes, assert_same_codes

OP = "int8_double_quant"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(1,), (1, 1), (17,), (1, 7), (3, 7), (4, 33), (2, 3, 17), (5, 4097), (0, 16)]
#: Outlier threshold of the tests (exact in every float dtype).
THRESHOLD = 3.0


def oracle(A: torch.Tensor, threshold: float):
    """float64 SPEC §5: exact row and column quotients (0 where codes are 0), f32 row/col stats, outlier cols."""
    K = A.shape[-1]
    X = A.detach().to("cpu", torch.float64).reshape(-1, K)
    rows = X.shape[0]
    cols = None
    if threshold > 0:
        mask = X.abs() >= threshold
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        X = X.masked_fill(mask, 0.0)
    row_stats = X.abs().amax(dim=1) if rows else X.new_zeros(0)
    col_stats = X.abs().amax(dim=0) if rows else X.new_zeros(K)
    q_row = X * 127.0 / torch.where(row_stats == 0, 1.0, row_stats)[:, None]
    if cols is not None and rows > 1:
        q_row[:, cols] = 0.0
    q_col = X * 127.0 / torch.where(col_stats == 0, 1.0, col_stats)[None, :]
    return q_row.view(A.shape), q_col.view(A.shape), row_stats.float(), col_stats.float(), cols


def make_input(shape, dtype, device, threshold):
    A = torch.randn(shape)
    if threshold > 0 and A.numel() >= 4:
        M = A.view(-1, shape[-1])
        M[0, -1] = 2 * threshold
        M[-1, 0] = -threshold
    return A.to(device=device, dtype=dtype)


def check(provider, A, threshold):
    before = A.clone()
    got = provider(OP, A, threshold)
    assert torch.equal(A, before), "input was modified"
    CA, CAt, row_stats, col_stats, cols = got
    q_row, q_col, want_rs, want_cs, want_cols = oracle(A, threshold)
    assert_int8_codes(CA, q_row, "row codes")
    assert_int8_codes(CAt, q_col, "column codes")
    assert row_stats.dtype == col_stats.dtype == torch.float32
    assert torch.equal(row_stats.cpu(), want_rs), "row_stats must be the exact row absmax"
    assert torch.equal(col_stats.cpu(), want_cs), "col_stats must be the exact column absmax"
    assert_same_codes(None if cols is None else cols.cpu(), want_cols, "outlier_cols")
    # the row half is int8_vectorwise_quant of the same provider
    if provider.has("int8_vectorwise_quant"):
        for name, a, b in zip(("CA", "row_stats", "cols"), got[:1] + got[2:3] + got[4:], provider("int8_vectorwise_quant", A, threshold)):
            assert_same_codes(a, b, name)
    if not provider.is_reference:
        for name, a, b in zip(("CA", "CAt", "row_stats", "col_stats", "cols"), got, provider.reference(OP, A, threshold)):
            assert_same_codes(a, b, name)
    return got


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(provider, device, shape, dtype, threshold):
    check(provider, make_input(shape, dtype, device, threshold), threshold)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outliers_in_both_directions(provider, device, dtype):
    A = torch.tensor([[0.5, 7.0, -1.0, 2.0], [1.0, 0.5, 0.5, -3.0], [-2.0, 1.0, 0.75, 0.5]], dtype=dtype, device=device)
    CA, CAt, row_stats, col_stats, cols = check(provider, A, THRESHOLD)
    assert cols.tolist() == [1, 3]
    assert CA[:, cols].eq(0).all(), "row codes: whole outlier columns are 0"
    assert CAt[0, 1].item() == 0 and CAt[1, 3].item() == 0, "column codes: outliers are 0"
    assert CAt[2, 1].item() == 127 and CAt[0, 3].item() == 127, "column codes keep non-outliers of outlier columns"
    assert col_stats.tolist() == [2.0, 1.0, 1.0, 2.0]
    assert row_stats.tolist() == [2.0, 1.0, 2.0]


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_zero_rows_and_columns(provider, device, threshold):
    A = torch.randn(5, 6, device=device)
    A[2] = 0.0
    A[:, 4] = 0.0
    CA, CAt, row_stats, col_stats, _ = check(provider, A, threshold)
    assert row_stats[2].item() == 0 and CA[2].eq(0).all()
    assert col_stats[4].item() == 0 and CAt[:, 4].eq(0).all()


def test_single_row_with_threshold(provider, device):
    A = torch.tensor([[-1.0, 8.0, 0.5, 2.0]], device=device)
    CA, CAt, _, col_stats, cols = check(provider, A, THRESHOLD)
    assert cols.tolist() == [1]
    assert CA.tolist() == [[-64, 0, 32, 127]]
    assert CAt.tolist() == [[-127, 0, 127, 127]] and col_stats.tolist() == [1.0, 0.0, 0.5, 2.0]


@pytest.mark.parametrize("K", [6, 45])
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_non_finite_columns(provider, device, threshold, K):
    # a NaN column, +Inf and -Inf columns, over enough rows and columns for the vector kernels (and a tail)
    torch.manual_seed(K)
    A = torch.randn(37, K).clamp(-2.5, 2.5)  # no outliers but the planted ones
    A[5, 0] = float("nan")
    A[7, 1] = float("inf")
    A[9, 2] = -float("inf")
    CA, CAt, row_stats, col_stats, cols = provider(OP, A.to(device), threshold)
    CAt, col_stats = CAt.cpu(), col_stats.cpu()
    assert col_stats[0].isnan() and CAt[:, 0].eq(0).all(), "a NaN column: NaN absmax, codes 0"
    _, q_col, _, want_cs, _ = oracle(A[:, 3:], threshold)
    assert torch.equal(col_stats[3:], want_cs)
    assert_int8_codes(CAt[:, 3:], q_col)
    if threshold == 0:
        # Inf absmax: finite / Inf is 0, Inf / Inf is NaN, coded 0
        assert col_stats[1:3].tolist() == [float("inf"), float("inf")] and CAt[:, 1:3].eq(0).all()
    else:
        # +-Inf are outliers: left out of the column absmax and coded 0, the rest of their columns coded
        assert torch.equal(cols.cpu(), torch.tensor([1, 2]))
        assert torch.isfinite(col_stats[1:]).all()
        assert CAt[7, 1] == 0 and CAt[9, 2] == 0
        _, q12, _, want12, _ = oracle(A[:, 1:3], threshold)
        assert torch.equal(col_stats[1:3], want12)
        assert_int8_codes(CAt[:, 1:3], q12)
    if not provider.is_reference:
        ref = provider.reference(OP, A, threshold)
        assert_same_codes(CA, ref[0].cpu(), "CA")
        assert_same_codes(CAt, ref[1].cpu(), "CAt")
        for got, want in ((row_stats.cpu(), ref[2].cpu()), (col_stats, ref[3].cpu())):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_non_contiguous_through_functional(provider, device, threshold):
    A = make_input((21, 8), torch.bfloat16, device, threshold).t()
    assert not A.is_contiguous()
    CA, CAt, row_stats, col_stats, cols = F.int8_double_quant(A, threshold=threshold)
    q_row, q_col, want_rs, want_cs, want_cols = oracle(A, threshold)
    assert_int8_codes(CA, q_row)
    assert_int8_codes(CAt, q_col)
    assert torch.equal(row_stats.cpu(), want_rs) and torch.equal(col_stats.cpu(), want_cs)
    assert_same_codes(cols, want_cols, "outlier_cols")


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_opcheck(provider, device, threshold):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A = make_input((2, 5, 33), torch.float16, device, threshold)
    torch.library.opcheck(torch.ops.kbit.int8_double_quant.default, (A, threshold))

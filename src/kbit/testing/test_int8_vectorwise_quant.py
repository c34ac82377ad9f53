"""Conformance: kbit::int8_vectorwise_quant (SPEC §5) against a float64 oracle and the reference."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

from .int8_asserts import assert_int8_codes, assert_same_codes

OP = "int8_vectorwise_quant"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(1,), (1, 1), (17,), (1, 7), (3, 7), (4, 33), (2, 3, 17), (5, 4097), (0, 16)]
#: Outlier threshold of the tests; it and THRESHOLD - 1/32 are exact in every float dtype.
THRESHOLD = 3.0
JUST_BELOW = THRESHOLD - 1 / 32


def oracle(A: torch.Tensor, threshold: float):
    """float64 SPEC §5: (exact quotient x*127/absmax with zeroed codes as 0, f32 stats, outlier cols or None)."""
    K = A.shape[-1]
    X = A.detach().to("cpu", torch.float64).reshape(-1, K)
    rows = X.shape[0]
    if threshold > 0:
        mask = X.abs() >= threshold
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        X = X.masked_fill(mask, 0.0)
    else:
        cols = None
    stats = X.abs().amax(dim=1) if rows else X.new_zeros(0)
    q = X * 127.0 / torch.where(stats == 0, 1.0, stats)[:, None]
    if cols is not None and rows > 1:
        q[:, cols] = 0.0
    return q.view(A.shape), stats.to(torch.float32), cols


def make_input(shape, dtype, device, threshold):
    """randn with, for threshold > 0, an outlier, an element equal to the threshold and one just below it."""
    A = torch.randn(shape, dtype=torch.float32)
    if threshold > 0 and A.numel() >= 4:
        M = A.view(-1, shape[-1])
        M[0, -1] = 2 * threshold
        M[-1, 0] = -threshold
        M[M.shape[0] // 2, M.shape[1] // 2] = threshold - 1 / 32
    return A.to(device=device, dtype=dtype)


def check(provider, A, threshold):
    before = A.clone()
    CA, stats, cols = provider(OP, A, threshold)
    assert torch.equal(A, before), "input was modified"
    q, want_stats, want_cols = oracle(A, threshold)
    assert CA.device == A.device and stats.device == A.device
    assert_int8_codes(CA, q)
    assert stats.dtype == torch.float32 and stats.shape == want_stats.shape
    assert torch.equal(stats.cpu(), want_stats), "row_stats must be the exact row absmax"
    if threshold == 0:
        assert cols is None
    else:
        assert cols.dtype == torch.int64 and cols.dim() == 1
        assert torch.equal(cols.cpu(), want_cols)
    if not provider.is_reference:
        ref = provider.reference(OP, A, threshold)
        for name, got, want in zip(("CA", "row_stats", "outlier_cols"), (CA, stats, cols), ref):
            assert_same_codes(got, want, name)
    return CA, stats, cols


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(provider, device, shape, dtype, threshold):
    check(provider, make_input(shape, dtype, device, threshold), threshold)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outlier_columns_are_zeroed(provider, device, dtype):
    A = torch.tensor(
        [[0.5, 7.0, -1.0, 0.25, 2.0], [1.0, 0.5, 0.5, -3.0, 1.5], [-2.0, 1.0, 0.75, 0.5, 2.96875]], dtype=dtype, device=device
    )
    CA, stats, cols = check(provider, A, THRESHOLD)
    assert cols.tolist() == [1, 3], "ascending unique columns; |x| == threshold is an outlier"
    assert CA[:, cols].eq(0).all(), "whole outlier columns code 0 when there is more than one row"
    assert stats.tolist() == [2.0, 1.5, 2.96875], "outliers are excluded from the row absmax"
    assert CA[2, 4].item() == 127 and CA[0, 4].item() == 127


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_single_row_zeroes_only_outliers(provider, device, dtype):
    A = torch.tensor([[-1.0, 8.0, 0.5, -3.0, 2.0]], dtype=dtype, device=device)
    CA, stats, cols = check(provider, A, THRESHOLD)
    assert cols.tolist() == [1, 3]
    assert CA.tolist() == [[-64, 0, 32, 0, 127]], "rows == 1: only the outlier elements code 0"
    assert stats.tolist() == [2.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_ties_round_half_to_even(provider, device, dtype):
    # absmax 127 makes x * 127 / absmax == x, so these are exact .5 ties in every dtype
    A = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5]], dtype=dtype, device=device)
    CA, _, _ = check(provider, A, 0.0)
    assert CA.tolist() == [[127, 0, 2, 2, 0, -2, 4]]


def test_no_outliers_gives_empty_columns(provider, device):
    A = torch.full((3, 4), 0.5, device=device)
    _, _, cols = check(provider, A, THRESHOLD)
    assert cols is not None and cols.numel() == 0 and cols.dtype == torch.int64


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_zero_rows_give_zero_stats_and_codes(provider, device, threshold):
    A = torch.randn(4, 9, device=device)
    A[1] = 0.0
    A[3] = 0.0
    A[3, 2] = 5.0  # with a threshold, row 3 holds only an outlier
    CA, stats, _ = check(provider, A, threshold)
    assert stats[1].item() == 0.0 and CA[1].eq(0).all()
    if threshold:
        assert stats[3].item() == 0.0 and CA[3].eq(0).all()


@pytest.mark.parametrize("value", [-2.5, 1e-3, 0.0])
def test_single_element(provider, device, value):
    CA, stats, _ = check(provider, torch.tensor([value], device=device), 0.0)
    assert CA.tolist() == [0 if value == 0 else (127 if value > 0 else -127)]
    assert stats.tolist() == [abs(torch.tensor(value).item())]


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_non_contiguous_through_functional(provider, device, threshold):
    base = make_input((33, 6), torch.float16, device, threshold)
    A = base.t()
    assert not A.is_contiguous()
    before = A.clone()
    CA, stats, cols = F.int8_vectorwise_quant(A, threshold=threshold)
    assert torch.equal(A, before)
    q, want_stats, want_cols = oracle(A, threshold)
    assert_int8_codes(CA, q)
    assert torch.equal(stats.cpu(), want_stats)
    assert_same_codes(cols, want_cols, "outlier_cols")


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("K", [64, 100], ids=lambda k: f"K{k}")
def test_non_finite_rows(provider, device, threshold, K):
    # rows long enough for vector kernels (and a tail): a NaN row, +Inf and -Inf rows, a finite row
    torch.manual_seed(K)
    A = torch.randn(4, K).clamp(-2.5, 2.5)  # no outliers but the planted ones
    A[0, 5] = float("nan")
    A[1, 7] = float("inf")
    A[2, K - 1] = -float("inf")
    CA, stats, cols = provider(OP, A.to(device), threshold)
    CA, stats = CA.cpu(), stats.cpu()
    assert stats[0].isnan() and CA[0].eq(0).all(), "a NaN row: NaN absmax, codes 0"
    q, want_stats, _ = oracle(A[3:], threshold)
    assert torch.equal(stats[3:], want_stats)
    if threshold == 0:
        # Inf absmax: finite / Inf is 0, Inf / Inf is NaN, coded 0
        assert stats[1:3].tolist() == [float("inf"), float("inf")] and CA[1:3].eq(0).all()
        assert_int8_codes(CA[3:], q)
    else:
        # +-Inf are outliers: left out of the absmax, their columns coded 0 in every row
        assert torch.equal(cols.cpu(), torch.tensor([7, K - 1]))
        assert torch.isfinite(stats[1:]).all()
        assert CA[:, [7, K - 1]].eq(0).all()
    if not provider.is_reference:
        ref = provider.reference(OP, A, threshold)
        assert_same_codes(CA, ref[0].cpu(), "CA")
        ref_stats = ref[1].cpu()
        assert torch.equal(stats.isnan(), ref_stats.isnan())
        assert torch.equal(stats.nan_to_num(0.0), ref_stats.nan_to_num(0.0))


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
def test_opcheck(provider, device, threshold):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A = make_input((4, 2, 33), torch.float16, device, threshold)
    torch.library.opcheck(torch.ops.kbit.int8_vectorwise_quant.default, (A, threshold))

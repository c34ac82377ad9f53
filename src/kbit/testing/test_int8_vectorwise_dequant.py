"""Conformance: kbit::int8_vectorwise_dequant (SPEC §1, §5): ``A * stats[r] / 127`` in float32."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

from .int8_asserts import assert_float_near_oracle
from .tolerances import EPS, INT8_DEQUANT_TOL, INT8_ORACLE_F32_ULPS, INT8_QUANT_TIE_ULPS, tol

OP = "int8_vectorwise_dequant"
SHAPES = [(1,), (1, 1), (17,), (3, 7), (4, 33), (2, 3, 17), (5, 4097), (0, 16)]


def oracle(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    K = A.shape[-1]
    X = A.to("cpu", torch.float64).reshape(-1, K)
    return (X * stats.to("cpu", torch.float64)[:, None] / 127.0).view(A.shape)


def make_codes(shape, device):
    """Random int8 codes covering the full range, including -128, plus per-row positive stats (one row 0)."""
    A = torch.randint(-128, 128, shape, dtype=torch.int8)
    if A.numel():
        A.view(-1)[0] = -128
        A.view(-1)[-1] = 127
    rows = A.numel() // shape[-1]
    stats = torch.rand(rows) * 10 + 1e-3
    if rows > 2:
        stats[1] = 0.0
    return A.to(device), stats.to(device)


def check(provider, A, stats):
    before = (A.clone(), stats.clone())
    out = provider(OP, A, stats)
    assert torch.equal(A, before[0]) and torch.equal(stats, before[1]), "inputs were modified"
    assert out.dtype == torch.float32 and out.shape == A.shape and out.device == A.device
    want = oracle(A, stats)
    assert_float_near_oracle(out, want, want.abs())
    if not provider.is_reference:
        ref = provider.reference(OP, A, stats)
        torch.testing.assert_close(out, ref, **tol(INT8_DEQUANT_TOL, torch.float32))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(provider, device, shape):
    check(provider, *make_codes(shape, device))


def test_zero_stats_give_zeros(provider, device):
    A, stats = make_codes((4, 8), device)
    stats[2] = 0.0
    out = check(provider, A, stats)
    assert out[2].eq(0).all()


def test_extremes_of_code_range(provider, device):
    A = torch.tensor([[-128, -127, 0, 1, 127]], dtype=torch.int8, device=device)
    stats = torch.tensor([127.0], device=device)
    out = check(provider, A, stats)
    assert out.tolist() == [[-128.0, -127.0, 0.0, 1.0, 127.0]], "stats 127 dequantizes codes to themselves"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 33)], ids=str)
def test_round_trip_within_half_step(provider, device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    CA, stats, _ = provider.reference("int8_vectorwise_quant", x, 0.0)
    y = check(provider, CA, stats)
    absmax = stats.reshape(-1, 1).double().cpu()
    err = (y.double().cpu() - x.double().cpu()).reshape(-1, shape[-1]).abs()
    # half a quantization step, widened by the tie window of the codes, plus float32 dequant rounding
    u = EPS[torch.float32]
    bound = absmax / 127.0 * (0.5 + INT8_QUANT_TIE_ULPS * 127 * u) + INT8_ORACLE_F32_ULPS * u * absmax
    assert (err <= bound).all()


def test_non_contiguous_through_functional(provider, device):
    A, stats = make_codes((9, 5), device)
    At = A.t()
    col_stats = torch.rand(5, device=device) + 0.1
    out = F.int8_vectorwise_dequant(At, col_stats.view(5, 1))
    want = oracle(At, col_stats)
    assert_float_near_oracle(out, want, want.abs())


def test_opcheck(provider, device):
    if provider.backend != backends.provider(OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A, stats = make_codes((2, 3, 17), device)
    torch.library.opcheck(torch.ops.kbit.int8_vectorwise_dequant.default, (A, stats))

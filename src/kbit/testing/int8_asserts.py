"""Assertions shared by the int8 conformance tests; each test computes its own float64 oracle."""

from __future__ import annotations

import torch

from . import tolerances as T


def assert_int8_codes(codes: torch.Tensor, exact: torch.Tensor, what: str = "codes") -> None:
    """``codes`` (int8) vs ``exact`` = the float64 quotient ``x * 127 / absmax`` (0 where SPEC codes 0).

    Every code is within 1 of ``round_half_even(exact)`` and equal to it unless ``exact`` lies within
    ``INT8_QUANT_TIE_ULPS`` float32 ulps (relative) of a .5 boundary, where float32 evaluation order decides.
    """
    assert codes.dtype == torch.int8, f"{what}: dtype {codes.dtype}"
    assert codes.shape == exact.shape, f"{what}: shape {tuple(codes.shape)} != {tuple(exact.shape)}"
    exact = exact.to("cpu", torch.float64)
    got = codes.to("cpu", torch.float64)
    want = torch.round(exact)
    diff = (got - want).abs()
    far = diff > 1
    assert not bool(far.any()), f"{what}: {int(far.sum())} codes off by more than 1 from round(x * 127 / absmax)"
    near_tie = ((exact - exact.floor()) - 0.5).abs() <= T.INT8_QUANT_TIE_ULPS * T.EPS[torch.float32] * exact.abs()
    bad = (diff > 0) & ~near_tie
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} codes differ from round(x * 127 / absmax) away from a tie, "
        f"e.g. exact {exact[bad][:4].tolist()} got {got[bad][:4].tolist()}"
    )


def assert_float_near_oracle(
    out: torch.Tensor,
    oracle: torch.Tensor,
    magnitude: torch.Tensor,
    what: str = "output",
    compute_dtype: torch.dtype = torch.float32,
    ulps: float = T.INT8_ORACLE_F32_ULPS,
) -> None:
    """``out`` (any float dtype) vs a float64 ``oracle``: ``ulps`` roundings in ``compute_dtype`` of
    ``magnitude`` (the summed |terms|) plus one rounding to ``out.dtype`` (subnormal spacing included)."""
    dtype = out.dtype
    oracle = oracle.to("cpu", torch.float64)
    got = out.to("cpu", torch.float64)
    info = torch.finfo(dtype)
    bound = (
        ulps * T.EPS[compute_dtype] * magnitude.to("cpu", torch.float64)
        + T.EPS[dtype] * oracle.abs()
        + info.smallest_normal * T.EPS[dtype]
    )
    err = (got - oracle).abs()
    bad = ~(err <= bound)
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {err.numel()} elements outside the rounding bound, "
        f"worst error {err.max().item():.3g}"
    )


def assert_same_codes(got, ref, what: str = "codes") -> None:
    """Bit-exact equality of integer outputs (and None-ness) between a backend and the reference."""
    if ref is None:
        assert got is None, f"{what}: expected None, got a tensor"
        return
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {got.dtype}{tuple(got.shape)} vs {ref.dtype}{tuple(ref.shape)}"
    assert torch.equal(got.cpu(), ref.cpu()), f"{what}: differs from the reference"

"""kbit-cpu's gemv_4bit for f16/bf16 activations (the AVX2 int16 path, the float path elsewhere):
error against the exact float64 product at the size of the output dtype's own rounding, and the cases
the int16 path hands back to the float path (non-finite or vanishing activations, odd shapes)."""

from __future__ import annotations

import pytest
import torch

from kbit import backends, formats
from kbit.reference.gemv_4bit import gemv_4bit as reference_gemv
from kbit.testing import oracles

kbit_cpu = pytest.importorskip("kbit_cpu", reason="kbit-cpu is not installed")

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module", autouse=True)
def cpu_backend():
    if backends.provider("gemv_4bit", "cpu") != "cpu":
        pytest.skip("kbit-cpu does not serve gemv_4bit here")


def gemv(A, packed, N, K, absmax, code, blocksize):
    return torch.ops.kbit.gemv_4bit(A, packed, [N, K], absmax, code, blocksize)


def case(N, K, blocksize, quant_type, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) / K**0.5
    packed, absmax = oracles.quantize_4bit(W, blocksize, quant_type)
    dense = oracles.dequantize_4bit(packed, absmax, blocksize, quant_type, N * K).view(N, K)
    return packed, absmax, dense, g


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("N,K,blocksize", [(256, 4096, 64), (96, 1024, 128), (40, 4096, 4096), (33, 192, 128), (17, 320, 64)])
@pytest.mark.parametrize("outliers", [False, True])
def test_error_is_the_output_rounding(dtype, quant_type, N, K, blocksize, outliers):
    packed, absmax, dense, g = case(N, K, blocksize, quant_type)
    A = torch.randn(1, K, generator=g)
    if outliers:  # a few activations 50x the rest, as in LLM hidden states
        A[0, ::97] *= 50
    A = A.to(dtype)
    exact = A.double() @ dense.double().t()
    out = gemv(A, packed, N, K, absmax, formats.code_4bit(quant_type), blocksize).double()
    rounding = (exact.to(dtype).double() - exact).abs()
    err = (out - exact).abs()
    # One rounding to the output dtype is unavoidable. The int16 path adds ~2% to its mean for bf16 and
    # 15-40% for f16 (whose 11 bits come closer to the path's 15-16); no output may be off by more than
    # one ulp at the largest output.
    assert err.mean() <= (1.1 if dtype == torch.bfloat16 else 1.5) * rounding.mean() + 1e-12
    assert err.max() <= torch.finfo(dtype).eps * exact.abs().max()


@pytest.mark.parametrize("dtype", HALF)
def test_custom_code_table(dtype):
    # A table with max|code| != 1 and asymmetric signs: the int16 table is scaled by max|code|.
    N, K, bs = 64, 512, 64
    packed, absmax, _, g = case(N, K, bs, "nf4")
    code = torch.linspace(-3.0, 12.0, 16)
    idx = torch.stack([packed >> 4, packed & 0xF], -1).view(-1).long()
    dense = (code[idx].view(-1, bs) * absmax[:, None]).view(N, K)
    A = torch.randn(1, K, generator=g).to(dtype)
    exact = A.double() @ dense.double().t()
    out = gemv(A, packed, N, K, absmax, code, bs).double()
    rounding = (exact.to(dtype).double() - exact).abs()
    assert (out - exact).abs().mean() <= 1.5 * rounding.mean() + 1e-12


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_match_the_reference(dtype, bad):
    N, K, bs = 8, 256, 64
    packed, absmax, dense, g = case(N, K, bs, "nf4")
    A = torch.randn(1, K, generator=g).to(dtype)
    A[0, 70] = bad
    code = formats.code_4bit("nf4")
    out = gemv(A, packed, N, K, absmax, code, bs)
    want = reference_gemv(A, packed, [N, K], absmax, code, bs)
    assert torch.equal(out.isnan(), want.isnan())
    finite = want.isfinite()
    assert torch.equal(out[finite.logical_not()], want[finite.logical_not()]) or bool(out.isnan().all())
    torch.testing.assert_close(out[finite].float(), want[finite].float(), atol=1e-1, rtol=2e-2)


def test_tiny_and_zero_chunks():
    # bf16 reaches 1e-38: chunks whose max cannot be inverted in float32 take the float path; an all-zero
    # chunk contributes exactly zero.
    N, K, bs = 16, 256, 64
    packed, absmax, dense, g = case(N, K, bs, "nf4")
    A = torch.randn(1, K, generator=g)
    A[0, :64] = 0
    A[0, 64:128] *= 1e-36
    A = A.to(torch.bfloat16)
    exact = A.double() @ dense.double().t()
    out = gemv(A, packed, N, K, absmax, formats.code_4bit("nf4"), bs).double()
    torch.testing.assert_close(out, exact.to(torch.bfloat16).double(), atol=0, rtol=2 * torch.finfo(torch.bfloat16).eps)
    zero = torch.zeros(1, K, dtype=torch.float16)
    assert torch.equal(gemv(zero, packed, N, K, absmax, formats.code_4bit("nf4"), bs), torch.zeros(1, N, dtype=torch.float16))

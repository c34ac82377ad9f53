"""Conformance: kbit::int8_linear_matmul (SPEC §1, §5): exact ``A @ B.T`` with int32 accumulation."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit import backends

OP = "int8_linear_matmul"
K_SIZES = [1, 7, 1023, 1025, 4097]
INT32_MAX = 2**31 - 1


def oracle(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """int64 product (no rounding anywhere), checked to fit int32, returned as int32 on the CPU."""
    K = A.shape[-1]
    prod = A.to("cpu", torch.int64).reshape(-1, K) @ B.to("cpu", torch.int64).t()
    assert not bool((prod.abs() > INT32_MAX).any()), "test inputs overflow int32"
    return prod.to(torch.int32).view(*A.shape[:-1], B.shape[0])


def rand_int8(*shape, device):
    return torch.randint(-128, 128, shape, dtype=torch.int8).to(device)


def check(provider, A, B):
    before = (A.clone(), B.clone())
    C = provider(OP, A, B)
    assert torch.equal(A, before[0]) and torch.equal(B, before[1]), "inputs were modified"
    assert C.dtype == torch.int32 and C.device == A.device
    assert torch.equal(C.cpu(), oracle(A, B))
    return C


@pytest.mark.parametrize("K", K_SIZES)
@pytest.mark.parametrize("M,N", [(1, 1), (3, 5), (17, 33)])
def test_random(provider, device, M, N, K):
    check(provider, rand_int8(M, K, device=device), rand_int8(N, K, device=device))


@pytest.mark.parametrize("K", K_SIZES)
def test_extremes_beyond_float32_exactness(provider, device, K):
    """All -128 / +127 entries: sums far above 2**24 must stay exact."""
    A = torch.full((2, K), -128, dtype=torch.int8, device=device)
    A[1] = 127
    B = torch.full((3, K), -128, dtype=torch.int8, device=device)
    B[1] = 127
    B[2, ::2] = 127
    C = check(provider, A, B)
    assert C[0, 0].item() == K * 128 * 128


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 1, 1025), (4, 0, 9)], ids=str)
def test_leading_dims(provider, device, shape):
    C = check(provider, rand_int8(*shape, device=device), rand_int8(5, shape[-1], device=device))
    assert C.shape == (*shape[:-1], 5)


def test_one_dim_A(provider, device):
    C = check(provider, rand_int8(33, device=device), rand_int8(4, 33, device=device))
    assert C.shape == (4,)


def test_empty_M(provider, device):
    C = check(provider, rand_int8(0, 64, device=device), rand_int8(8, 64, device=device))
    assert C.shape == (0, 8)


@pytest.mark.parametrize("shape", [(3, 7), (2, 2, 1025)], ids=str)
def test_out_overload(provider, device, shape):
    A = rand_int8(*shape, device=device)
    B = rand_int8(6, shape[-1], device=device)
    out = torch.full((*shape[:-1], 6), 12345, dtype=torch.int32, device=device)
    result = provider("int8_linear_matmul.out", A, B, out)
    assert result is None
    assert torch.equal(out.cpu(), oracle(A, B))


def test_non_contiguous_through_functional(provider, device):
    A = rand_int8(7, 9, device=device).t()  # [9, 7]
    B = rand_int8(7, 6, device=device).t()[::2]  # [3, 7]
    assert not A.is_contiguous() and not B.is_contiguous()
    before = (A.clone(), B.clone())
    assert torch.equal(F.int8_linear_matmul(A, B).cpu(), oracle(A, B))
    out = torch.empty(9, 3, dtype=torch.int32, device=device)
    assert F.int8_linear_matmul(A, B, out=out) is out
    assert torch.equal(out.cpu(), oracle(A, B))
    assert torch.equal(A, before[0]) and torch.equal(B, before[1])


@pytest.mark.parametrize("overload", ["default", "out"])
def test_opcheck(provider, device, overload):
    if provider.backend != backends.provider(f"{OP}.{overload}" if overload == "out" else OP, provider.device):
        pytest.skip("opcheck runs once per device, through the dispatched provider")
    A = rand_int8(2, 3, 1025, device=device)
    B = rand_int8(5, 1025, device=device)
    if overload == "out":
        out = torch.empty(2, 3, 5, dtype=torch.int32, device=device)
        torch.library.opcheck(torch.ops.kbit.int8_linear_matmul.out, (A, B, out))
    else:
        torch.library.opcheck(torch.ops.kbit.int8_linear_matmul.default, (A, B))

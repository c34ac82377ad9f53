"""kbit-cuda's kernel arithmetic, checked on the CPU against kbit's reference kernels.

kernels_cuda/host_check.cpp runs the lane functions the CUDA kernels call (blocks.cuh, gemv_4bit.cuh,
optimizer_rules.cuh) for every lane in the kernels' order and reduces like the warps and blocks do; it is
compiled here with the host C++ compiler, so this runs on machines without a GPU or nvcc. Quantize ops
must match the reference bit for bit; float results use the conformance tolerances. The CUDA plumbing
itself (indexing, shuffles, barriers, vector loads) is exercised only on a GPU (ci/test_cuda_gpu.sh).
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from kbit import formats
from kbit.functional.codebooks import create_dynamic_map, create_linear_map
from kbit.reference import KERNELS as REF
from kbit.testing import tolerances as T
from kbit.testing.optimizer_cases import CASES, TWO_STATE, make_inputs

KERNELS_CUDA = Path(__file__).resolve().parents[1] / "kernels_cuda"
_P, _I32, _I64, _F32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
_HYPER = [_F32] * 14 + [_I32, _I32]  # beta1 .. decay_factor, step, skip_zeros
SIGNATURES = {
    "kbit_cuda_host_quantize_4bit": [_P, _I64, _I32, _I32, _P, _P],
    "kbit_cuda_host_quantize_blockwise": [_P, _I64, _P, _I32, _I64, _P, _P],
    "kbit_cuda_host_gemv_4bit": [_P, _P, _P, _P, _I64, _I64, _I32, _I32, _P],
    "kbit_cuda_host_int8_vectorwise_quant": [_P, _I64, _I64, _F32, _P, _P, _P],
    "kbit_cuda_host_int8_linear_matmul": [_P, _P, _I64, _I64, _I64, _P],
    "kbit_cuda_host_optimizer_update_32bit": [_I32, _P, _P, _P, _P, _P, _I64, _F32, _F32] + _HYPER,
    "kbit_cuda_host_optimizer_update_8bit_blockwise": [_I32, _P, _P, _P, _P, _P, _P, _P, _P, _I64] + _HYPER,
}
#: Rules without a square root are bit-exact against the reference. torch's CPU float32 sqrt is not
#: correctly rounded (1 ulp off for ~20% of inputs; sqrtf, the kernels' and torch's CUDA sqrt, is), so
#: with it parameters and states agree to rounding and a state within an ulp of a code boundary may take
#: the neighbouring code.
NO_SQRT = ("momentum", "lars", "lion")
SQRT_CODE_FLIPS = 2
OPTIMIZER_TAGS = {"adam": 0, "momentum": 1, "rmsprop": 2, "lion": 3, "adagrad": 4, "lamb": 5, "lars": 6, "ademamix": 7}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler to build kernels_cuda/host_check.cpp")
    out = tmp_path_factory.mktemp("host_check") / "libkbit_cuda_host_check.so"
    cmd = [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           str(KERNELS_CUDA / "host_check.cpp"), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    library = ctypes.CDLL(str(out))
    for name, argtypes in SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = None
    return library


def p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def hyper(c, step: int, skip_zeros: bool) -> list:
    """Hyper-parameters as kbit_cuda/optim.py computes them (double, then float32)."""
    return [c.beta1, c.beta2, c.beta3, 1 - c.beta1, 1 - c.beta2, 1 - c.beta3, c.alpha, c.eps, c.weight_decay, c.lr,
            c.gnorm_scale, 1 - c.beta1**step, (1 - c.beta2**step) ** 0.5, 1 - c.lr * c.weight_decay, step,
            int(skip_zeros)]


# --- quantize_4bit / quantize_blockwise: bit for bit ---------------------------------------------------

def adversarial(n: int, seed: int) -> torch.Tensor:
    """randn with zero blocks, exact code values and midpoints, tiny and huge values, signed zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.rand(1, generator=g).item() * 10
    if n >= 300:
        x[:64] = 0.0
        x[64:80] = torch.tensor(formats.NF4_CODE)
        sorted_code = torch.tensor(sorted(formats.FP4_CODE))
        x[80:95] = (sorted_code[:-1] + sorted_code[1:]) / 2
        x[95] = 1.0
        x[100:110] = torch.randn(10, generator=g) * 1e-30
        x[110:120] = torch.randn(10, generator=g) * 3e37
        x[120], x[121] = -0.0, 1e-4
    return x


def run_quantize_4bit(lib, A, blocksize, quant_type):
    n = A.numel()
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8)
    absmax = torch.empty(formats.num_blocks(n, blocksize))
    lib.kbit_cuda_host_quantize_4bit(p(A), n, blocksize, 0 if quant_type == "nf4" else 1, p(packed), p(absmax))
    return packed, absmax


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", formats.FOURBIT_BLOCKSIZES)
@pytest.mark.parametrize("n", [1, 7, 63, 4097, 20001])
def test_quantize_4bit_bit_exact(lib, quant_type, blocksize, n):
    A = adversarial(n, seed=n + blocksize)
    packed, absmax = run_quantize_4bit(lib, A, blocksize, quant_type)
    want_packed, want_absmax = REF["quantize_4bit"](A, blocksize, quant_type, torch.uint8)
    assert torch.equal(absmax, want_absmax)
    assert torch.equal(packed, want_packed.view(-1))


def test_quantize_4bit_non_finite_blocks(lib):
    A = torch.randn(256)
    A[3], A[100], A[200] = float("nan"), float("inf"), -float("inf")
    packed, absmax = run_quantize_4bit(lib, A, 64, "nf4")
    want_packed, want_absmax = REF["quantize_4bit"](A, 64, "nf4", torch.uint8)
    torch.testing.assert_close(absmax, want_absmax, rtol=0.0, atol=0.0, equal_nan=True)
    assert torch.isnan(absmax[0]) and torch.isinf(absmax[1]) and torch.isinf(absmax[3])
    assert torch.equal(packed, want_packed.view(-1))


CODES = {
    "dynamic": create_dynamic_map(),
    "dynamic_unsigned": create_dynamic_map(signed=False),
    "linear": create_linear_map(),
    "short": torch.tensor([0.5, -1.0, 0.0, 1.0, -0.25]),
}


@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("blocksize", [1, 16, 64, 1000, 4096, 16384])
def test_quantize_blockwise_bit_exact(lib, code, blocksize):
    A = adversarial(9001, seed=blocksize)
    A[5000] = float("nan")
    table = CODES[code]
    q = torch.empty(A.numel(), dtype=torch.uint8)
    absmax = torch.empty(formats.num_blocks(A.numel(), blocksize))
    lib.kbit_cuda_host_quantize_blockwise(p(A), A.numel(), p(table), table.numel(), blocksize, p(q), p(absmax))
    want_q, want_absmax = REF["quantize_blockwise"](A, table, blocksize)
    assert torch.equal(q, want_q)
    assert torch.allclose(absmax, want_absmax, rtol=0, atol=0, equal_nan=True)


# --- gemv_4bit -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("NK", [(1, 64), (33, 128), (96, 4096), (7, 320), (5, 7), (3, 1030)])
def test_gemv_4bit(lib, quant_type, blocksize, NK):
    N, K = NK
    W = torch.randn(N, K) / K**0.5
    packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
    code = formats.code_4bit(quant_type)
    A = torch.randn(K)
    want = REF["gemv_4bit"](A, packed, [N, K], absmax, code, blocksize)
    paths = [0, 1] if K % 32 == 0 else [0]
    for vectorized in paths:
        out = torch.empty(N)
        lib.kbit_cuda_host_gemv_4bit(p(A), p(packed), p(absmax), p(code), N, K, int(math.log2(blocksize)), vectorized, p(out))
        torch.testing.assert_close(out, want, **T.tol(T.MATMUL_4BIT_TOL, torch.float32))


def test_gemv_4bit_identity_is_exact(lib):
    K = 128
    packed, absmax = REF["quantize_4bit"](torch.eye(K), 64, "nf4", torch.uint8)
    A = torch.randn(K)
    for vectorized in (0, 1):
        out = torch.empty(K)
        lib.kbit_cuda_host_gemv_4bit(p(A), p(packed), p(absmax), p(formats.code_4bit("nf4")), K, K, 6, vectorized, p(out))
        assert torch.equal(out, A)


# --- LLM.int8() ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.0, 3.0])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 7), (4, 33), (5, 4097), (300, 9)])
def test_int8_vectorwise_quant_bit_exact(lib, shape, threshold):
    A = torch.randn(shape) * 2
    A[0, -1] = 2 * threshold
    if shape[0] > 2:
        A[1] = 0.0
    rows, cols = shape
    out = torch.empty(shape, dtype=torch.int8)
    stats = torch.empty(rows)
    flags = torch.zeros(cols, dtype=torch.int32)
    lib.kbit_cuda_host_int8_vectorwise_quant(p(A), rows, cols, threshold, p(out), p(stats), p(flags))
    want_out, want_stats, want_cols = REF["int8_vectorwise_quant"](A, threshold)
    assert torch.equal(out, want_out) and torch.equal(stats, want_stats)
    if threshold:
        assert torch.equal(torch.nonzero(flags).view(-1), want_cols)


@pytest.mark.parametrize("K", [1, 3, 4, 7, 64, 1025])
def test_int8_linear_matmul_exact(lib, K):
    A = torch.randint(-128, 128, (5, K), dtype=torch.int8)
    B = torch.randint(-128, 128, (6, K), dtype=torch.int8)
    A[0] = -128
    B[0] = -128
    C = torch.empty(5, 6, dtype=torch.int32)
    lib.kbit_cuda_host_int8_linear_matmul(p(A), p(B), 5, 6, K, p(C))
    assert torch.equal(C, (A.long() @ B.long().t()).to(torch.int32))


# --- optimizers ------------------------------------------------------------------------------------------

def _states_32(c, n):
    s1 = torch.zeros(2 * n if c.name == "ademamix" else n)
    s2 = torch.zeros(n) if c.name in TWO_STATE else None
    return s1, s2


@pytest.mark.parametrize("skip_zeros", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_32bit_matches_reference(lib, case, skip_zeros):
    c = CASES[case]
    n = 4097
    p0, grads = make_inputs((n,), torch.float32, 5, seed=11)
    ours, ref = p0.clone(), p0.clone()
    (s1, s2), (r1, r2) = _states_32(c, n), _states_32(c, n)
    unorm, ref_unorm = torch.zeros(1), torch.zeros(1)
    trust = c.max_unorm > 0 and c.name != "adagrad"
    for t, g in enumerate(grads, start=1):
        if skip_zeros:
            g[::5] = 0.0
        norm = float(ours.norm()) if c.max_unorm > 0 else 0.0
        lib.kbit_cuda_host_optimizer_update_32bit(OPTIMIZER_TAGS[c.name], p(g), p(ours), p(s1), p(s2), p(unorm), n,
                                                  c.max_unorm, norm, *hyper(c, t, skip_zeros))
        REF["optimizer_update_32bit"](c.name, g, ref, r1.view(2, n) if c.name == "ademamix" else r1, r2,
                                      ref_unorm if trust else None, c.max_unorm, float(ref.norm()) if c.max_unorm > 0 else 0.0,
                                      c.beta1, c.beta2, c.beta3, c.alpha, c.eps, c.weight_decay, t, c.lr, c.gnorm_scale,
                                      skip_zeros)
    if c.name in NO_SQRT and not trust:
        assert torch.equal(ours, ref) and torch.equal(s1, r1)
    mismatch = T.OPTIM_LION_MAX_MISMATCH if c.name == "lion" else 0
    close = torch.isclose(ours, ref, **T.tol(T.OPTIM_32BIT_TOL, torch.float32))
    assert int((~close).sum()) <= mismatch
    torch.testing.assert_close(s1, r1, rtol=1e-5, atol=1e-6 * float(r1.abs().max()))
    if trust:
        torch.testing.assert_close(unorm, ref_unorm, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("skip_zeros", [False, True])
@pytest.mark.parametrize("n", [1, 300, 4097])
@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_8bit_matches_reference(lib, case, n, skip_zeros):
    c = CASES[case]
    k = 2 if c.name == "ademamix" else 1
    nb = formats.num_blocks(n, formats.OPTIMIZER_BLOCKSIZE)
    two = c.name in TWO_STATE
    qmap1, qmap2 = create_dynamic_map(), create_dynamic_map(signed=False)
    p0, grads = make_inputs((n,), torch.float32, 4, seed=12)
    grads[2][n // 2] = float("nan")
    st = [torch.zeros(k * n, dtype=torch.uint8), torch.zeros(k * nb), torch.zeros(n, dtype=torch.uint8) if two else None,
          torch.zeros(nb) if two else None]
    ours = p0.clone()
    for t, g in enumerate(grads, start=1):
        if skip_zeros:
            g[::7] = 0.0
        ref_p, ref_st = ours.clone(), [None if x is None else x.clone() for x in st]
        REF["optimizer_update_8bit_blockwise"](c.name, g, ref_p, ref_st[0].view(k, n) if k == 2 else ref_st[0], ref_st[2],
                                               c.beta1, c.beta2, c.beta3, c.alpha, c.eps, t, c.lr, qmap1,
                                               qmap2 if two else None, ref_st[1].view(k, nb) if k == 2 else ref_st[1],
                                               ref_st[3], c.weight_decay, c.gnorm_scale, skip_zeros)
        lib.kbit_cuda_host_optimizer_update_8bit_blockwise(OPTIMIZER_TAGS[c.name], p(g), p(ours), p(st[0]), p(st[2]),
                                                           p(qmap1), p(qmap2) if two else None, p(st[1]), p(st[3]), n,
                                                           *hyper(c, t, skip_zeros))
        if c.name in NO_SQRT:
            assert torch.equal(ours, ref_p), f"step {t}: p differs"
            assert all(a is None or torch.equal(a, b) for a, b in zip(st, ref_st)), f"step {t}: states differ"
            continue
        assert torch.isclose(ours, ref_p, **T.tol(T.OPTIM_32BIT_TOL, torch.float32)).all(), f"step {t}: p"
        for codes, ref_codes in ((st[0], ref_st[0]), (st[2], ref_st[2])):
            if codes is not None:
                diff = (codes.long() - ref_codes.long()).abs()
                assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= SQRT_CODE_FLIPS, f"step {t}: codes"
        for absmax, ref_absmax in ((st[1], ref_st[1]), (st[3], ref_st[3])):
            if absmax is not None:
                torch.testing.assert_close(absmax, ref_absmax, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("shift", [3e-3, -3e-3])
def test_optimizer_8bit_sign_rule(lib, shift):
    """A signed map without 0.0: values whose nearest code has the other sign step one code toward their sign."""
    c = CASES["momentum"]
    n = formats.OPTIMIZER_BLOCKSIZE
    qmap = torch.linspace(-1.0, 1.0, 256) + shift
    g = torch.zeros(n)
    g[:4] = torch.tensor([1.0, 2e-3, -2e-3, 0.5])
    ours, ref_p = torch.zeros(n), torch.zeros(n)
    codes, ref_codes = torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
    absmax, ref_absmax = torch.zeros(1), torch.zeros(1)
    lib.kbit_cuda_host_optimizer_update_8bit_blockwise(1, p(g), p(ours), p(codes), None, p(qmap), None, p(absmax), None,
                                                       n, *hyper(c, 1, False))
    REF["optimizer_update_8bit_blockwise"]("momentum", g, ref_p, ref_codes, None, c.beta1, c.beta2, c.beta3, c.alpha,
                                           c.eps, 1, c.lr, qmap, None, ref_absmax, None, c.weight_decay, c.gnorm_scale)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax) and torch.equal(ours, ref_p)
    assert torch.equal(torch.sign(qmap[codes[1:3].long()]), torch.sign(g[1:3]))

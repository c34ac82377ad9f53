"""kbit.functional LLM.int8() API: argument checking, SPEC §9 round trip, no input mutation, deprecated helpers."""

from __future__ import annotations

import warnings

import pytest
import torch

import kbit.functional as F
from kbit.testing import tolerances as T

META = torch.device("meta")


def i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


# --- SPEC §9 round trip and the plain contract --------------------------------------------------------

def test_vectorwise_round_trip_within_spec():
    A = torch.randn(512, 1024, dtype=torch.float16)
    CA, stats, cols = F.int8_vectorwise_quant(A)
    assert cols is None and CA.dtype == torch.int8 and stats.shape == (512,)
    err = (F.int8_vectorwise_dequant(CA, stats) - A.float()).abs()
    assert err.mean().item() <= T.INT8_ROUNDTRIP_ABS
    assert err.max().item() <= T.INT8_ROUNDTRIP_MAX


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_double_quant_at_layer_size_matches_reference(dtype, threshold):
    """Shapes large enough for every thread and vector path of a native backend (kbit-cpu splits rows
    over threads from 2^15 elements), outliers in a few columns, against the reference bit for bit."""
    from kbit import backends

    ref = dict(backends.kernels_for("cpu"))["reference"]["int8_double_quant"]
    torch.manual_seed(3)
    A = torch.randn(300, 1030) * 2
    A[::7, 100] = 9.0
    A[13, 1029] = -7.5
    A = A.to(dtype)
    got, want = F.int8_double_quant(A, threshold=threshold), ref(A, threshold)
    for name, g, w in zip(("CA", "CAt", "row_stats", "col_stats"), got, want):
        assert torch.equal(g, w), name
    assert (got[4] is None) == (want[4] is None) and (got[4] is None or torch.equal(got[4], want[4]))


def test_inputs_are_not_mutated():
    A = torch.randn(6, 40, dtype=torch.float16)
    A[2, 5] = 9.0
    B = i8(5, 40)
    acc = torch.randint(-(2**20), 2**20, (6, 5), dtype=torch.int32)
    rs, cs, bias = torch.rand(6) + 0.1, torch.rand(5) + 0.1, torch.randn(5, dtype=torch.float16)
    inputs = (A, B, acc, rs, cs, bias)
    before = [t.clone() for t in inputs]
    CA, SCA, _ = F.int8_vectorwise_quant(A, threshold=6.0)
    F.int8_double_quant(A, threshold=6.0)
    F.int8_vectorwise_dequant(CA, SCA)
    F.int8_linear_matmul(CA, B)
    F.int8_mm_dequant(acc, rs, cs, bias=bias)
    assert all(torch.equal(x, y) for x, y in zip(before, inputs))


def test_threshold_accepts_ints_and_double_quant_shapes():
    A = torch.randn(3, 2, 8)
    A[1, 1, 4] = 7.0
    CA, CAt, rs, cs, cols = F.int8_double_quant(A, threshold=6)
    assert CA.shape == CAt.shape == A.shape and rs.shape == (6,) and cs.shape == (8,) and cols.tolist() == [4]


def test_mm_dequant_is_float16_and_fills_out():
    acc = torch.randint(-1000, 1000, (2, 3, 4), dtype=torch.int32)
    rs, cs = torch.rand(6), torch.rand(4)
    y = F.int8_mm_dequant(acc, rs, cs)
    assert y.dtype == torch.float16 and y.shape == acc.shape
    out = torch.empty(2, 3, 4, dtype=torch.float32)
    assert F.int8_mm_dequant(acc, rs.view(6, 1), cs, out=out) is out
    assert torch.equal(out, y.float())


def test_linear_matmul_out_and_leading_dims():
    A, B = i8(2, 3, 7), i8(5, 7)
    want = (A.long().reshape(6, 7) @ B.long().t()).int().view(2, 3, 5)
    assert torch.equal(F.int8_linear_matmul(A, B), want)
    out = torch.empty(2, 3, 5, dtype=torch.int32)
    assert F.int8_linear_matmul(A, B, out=out) is out and torch.equal(out, want)


# --- argument errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [F.int8_vectorwise_quant, F.int8_double_quant])
class TestQuantErrors:
    def test_not_a_tensor(self, fn):
        with pytest.raises(TypeError, match=r"kbit\.int8_\w+: A must be a torch\.Tensor"):
            fn([[1.0]])

    def test_integer_dtype(self, fn):
        with pytest.raises(TypeError, match=r"A must have dtype in \(float16, bfloat16, float32\), got torch.int8"):
            fn(i8(2, 2))

    def test_zero_dim(self, fn):
        with pytest.raises(ValueError, match="A must have at least 1 dimension"):
            fn(torch.tensor(1.0))

    def test_empty_last_dim(self, fn):
        with pytest.raises(ValueError, match=r"A\.shape\[-1\] must be positive"):
            fn(torch.empty(3, 0))

    @pytest.mark.parametrize("threshold", [-1.0, float("nan")])
    def test_bad_threshold_value(self, fn, threshold):
        with pytest.raises(ValueError, match="threshold must be >= 0"):
            fn(torch.randn(2, 2), threshold=threshold)

    def test_bad_threshold_type(self, fn):
        with pytest.raises(TypeError, match="threshold must be a real number"):
            fn(torch.randn(2, 2), threshold="6")


@pytest.mark.parametrize("name", ["col_stats", "row_stats", "out_col", "out_row"])
def test_double_quant_rejects_preallocated_outputs(name):
    with pytest.raises(ValueError, match=f"kbit.int8_double_quant: {name} must be None"):
        F.int8_double_quant(torch.randn(2, 3), **{name: torch.empty(2)})


def test_vectorwise_dequant_errors():
    A, stats = i8(3, 4), torch.rand(3)
    with pytest.raises(TypeError, match="int8_vectorwise_dequant: A must have dtype in \\(int8\\)"):
        F.int8_vectorwise_dequant(A.float(), stats)
    with pytest.raises(TypeError, match="stats must have dtype in \\(float32\\)"):
        F.int8_vectorwise_dequant(A, stats.half())
    with pytest.raises(ValueError, match=r"stats must have 3 elements"):
        F.int8_vectorwise_dequant(A, torch.rand(4))
    with pytest.raises(ValueError, match="stats must be on A's device"):
        F.int8_vectorwise_dequant(A, stats.to(META))
    with pytest.raises(ValueError, match=r"A\.shape\[-1\] must be positive"):
        F.int8_vectorwise_dequant(i8(3, 0), stats)


def test_linear_matmul_errors():
    A, B = i8(4, 7), i8(5, 7)
    cases = [
        (TypeError, "A must have dtype in \\(int8\\)", (A.half(), B), {}),
        (TypeError, "B must have dtype in \\(int8\\)", (A, B.float()), {}),
        (TypeError, "B must be a torch.Tensor", (A, None), {}),
        (ValueError, "B must be 2-D", (A, i8(7)), {}),
        (ValueError, r"B\.shape\[1\] must equal A\.shape\[-1\] = 7", (A, i8(5, 6)), {}),
        (ValueError, r"A\.shape\[-1\] must be positive", (i8(4, 0), i8(5, 0)), {}),
        (ValueError, "A must have at least 1 dimension", (torch.tensor(1, dtype=torch.int8), B), {}),
        (TypeError, "dtype must be torch.int32", (A, B), {"dtype": torch.int64}),
        (TypeError, "out must have dtype in \\(int32\\)", (A, B), {"out": torch.empty(4, 5, dtype=torch.int64)}),
        (ValueError, r"out must have shape \(4, 5\)", (A, B), {"out": torch.empty(5, 4, dtype=torch.int32)}),
        (ValueError, "B must be on A's device", (A, B.to(META)), {}),
        (ValueError, "out must be on A's device", (A, B), {"out": torch.empty(4, 5, dtype=torch.int32, device=META)}),
    ]
    for exc, match, args, kwargs in cases:
        with pytest.raises(exc, match=f"kbit.int8_linear_matmul: {match}"):
            F.int8_linear_matmul(*args, **kwargs)


def test_mm_dequant_errors():
    A, rs, cs = torch.zeros(4, 5, dtype=torch.int32), torch.rand(4), torch.rand(5)
    cases = [
        (TypeError, "A must have dtype in \\(int32\\)", (A.to(torch.int8), rs, cs), {}),
        (TypeError, "row_stats must have dtype in \\(float32\\)", (A, rs.half(), cs), {}),
        (ValueError, r"row_stats must have 4 elements", (A, torch.rand(5), cs), {}),
        (ValueError, r"col_stats must have 5 elements", (A, rs, torch.rand(4)), {}),
        (ValueError, "col_stats must be on A's device", (A, rs, cs.to(META)), {}),
        (ValueError, r"bias must be 1-D of size 5", (A, rs, cs), {"bias": torch.rand(4)}),
        (TypeError, "bias must have dtype in", (A, rs, cs), {"bias": torch.ones(5, dtype=torch.int32)}),
        (ValueError, "bias must be on A's device", (A, rs, cs), {"bias": torch.rand(5, device=META)}),
        (ValueError, r"out must have shape \(4, 5\)", (A, rs, cs), {"out": torch.empty(5, 4, dtype=torch.float16)}),
        (TypeError, "out must have dtype in", (A, rs, cs), {"out": torch.empty(4, 5, dtype=torch.int32)}),
        (ValueError, r"A\.shape\[-1\] must be positive", (torch.zeros(4, 0, dtype=torch.int32), rs, torch.rand(0)), {}),
    ]
    for exc, match, args, kwargs in cases:
        with pytest.raises(exc, match=f"kbit.int8_mm_dequant: {match}"):
            F.int8_mm_dequant(*args, **kwargs)


# --- deprecated helpers --------------------------------------------------------------------------------

def _product(a, b):
    return (a.long() @ b.long()).int()


@pytest.mark.parametrize("transposed_A", [False, True])
@pytest.mark.parametrize("transposed_B", [False, True])
def test_igemm(transposed_A, transposed_B):
    a, b = i8(6, 9), i8(9, 4)
    A = a.t().contiguous() if transposed_A else a
    B = b.t().contiguous() if transposed_B else b
    with pytest.warns(FutureWarning, match="igemm is deprecated"):
        C = F.igemm(A, B, transposed_A=transposed_A, transposed_B=transposed_B)
    assert C.dtype == torch.int32 and torch.equal(C, _product(a, b))


def test_igemm_3d_and_out():
    a, b = i8(2, 3, 9), i8(9, 4)
    out = torch.empty(2, 3, 4, dtype=torch.int32)
    with pytest.warns(FutureWarning):
        assert F.igemm(a, b, out=out) is out
    assert torch.equal(out, _product(a, b))


@pytest.mark.parametrize("transposed_A", [False, True])
@pytest.mark.parametrize("transposed_B", [False, True])
def test_batched_igemm(transposed_A, transposed_B):
    a, b = i8(3, 5, 9), i8(3, 9, 4)
    A = a.transpose(1, 2).contiguous() if transposed_A else a
    B = b.transpose(1, 2).contiguous() if transposed_B else b
    with pytest.warns(FutureWarning, match="batched_igemm is deprecated"):
        C = F.batched_igemm(A, B, transposed_A=transposed_A, transposed_B=transposed_B)
    assert torch.equal(C, torch.bmm(a.long(), b.long()).int())


def test_check_matmul():
    with pytest.warns(FutureWarning, match="check_matmul is deprecated"):
        assert F.check_matmul(i8(6, 9), i8(9, 4), None, False, False) == (6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert F.check_matmul(i8(9, 6), i8(4, 9), None, True, True) == (6, 4)
        with pytest.raises(TypeError, match="kbit.check_matmul: A and B must be torch.int8"):
            F.check_matmul(i8(6, 9).float(), i8(9, 4), None, False, False)
        with pytest.raises(ValueError, match="kbit.check_matmul: inner dimensions"):
            F.check_matmul(i8(6, 9), i8(8, 4), None, False, False)
        with pytest.raises(ValueError, match="kbit.igemm: out must have shape"):
            F.igemm(i8(6, 9), i8(9, 4), out=torch.empty(4, 6, dtype=torch.int32))
        with pytest.raises(ValueError, match="kbit.batched_igemm: A and B must be 3-D"):
            F.batched_igemm(i8(6, 9), i8(9, 4))

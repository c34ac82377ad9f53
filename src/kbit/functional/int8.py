"""LLM.int8() functional API (bitsandbytes-compatible signatures, kbit SPEC §5 and §8).

Every function validates its arguments (``TypeError`` for wrong dtypes or types, ``ValueError`` for
shapes, devices and values, each naming the argument), makes inputs contiguous, and calls the
``torch.ops.kbit`` op, which the dispatcher routes to the backend serving the tensors' device.
Inputs are never modified.

Layouts: a matrix ``A [..., K]`` is treated as ``rows = A.numel() // K`` rows of length ``K``; a
linear weight is ``B [N, K]`` (out_features, in_features), row-major.
"""

from __future__ import annotations

import warnings
from numbers import Real

import torch

from .. import formats
from . import checks

__all__ = [
    "int8_vectorwise_quant",
    "int8_vectorwise_dequant",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "igemm",
    "batched_igemm",
    "check_matmul",
]

#: Output dtype of ``int8_mm_dequant`` (bitsandbytes always returns float16 here).
MM_DEQUANT_DTYPE = torch.float16
#: Accumulator dtype of the int8 x int8 product.
INT8_ACC_DTYPE = torch.int32


# --- argument checks -------------------------------------------------------------------------------

def _tensor(fn: str, name: str, t, dtypes=None) -> torch.Tensor:
    checks.tensor(fn, name, t, dtypes)
    return t


def _same_device(fn: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    checks.same_device(fn, A=ref, **others)


def _matrix(fn: str, name: str, A: torch.Tensor) -> int:
    """Checks ``A [..., K]`` with K > 0; returns the row count ``A.numel() // K``."""
    if A.dim() < 1:
        raise ValueError(f"kbit.{fn}: {name} must have at least 1 dimension, got a 0-dim tensor")
    K = A.shape[-1]
    if K == 0:
        raise ValueError(f"kbit.{fn}: {name}.shape[-1] must be positive, got shape {tuple(A.shape)}")
    return A.numel() // K


def _stats(fn: str, name: str, s, count: int, A: torch.Tensor) -> torch.Tensor:
    """A float32 stats vector with ``count`` elements (``[count]`` or ``[count, 1]``), returned 1-D."""
    _tensor(fn, name, s, (torch.float32,))
    if s.numel() != count or (s.dim() > 1 and s.shape[0] != count):
        raise ValueError(f"kbit.{fn}: {name} must have {count} elements ([{count}]), got shape {tuple(s.shape)}")
    _same_device(fn, A, **{name: s})
    return s.reshape(count).contiguous()


def _threshold(fn: str, threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"kbit.{fn}: threshold must be a real number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if not threshold >= 0.0:
        raise ValueError(f"kbit.{fn}: threshold must be >= 0, got {threshold}")
    return threshold


def _float_matrix(fn: str, A) -> torch.Tensor:
    _tensor(fn, "A", A, formats.FLOAT_DTYPES)
    _matrix(fn, "A", A)
    return A.contiguous()


# --- public API ------------------------------------------------------------------------------------

def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise absmax int8 quantization (LLM.int8()).

    Args:
        A: float16/bfloat16/float32 ``[..., K]`` (K > 0); made contiguous, not modified.
        threshold: 0 disables outlier handling; otherwise elements with ``|A| >= threshold`` are outliers.

    Returns:
        ``(CA, row_stats, outlier_cols)``: CA int8 of ``A.shape``, ``round(A * 127 / row_stats[r])`` with
        outliers set to 0 (and whole outlier columns when there is more than one row); row_stats float32
        ``[rows]`` = per-row max|A| over non-outliers (0 for an all-zero row); outlier_cols int64, the
        ascending unique columns holding an outlier (possibly empty), or None when threshold is 0.
    """
    fn = "int8_vectorwise_quant"
    threshold = _threshold(fn, threshold)
    A = _float_matrix(fn, A)
    return torch.ops.kbit.int8_vectorwise_quant(A, threshold)


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`int8_vectorwise_quant`: ``A * stats[r] / 127``.

    Args:
        A: int8 ``[..., K]``.
        stats: float32 with one value per row (``[rows]``; ``[rows, 1]`` is accepted), on A's device.

    Returns:
        float32 tensor of ``A.shape``.
    """
    fn = "int8_vectorwise_dequant"
    _tensor(fn, "A", A, (torch.int8,))
    rows = _matrix(fn, "A", A)
    stats = _stats(fn, "stats", stats, rows, A)
    return torch.ops.kbit.int8_vectorwise_dequant(A.contiguous(), stats)


def int8_double_quant(
    A: torch.Tensor,
    col_stats: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    out_col: torch.Tensor | None = None,
    out_row: torch.Tensor | None = None,
    threshold: float = 0.0,
):
    """Row-wise and column-wise int8 quantization of the same matrix, sharing outlier handling.

    Args:
        A: float16/bfloat16/float32 ``[..., K]`` (K > 0); made contiguous, not modified.
        col_stats, row_stats, out_col, out_row: preallocated outputs are not supported (ValueError);
            they remain in the signature for bitsandbytes compatibility.
        threshold: as in :func:`int8_vectorwise_quant`.

    Returns:
        ``(out_row, out_col, row_stats, col_stats, outlier_cols)``: out_row/out_col int8 of ``A.shape``
        (row-wise / column-wise scaled, outliers 0), row_stats float32 ``[rows]``, col_stats float32
        ``[K]`` (column max|A| with outliers masked), outlier_cols int64 or None (threshold 0).
    """
    fn = "int8_double_quant"
    for name, t in (("col_stats", col_stats), ("row_stats", row_stats), ("out_col", out_col), ("out_row", out_row)):
        if t is not None:
            raise ValueError(f"kbit.{fn}: {name} must be None (preallocated outputs are not supported), got a tensor")
    threshold = _threshold(fn, threshold)
    A = _float_matrix(fn, A)
    return torch.ops.kbit.int8_double_quant(A, threshold)


def int8_linear_matmul(
    A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype = INT8_ACC_DTYPE
) -> torch.Tensor:
    """Exact int8 product ``A @ B.T`` with int32 accumulation.

    Args:
        A: int8 ``[..., K]`` (K > 0; leading dims may be empty).
        B: int8 ``[N, K]`` on A's device.
        out: optional int32 ``[..., N]`` (``(*A.shape[:-1], N)``) written in place and returned.
        dtype: must be torch.int32 (the only accumulator).

    Returns:
        int32 tensor of shape ``(*A.shape[:-1], N)``.
    """
    fn = "int8_linear_matmul"
    _tensor(fn, "A", A, (torch.int8,))
    _tensor(fn, "B", B, (torch.int8,))
    if dtype != INT8_ACC_DTYPE:
        raise TypeError(f"kbit.{fn}: dtype must be torch.int32, got {dtype}")
    _matrix(fn, "A", A)
    if B.dim() != 2:
        raise ValueError(f"kbit.{fn}: B must be 2-D [N, K], got shape {tuple(B.shape)}")
    if B.shape[1] != A.shape[-1]:
        raise ValueError(f"kbit.{fn}: B.shape[1] must equal A.shape[-1] = {A.shape[-1]}, got shape {tuple(B.shape)}")
    _same_device(fn, A, B=B, out=out)
    A, B = A.contiguous(), B.contiguous()
    if out is None:
        return torch.ops.kbit.int8_linear_matmul(A, B)
    _tensor(fn, "out", out, (INT8_ACC_DTYPE,))
    shape = (*A.shape[:-1], B.shape[0])
    if tuple(out.shape) != shape:
        raise ValueError(f"kbit.{fn}: out must have shape {shape}, got {tuple(out.shape)}")
    torch.ops.kbit.int8_linear_matmul.out(A, B, out)
    return out


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize an int32 product: ``A[r, c] * row_stats[r] * col_stats[c] / 127**2 (+ bias[c])``.

    Args:
        A: int32 ``[..., N]`` (an :func:`int8_linear_matmul` result).
        row_stats: float32 ``[rows]`` (``rows = A.numel() // N``; ``[rows, 1]`` accepted).
        col_stats: float32 ``[N]`` (``[N, 1]`` accepted).
        out: optional float tensor of ``A.shape``; the float16 result is copied into it and it is returned.
        bias: optional float ``[N]``, added in float32 before the cast.

    Returns:
        float16 tensor of ``A.shape`` (or ``out``).
    """
    fn = "int8_mm_dequant"
    _tensor(fn, "A", A, (INT8_ACC_DTYPE,))
    rows = _matrix(fn, "A", A)
    N = A.shape[-1]
    row_stats = _stats(fn, "row_stats", row_stats, rows, A)
    col_stats = _stats(fn, "col_stats", col_stats, N, A)
    if bias is not None:
        _tensor(fn, "bias", bias, formats.FLOAT_DTYPES)
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"kbit.{fn}: bias must be 1-D of size {N}, got shape {tuple(bias.shape)}")
        _same_device(fn, A, bias=bias)
        bias = bias.contiguous()
    if out is not None:
        _tensor(fn, "out", out, formats.FLOAT_DTYPES)
        if out.shape != A.shape:
            raise ValueError(f"kbit.{fn}: out must have shape {tuple(A.shape)}, got {tuple(out.shape)}")
        _same_device(fn, A, out=out)
    result = torch.ops.kbit.int8_mm_dequant(A.contiguous(), row_stats, col_stats, MM_DEQUANT_DTYPE, bias)
    if out is None:
        return result
    return out.copy_(result)


# --- deprecated (bitsandbytes < 0.45) ---------------------------------------------------------------

def _deprecated(fn: str, instead: str) -> None:
    warnings.warn(
        f"kbit.functional.{fn} is deprecated and will be removed; use {instead} instead.", FutureWarning, stacklevel=3
    )


def _check_matmul(fn, A, B, out, transposed_A, transposed_B, expected_type=torch.int8) -> tuple[int, ...]:
    _tensor(fn, "A", A)
    _tensor(fn, "B", B)
    if A.dtype != expected_type or B.dtype != expected_type:
        raise TypeError(f"kbit.{fn}: A and B must be {expected_type}, got {A.dtype} and {B.dtype}")
    if A.dim() not in (2, 3) or B.dim() not in (2, 3):
        raise ValueError(f"kbit.{fn}: A and B must be 2-D or 3-D, got shapes {tuple(A.shape)} and {tuple(B.shape)}")
    _same_device(fn, A, B=B, out=out)
    if A.dim() == 3 and B.dim() == 3:
        if A.shape[0] != B.shape[0]:
            raise ValueError(f"kbit.{fn}: B must have A's batch size {A.shape[0]}, got shape {tuple(B.shape)}")
        m, ka = (A.shape[2], A.shape[1]) if transposed_A else (A.shape[1], A.shape[2])
        kb, n = (B.shape[2], B.shape[1]) if transposed_B else (B.shape[1], B.shape[2])
        lead = (A.shape[0], m)
    elif B.dim() == 2:
        if transposed_A and A.dim() == 3:
            raise ValueError(f"kbit.{fn}: transposed_A is only supported for 2-D A, got shape {tuple(A.shape)}")
        lead = (A.shape[1],) if transposed_A else tuple(A.shape[:-1])
        ka = A.shape[0] if transposed_A else A.shape[-1]
        kb, n = (B.shape[1], B.shape[0]) if transposed_B else (B.shape[0], B.shape[1])
    else:
        raise ValueError(f"kbit.{fn}: a 3-D B needs a 3-D A, got shapes {tuple(A.shape)} and {tuple(B.shape)}")
    if ka != kb:
        raise ValueError(
            f"kbit.{fn}: inner dimensions of A {tuple(A.shape)} and B {tuple(B.shape)} must agree "
            f"(transposed_A={transposed_A}, transposed_B={transposed_B}), got {ka} and {kb}"
        )
    sout = (*lead, n)
    if out is not None and tuple(out.shape) != sout:
        raise ValueError(f"kbit.{fn}: out must have shape {sout}, got {tuple(out.shape)}")
    return sout


def check_matmul(A, B, out, transposed_A, transposed_B, expected_type=torch.int8):
    """Deprecated: validates an int8 ``A @ B`` (with transposition flags) and returns the output shape."""
    _deprecated("check_matmul", "kbit.functional.int8_linear_matmul (which validates its arguments)")
    return _check_matmul("check_matmul", A, B, out, transposed_A, transposed_B, expected_type)


def _store(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    return out.copy_(result)


def igemm(A, B, out=None, transposed_A=False, transposed_B=False):
    """Deprecated: int32 ``A @ B`` of int8 matrices (``A [M, K]`` or ``[b, s, K]``, ``B [K, N]``; flags transpose).

    Computed with the ``int8_linear_matmul`` op; use :func:`int8_linear_matmul` (``A @ W.T``) instead.
    """
    _deprecated("igemm", "kbit.functional.int8_linear_matmul")
    _check_matmul("igemm", A, B, out, transposed_A, transposed_B)
    a = A.t() if transposed_A else A
    w = B if transposed_B else B.t()
    if a.shape[-1] == 0:
        return _store(out, torch.zeros((*a.shape[:-1], w.shape[0]), dtype=INT8_ACC_DTYPE, device=A.device))
    return _store(out, torch.ops.kbit.int8_linear_matmul(a.contiguous(), w.contiguous()))


def batched_igemm(A, B, out=None, transposed_A=False, transposed_B=False):
    """Deprecated: batched int32 ``A[i] @ B[i]`` of int8 ``A [b, m, K]``, ``B [b, K, n]`` (flags transpose).

    Computed batch by batch with the ``int8_linear_matmul`` op.
    """
    _deprecated("batched_igemm", "kbit.functional.int8_linear_matmul")
    if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor) and (A.dim() != 3 or B.dim() != 3):
        raise ValueError(f"kbit.batched_igemm: A and B must be 3-D, got shapes {tuple(A.shape)} and {tuple(B.shape)}")
    sout = _check_matmul("batched_igemm", A, B, out, transposed_A, transposed_B)
    a = A.transpose(1, 2) if transposed_A else A
    w = B if transposed_B else B.transpose(1, 2)
    if a.shape[-1] == 0 or a.shape[0] == 0:
        return _store(out, torch.zeros(sout, dtype=INT8_ACC_DTYPE, device=A.device))
    parts = [torch.ops.kbit.int8_linear_matmul(a[i].contiguous(), w[i].contiguous()) for i in range(a.shape[0])]
    return _store(out, torch.stack(parts))

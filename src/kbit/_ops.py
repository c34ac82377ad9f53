"""The op catalog: every ``kbit::`` schema and its fake (meta) kernel, in one place.

Backends add kernels for these ops; they never define schemas. The reference
kernels (``kbit.reference``) are registered as CompositeExplicitAutograd, so
they serve every device no backend claims. The fakes let ``torch.compile`` and
``torch.library.opcheck`` trace through each op; they check what determines the
output shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import formats

NAMESPACE = "kbit"

_OPTIM_32BIT_ARGS = (
    "str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, "
    "Tensor(a4!)? unorm_vec, float max_unorm, float param_norm, float beta1, float beta2, float beta3, "
    "float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros=False"
)
_OPTIM_8BIT_ARGS = (
    "str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, "
    "float beta1, float beta2, float beta3, float alpha, float eps, int step, float lr, "
    "Tensor(a4!) qmap1, Tensor(a5!)? qmap2, Tensor(a6!) absmax1, Tensor(a7!)? absmax2, "
    "float weight_decay, float gnorm_scale, bool skip_zeros=False"
)

_Q4 = "Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype"
_GEMV = "Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize"
_DQB = "Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype"

#: op name (with overload) -> schema; the single source of truth for names and argument order.
SCHEMAS: dict[str, str] = {
    "quantize_blockwise": "(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)",
    "dequantize_blockwise": f"({_DQB}) -> Tensor",
    "dequantize_blockwise.out": f"({_DQB}, Tensor(a!) out) -> ()",
    "quantize_4bit": "(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)",
    "dequantize_4bit": f"({_Q4}) -> Tensor",
    "dequantize_4bit.out": f"({_Q4}, Tensor(a!) out) -> ()",
    "gemv_4bit": f"({_GEMV}) -> Tensor",
    "gemv_4bit.out": f"({_GEMV}, Tensor(a!) out) -> ()",
    "gemm_4bit": (
        "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, Tensor? bias=None, "
        "Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor"
    ),
    "int8_linear_matmul": "(Tensor A, Tensor B) -> Tensor",
    "int8_linear_matmul.out": "(Tensor A, Tensor B, Tensor(a!) out) -> ()",
    "int8_mm_dequant": (
        "(Tensor A, Tensor row_stats, Tensor col_stats, ScalarType? dtype=None, Tensor? bias=None) -> Tensor"
    ),
    "int8_scaled_mm": (
        "(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, Tensor? bias=None, ScalarType? dtype=None) -> Tensor"
    ),
    "int8_vectorwise_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)",
    "int8_vectorwise_dequant": "(Tensor A, Tensor stats) -> Tensor",
    "int8_double_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)",
    "int8_mixed_scaled_mm": (
        "(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, Tensor? bias=None)"
        " -> (Tensor, Tensor?)"
    ),
    "optimizer_update_32bit": f"({_OPTIM_32BIT_ARGS}) -> ()",
    "optimizer_update_8bit_blockwise": f"({_OPTIM_8BIT_ARGS}) -> ()",
}

OP_NAMES: tuple[str, ...] = tuple(SCHEMAS)


def qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def op_handle(name: str):
    """The OpOverload for ``name`` (``"dequantize_4bit.out"`` selects the overload)."""
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.kbit, base), overload or "default")


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"kbit.{op}: {msg}")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _check_4bit(op: str, blocksize: int, quant_type: str | None = None) -> None:
    _check(blocksize in formats.FOURBIT_BLOCKSIZES, op, f"blocksize must be one of {formats.FOURBIT_BLOCKSIZES}, got {blocksize}")
    if quant_type is not None:
        _check(quant_type in formats.QUANT_TYPES, op, f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")


def _check_float(op: str, arg: str, dtype: torch.dtype) -> None:
    if dtype not in formats.FLOAT_DTYPES:
        raise TypeError(f"kbit.{op}: {arg} must be float16, bfloat16 or float32, got {dtype}")


def _check_absmax(op: str, absmax: torch.Tensor) -> None:
    if absmax.dtype != torch.float32:
        raise TypeError(f"kbit.{op}: absmax must be float32, got {absmax.dtype}")


def _check_out(op: str, out: torch.Tensor, shape, dtype: torch.dtype, device: torch.device) -> None:
    _check(tuple(out.shape) == tuple(shape), op, f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"kbit.{op}: out must have dtype {dtype}, got {out.dtype}")
    _check(out.device == device, op, f"out must be on {device}, got {out.device}")


def _gemv_shape(A: torch.Tensor, shapeB: Sequence[int]) -> tuple[int, ...]:
    return (*A.shape[:-1], shapeB[0])


# --- fakes ---------------------------------------------------------------------------------------

def _fake_quantize_blockwise(A, code, blocksize):
    _check(blocksize > 0, "quantize_blockwise", f"blocksize must be positive, got {blocksize}")
    _check_float("quantize_blockwise", "A", A.dtype)
    nb = formats.num_blocks(A.numel(), blocksize)
    return torch.empty_like(A, dtype=torch.uint8), A.new_empty((nb,), dtype=torch.float32)


def _fake_dequantize_blockwise(A, absmax, code, blocksize, dtype):
    _check(blocksize > 0, "dequantize_blockwise", f"blocksize must be positive, got {blocksize}")
    _check_float("dequantize_blockwise", "dtype", dtype)
    return torch.empty_like(A, dtype=dtype)


def _fake_dequantize_blockwise_out(A, absmax, code, blocksize, dtype, out):
    _fake_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    _check_out("dequantize_blockwise", out, A.shape, dtype, A.device)


def _fake_quantize_4bit(A, blocksize, quant_type, quant_storage):
    _check_4bit("quantize_4bit", blocksize, quant_type)
    _check_float("quantize_4bit", "A", A.dtype)
    if quant_storage not in formats.PACKED_STORAGE_DTYPES:
        raise TypeError(f"kbit.quantize_4bit: quant_storage must be uint8, float16, bfloat16 or float32, got {quant_storage}")
    n = A.numel()
    count = formats.packed_4bit_numel(n, quant_storage)
    _check(count >= 0, "quantize_4bit", f"{(n + 1) // 2} packed bytes do not fill whole {quant_storage} elements; use quant_storage=torch.uint8 or an element count divisible by {2 * torch.empty((), dtype=quant_storage).element_size()}")
    nb = formats.num_blocks(n, blocksize)
    return A.new_empty((count, 1), dtype=quant_storage), A.new_empty((nb,), dtype=torch.float32)


def _fake_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    _check_4bit("dequantize_4bit", blocksize, quant_type)
    _check_absmax("dequantize_4bit", absmax)
    _check_float("dequantize_4bit", "dtype", dtype)
    return A.new_empty(shape, dtype=dtype)


def _fake_dequantize_4bit_out(A, absmax, blocksize, quant_type, shape, dtype, out):
    _fake_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    _check_out("dequantize_4bit", out, shape, dtype, A.device)


def _fake_gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    _check_4bit("gemv_4bit", blocksize)
    _check_absmax("gemv_4bit", absmax)
    _check_float("gemv_4bit", "A", A.dtype)
    _check(len(shapeB) == 2 and A.shape[-1] == shapeB[1], "gemv_4bit", f"A.shape[-1] must equal shapeB[1], got {tuple(A.shape)} and {tuple(shapeB)}")
    return A.new_empty(_gemv_shape(A, shapeB))


def _fake_gemv_4bit_out(A, B, shapeB, absmax, code, blocksize, out):
    _fake_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    _check_out("gemv_4bit", out, _gemv_shape(A, shapeB), A.dtype, A.device)


def _fake_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    op = "gemm_4bit"
    _check_4bit(op, blocksize, quant_type)
    _check_absmax(op, absmax)
    _check_float(op, "A", A.dtype)
    _check(len(shapeB) == 2, op, f"shapeB must be 2-D (N, K), got {tuple(shapeB)}")
    _check(A.shape[-1] == shapeB[1], op, f"A.shape[-1] must equal shapeB[1], got {tuple(A.shape)} and {tuple(shapeB)}")
    if bias is not None:
        _check(bias.dim() == 1 and bias.shape[0] == shapeB[0], op, f"bias must be 1-D of size {shapeB[0]}, got {tuple(bias.shape)}")
        if bias.dtype != A.dtype:
            raise TypeError(f"kbit.{op}: bias must have A's dtype {A.dtype}, got {bias.dtype}")
    if absmax_8bit is not None:
        _check(absmax_code is not None and absmax_offset is not None, op, "absmax_8bit needs absmax_code and absmax_offset")
        if absmax_8bit.dtype != torch.uint8:
            raise TypeError(f"kbit.{op}: absmax_8bit must be uint8, got {absmax_8bit.dtype}")
        _check(absmax_8bit.dim() == 1, op, f"absmax_8bit must be 1-D, got {tuple(absmax_8bit.shape)}")
        _check(absmax_code.dtype == torch.float32 and tuple(absmax_code.shape) == (256,), op, "absmax_code must be float32 [256]")
        _check(absmax_offset.dtype == torch.float32 and absmax_offset.dim() == 0, op, "absmax_offset must be a 0-dim float32 tensor")
    return A.new_empty(_gemv_shape(A, shapeB))


def _fake_int8_linear_matmul(A, B):
    if A.dtype != torch.int8 or B.dtype != torch.int8:
        raise TypeError(f"kbit.int8_linear_matmul: A and B must be int8, got {A.dtype} and {B.dtype}")
    _check(B.dim() == 2 and A.shape[-1] == B.shape[-1], "int8_linear_matmul", f"need A [..., K] and B [N, K], got {tuple(A.shape)} and {tuple(B.shape)}")
    return A.new_empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32)


def _fake_int8_linear_matmul_out(A, B, out):
    shape = _fake_int8_linear_matmul(A, B).shape
    _check_out("int8_linear_matmul", out, shape, torch.int32, A.device)


def _fake_int8_mm_dequant(A, row_stats, col_stats, dtype=None, bias=None):
    if A.dtype != torch.int32:
        raise TypeError(f"kbit.int8_mm_dequant: A must be int32, got {A.dtype}")
    return torch.empty_like(A, dtype=dtype or torch.float16)


def _fake_int8_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
    shape = _fake_int8_linear_matmul(A, B).shape
    return A.new_empty(shape, dtype=dtype or torch.float16)


def _fake_int8_vectorwise_quant(A, threshold=0.0):
    _check_float("int8_vectorwise_quant", "A", A.dtype)
    K = A.shape[-1] if A.dim() else 1
    rows = A.numel() // K if K else 0
    out = torch.empty_like(A, dtype=torch.int8)
    stats = A.new_empty((rows,), dtype=torch.float32)
    if threshold == 0.0:
        return out, stats, None
    cols = A.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)
    return out, stats, cols


def _fake_int8_vectorwise_dequant(A, stats):
    if A.dtype != torch.int8:
        raise TypeError(f"kbit.int8_vectorwise_dequant: A must be int8, got {A.dtype}")
    return torch.empty_like(A, dtype=torch.float32)


def _fake_int8_double_quant(A, threshold=0.0):
    out_row, row_stats, cols = _fake_int8_vectorwise_quant(A, threshold)
    col_stats = A.new_empty((A.shape[-1] if A.dim() else 1,), dtype=torch.float32)
    return out_row, torch.empty_like(out_row), row_stats, col_stats, cols


def _fake_int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    out = A.new_empty((*CA.shape[:-1], CB.shape[0]))
    n_out = outlier_cols.shape[0] if outlier_cols is not None else 0
    rows = CA.numel() // CA.shape[-1] if CA.shape[-1] else 0
    return out, A.new_empty((rows, n_out))


def _fake_optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    _check_float("optimizer_update_32bit", "p", p.dtype)
    if g.dtype != p.dtype:
        raise TypeError(f"kbit.optimizer_update_32bit: g must have p's dtype {p.dtype}, got {g.dtype}")


def _fake_optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    op = "optimizer_update_8bit_blockwise"
    _check_float(op, "p", p.dtype)
    if g.dtype != p.dtype:
        raise TypeError(f"kbit.{op}: g must have p's dtype {p.dtype}, got {g.dtype}")
    for name, t in (("state1", state1), ("state2", state2)):
        if t is not None and t.dtype != torch.uint8:
            raise TypeError(f"kbit.{op}: {name} must be uint8, got {t.dtype}")
    for name, t in (("qmap1", qmap1), ("qmap2", qmap2), ("absmax1", absmax1), ("absmax2", absmax2)):
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"kbit.{op}: {name} must be float32, got {t.dtype}")


FAKES = {
    "quantize_blockwise": _fake_quantize_blockwise,
    "dequantize_blockwise": _fake_dequantize_blockwise,
    "dequantize_blockwise.out": _fake_dequantize_blockwise_out,
    "quantize_4bit": _fake_quantize_4bit,
    "dequantize_4bit": _fake_dequantize_4bit,
    "dequantize_4bit.out": _fake_dequantize_4bit_out,
    "gemv_4bit": _fake_gemv_4bit,
    "gemv_4bit.out": _fake_gemv_4bit_out,
    "gemm_4bit": _fake_gemm_4bit,
    "int8_linear_matmul": _fake_int8_linear_matmul,
    "int8_linear_matmul.out": _fake_int8_linear_matmul_out,
    "int8_mm_dequant": _fake_int8_mm_dequant,
    "int8_scaled_mm": _fake_int8_scaled_mm,
    "int8_vectorwise_quant": _fake_int8_vectorwise_quant,
    "int8_vectorwise_dequant": _fake_int8_vectorwise_dequant,
    "int8_double_quant": _fake_int8_double_quant,
    "int8_mixed_scaled_mm": _fake_int8_mixed_scaled_mm,
    "optimizer_update_32bit": _fake_optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": _fake_optimizer_update_8bit_blockwise,
}


def _define_all() -> None:
    for name, schema in SCHEMAS.items():
        torch.library.define(qualname(name), schema)
        torch.library.register_fake(qualname(name), FAKES[name])


_define_all()

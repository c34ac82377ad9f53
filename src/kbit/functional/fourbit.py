"""4-bit (NF4/FP4) quantization, dequantization and the batch-1 matvec (SPEC §2–§4, §8)."""

from __future__ import annotations

import torch

from .. import formats
from . import checks
from .blockwise import _copy_into, denested_absmax, quantize_blockwise
from .codebooks import get_4bit_type
from .quant_state import QuantState


def quantize_4bit(A: torch.Tensor, absmax=None, out=None, blocksize=None, compress_statistics: bool = False, quant_type: str = "fp4", quant_storage=torch.uint8):
    """Quantize ``A`` (f16/bf16/f32, any shape) to packed 4-bit codes.

    Returns (packed ``[ceil(n/2) / itemsize, 1]`` tensor of ``quant_storage``, QuantState). Packing:
    flattened row-major, element 2i in the high nibble of byte i (kbit.formats). blocksize default 64.
    compress_statistics=True quantizes the absmax values again (8-bit, blocksize 256, offset = mean).
    """
    fn = "quantize_4bit"
    checks.float_tensor(fn, "A", A)
    blocksize = checks.blocksize_4bit(fn, blocksize)
    checks.quant_type(fn, quant_type)
    if quant_storage not in formats.PACKED_STORAGE_DTYPES:
        raise TypeError(f"kbit.{fn}: quant_storage must be uint8, float16, bfloat16 or float32, got {quant_storage}")
    if formats.packed_4bit_numel(A.numel(), quant_storage) < 0:
        itemsize = torch.empty((), dtype=quant_storage).element_size()
        raise ValueError(
            f"kbit.{fn}: A has {A.numel()} elements; packing into {quant_storage} needs a multiple of {2 * itemsize} "
            "(use quant_storage=torch.uint8 for any size)"
        )
    checks.finite(fn, "A", A)
    packed, scales = torch.ops.kbit.quantize_4bit(A, blocksize, quant_type, quant_storage)
    code = get_4bit_type(quant_type, device=A.device)
    if compress_statistics:
        offset = scales.mean() if scales.numel() else scales.new_zeros(())
        qscales, state2 = quantize_blockwise(scales - offset, blocksize=formats.NESTED_BLOCKSIZE)
        state = QuantState(absmax=qscales, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=code, quant_type=quant_type, offset=offset, state2=state2)
    else:
        state = QuantState(absmax=scales, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=code, quant_type=quant_type)
    if absmax is not None:
        state.absmax = _copy_into(fn, "absmax", absmax, state.absmax)
    return _copy_into(fn, "out", out, packed), state


def _packed_bytes(A: torch.Tensor) -> int:
    return A.numel() * A.element_size()


def dequantize_4bit(A: torch.Tensor, quant_state=None, absmax=None, out=None, blocksize=None, quant_type: str = "fp4"):
    """Dequantize packed 4-bit ``A`` to ``quant_state.shape`` in ``quant_state.dtype``.

    Without quant_state, pass absmax and out (shape and dtype come from out). For a 2-D ``[1, X]``
    packed input (X > 1, a transposed view of the usual ``[X, 1]``) the result is transposed, as in
    bitsandbytes.
    """
    fn = "dequantize_4bit"
    checks.tensor(fn, "A", A, formats.PACKED_STORAGE_DTYPES)
    if quant_state is None:
        if absmax is None or out is None:
            raise ValueError(f"kbit.{fn}: pass quant_state, or both absmax and out")
        quant_state = QuantState(absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=checks.blocksize_4bit(fn, blocksize), quant_type=checks.quant_type(fn, quant_type))
    elif not isinstance(quant_state, QuantState):
        raise TypeError(f"kbit.{fn}: quant_state must be a QuantState, got {type(quant_state).__name__}")
    checks.quant_type(fn, quant_state.quant_type)
    checks.blocksize_4bit(fn, quant_state.blocksize)
    scales = denested_absmax(quant_state)
    checks.tensor(fn, "absmax", scales, (torch.float32,))
    checks.same_device(fn, A=A, absmax=scales, out=out)
    shape = tuple(quant_state.shape)
    n = torch.Size(shape).numel()
    if _packed_bytes(A) < (n + 1) // 2:
        raise ValueError(f"kbit.{fn}: A holds {_packed_bytes(A)} bytes, shape {shape} needs {(n + 1) // 2}")
    need = formats.num_blocks(n, quant_state.blocksize)
    if scales.numel() != need:
        raise ValueError(f"kbit.{fn}: absmax must have {need} entries for shape {shape} and blocksize {quant_state.blocksize}, got {scales.numel()}")
    transpose = A.dim() == 2 and A.shape[0] == 1 and A.shape[1] > 1
    if out is not None:
        checks.float_tensor(fn, "out", out)
        torch.ops.kbit.dequantize_4bit.out(A, scales, quant_state.blocksize, quant_state.quant_type, shape, out.dtype, out)
        result = out
    else:
        dtype = quant_state.dtype if quant_state.dtype is not None else torch.float32
        checks.float_tensor(fn, "quant_state.dtype", torch.empty(0, dtype=dtype))
        result = torch.ops.kbit.dequantize_4bit(A, scales, quant_state.blocksize, quant_state.quant_type, shape, dtype)
    return result.t() if transpose else result


def quantize_fp4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_fp4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


def gemv_4bit(A: torch.Tensor, B: torch.Tensor, out=None, transposed_A=False, transposed_B=False, state=None):
    """``A @ W.T`` for one row of activations: A ``[..., K]`` whose leading dims multiply to 1, B the packed
    weight of ``state.shape == (N, K)``. Returns ``(*A.shape[:-1], N)`` in A.dtype (float32 accumulation).
    """
    fn = "gemv_4bit"
    if state is None:
        raise ValueError(f"kbit.{fn}: state (the weight's QuantState) is required")
    checks.float_tensor(fn, "A", A)
    checks.tensor(fn, "B", B, formats.PACKED_STORAGE_DTYPES)
    if state.shape is None or len(state.shape) != 2:
        raise ValueError(f"kbit.{fn}: state.shape must be 2-D (N, K), got {state.shape}")
    N, K = state.shape
    if A.dim() == 0 or A.shape[-1] != K or A.numel() != K:
        raise ValueError(f"kbit.{fn}: A must be [..., {K}] with leading dims multiplying to 1, got {tuple(A.shape)}")
    if _packed_bytes(B) < (N * K + 1) // 2:
        raise ValueError(f"kbit.{fn}: B holds {_packed_bytes(B)} bytes, shape {(N, K)} needs {(N * K + 1) // 2}")
    scales = denested_absmax(state)
    code = state.code.to(torch.float32)
    checks.same_device(fn, A=A, B=B, absmax=scales, code=code, out=out)
    if scales.numel() != formats.num_blocks(N * K, state.blocksize):
        raise ValueError(f"kbit.{fn}: absmax must have {formats.num_blocks(N * K, state.blocksize)} entries, got {scales.numel()}")
    A = A.contiguous()
    if out is not None:
        torch.ops.kbit.gemv_4bit.out(A, B, [N, K], scales, code, state.blocksize, out)
        return out
    return torch.ops.kbit.gemv_4bit(A, B, [N, K], scales, code, state.blocksize)

"""8-bit blockwise quantization with a 256-entry code (SPEC §3, §8)."""

from __future__ import annotations

import warnings

import torch

from .. import formats
from . import checks
from .codebooks import dynamic_map
from .quant_state import QuantState


def _copy_into(fn: str, name: str, dst, src: torch.Tensor):
    if dst is None:
        return src
    warnings.warn(f"kbit.{fn}: passing {name}= is deprecated; use the returned tensor", FutureWarning, stacklevel=3)
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"kbit.{fn}: {name} must have shape {tuple(src.shape)} and dtype {src.dtype}, got {tuple(dst.shape)} {dst.dtype}")
    return dst.copy_(src)


def quantize_blockwise(A: torch.Tensor, code=None, absmax=None, out=None, blocksize: int = formats.BLOCKWISE_DEFAULT_BLOCKSIZE, nested: bool = False):
    """Quantize ``A`` (f16/bf16/f32, any shape) to uint8 codes of ``code`` (default: signed dynamic map).

    Blocks are ``blocksize`` consecutive elements of the flattened tensor. Returns (u8 tensor of A's
    shape, QuantState with f32 absmax [ceil(n / blocksize)] — or, nested, u8 codes of absmax - mean
    quantized again with the same blocksize).
    """
    fn = "quantize_blockwise"
    checks.float_tensor(fn, "A", A)
    blocksize = checks.blocksize_8bit(fn, blocksize)
    code = dynamic_map(A.device) if code is None else code
    checks.code_map(fn, code)
    checks.same_device(fn, A=A, code=code)
    checks.finite(fn, "A", A)
    q, scales = torch.ops.kbit.quantize_blockwise(A, code, blocksize)
    if nested:
        offset = scales.mean() if scales.numel() else scales.new_zeros(())
        qscales, state2 = quantize_blockwise(scales - offset, blocksize=blocksize, nested=False)
        state = QuantState(absmax=qscales, code=code.clone(), blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2)
    else:
        state = QuantState(absmax=scales, code=code.clone(), blocksize=blocksize, dtype=A.dtype)
    if absmax is not None:
        state.absmax = _copy_into(fn, "absmax", absmax, state.absmax)
    return _copy_into(fn, "out", out, q), state


def denested_absmax(state: QuantState) -> torch.Tensor:
    """The f32 per-block absmax of ``state``, dequantizing nested statistics when present."""
    if not state.nested:
        return state.absmax
    return dequantize_blockwise(state.absmax, state.state2).float() + state.offset


def dequantize_blockwise(A: torch.Tensor, quant_state=None, absmax=None, code=None, out=None, blocksize: int = formats.BLOCKWISE_DEFAULT_BLOCKSIZE, nested: bool = False):
    """Dequantize u8 codes ``A``: ``code[A] * absmax[i // blocksize]`` with A's shape.

    Output dtype: quant_state.dtype, else ``out.dtype`` if given, else float32.
    """
    fn = "dequantize_blockwise"
    checks.tensor(fn, "A", A, (torch.uint8,))
    if quant_state is None:
        if absmax is None:
            raise ValueError(f"kbit.{fn}: pass quant_state, or absmax (and code/blocksize)")
        code = dynamic_map(A.device) if code is None else code
        quant_state = QuantState(absmax=absmax, code=code, blocksize=checks.blocksize_8bit(fn, blocksize), dtype=torch.float32)
    elif not isinstance(quant_state, QuantState):
        raise TypeError(f"kbit.{fn}: quant_state must be a QuantState, got {type(quant_state).__name__}")
    scales = denested_absmax(quant_state)
    checks.tensor(fn, "absmax", scales, (torch.float32,))
    checks.code_map(fn, quant_state.code)
    checks.same_device(fn, A=A, absmax=scales, code=quant_state.code, out=out)
    need = formats.num_blocks(A.numel(), quant_state.blocksize)
    if scales.numel() < need:
        raise ValueError(f"kbit.{fn}: absmax must have at least {need} entries for {A.numel()} values and blocksize {quant_state.blocksize}, got {scales.numel()}")
    A = A.contiguous()
    if out is not None:
        checks.float_tensor(fn, "out", out)
        torch.ops.kbit.dequantize_blockwise.out(A, scales, quant_state.code, quant_state.blocksize, out.dtype, out)
        return out
    dtype = quant_state.dtype if quant_state.dtype is not None else torch.float32
    return torch.ops.kbit.dequantize_blockwise(A, scales, quant_state.code, quant_state.blocksize, dtype)

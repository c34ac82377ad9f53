"""``matmul_4bit``: ``A @ W.T + bias`` with W a frozen 4-bit weight (QLoRA's base layers), SPEC §4."""

from __future__ import annotations

import warnings

import torch

from .. import formats
from ..functional.fourbit import dequantize_4bit
from ..functional.quant_state import QuantState
from . import _float


class MatMul4Bit(torch.autograd.Function):
    """Forward: the gemm_4bit op (as without autograd). Backward: grad_A = grad_out @ W,
    grad_bias = sum over leading dims.

    The weight gets no gradient: it is frozen.
    """

    @staticmethod
    def forward(ctx, A, B, out, bias, quant_state):
        output = _gemm(A, B, quant_state, bias) if A.numel() else A.new_empty((*A.shape[:-1], quant_state.shape[0]))
        ctx.quant_state = quant_state
        ctx.save_for_backward(B)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        if out is not None:
            out.copy_(output)
            return out
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (B,) = ctx.saved_tensors
        grad_A = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_A = _float.matmul(grad_output, dequantize_4bit(B, ctx.quant_state).to(grad_output.dtype))
        if ctx.needs_input_grad[3]:
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_A, None, None, grad_bias, None


def _gemm(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias):
    if quant_state.nested:
        if quant_state.state2.blocksize != formats.NESTED_BLOCKSIZE:
            raise NotImplementedError(
                f"kbit.matmul_4bit: nested statistics need state2.blocksize {formats.NESTED_BLOCKSIZE}, got {quant_state.state2.blocksize}"
            )
        # The op takes the u8 codes as absmax_8bit and the second-level scales as absmax.
        absmax, absmax_8bit = quant_state.state2.absmax, quant_state.absmax
        absmax_code, absmax_offset = quant_state.state2.code, quant_state.offset
    else:
        absmax, absmax_8bit, absmax_code, absmax_offset = quant_state.absmax, None, None, None
    shape = list(quant_state.shape)
    if bias is not None:
        bias = bias.to(A.dtype)
    return torch.ops.kbit.gemm_4bit(A, B, shape, absmax, quant_state.blocksize, quant_state.quant_type, bias, absmax_8bit, absmax_code, absmax_offset)


def matmul_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, out=None, bias=None):
    """``A @ W.T + bias``: A ``[..., K]`` float, B the packed weight with ``quant_state.shape == (N, K)``.

    Returns ``(*A.shape[:-1], N)`` in A.dtype, written into ``out`` when given. Differentiable with
    respect to A and bias.
    """
    if quant_state is None or not isinstance(quant_state, QuantState):
        raise ValueError("kbit.matmul_4bit: quant_state (the weight's QuantState) is required")
    if quant_state.shape is None or len(quant_state.shape) != 2:
        raise ValueError(f"kbit.matmul_4bit: quant_state.shape must be 2-D (N, K), got {quant_state.shape}")
    N, K = quant_state.shape
    B = B.reshape(-1, 1)
    if A.shape[-1] != K:
        if A.shape[-1] == N and N != K:
            warnings.warn(
                "kbit.matmul_4bit: the weight was quantized as [K, N] (in_features, out_features). "
                "Re-quantize from the weight in [N, K] (out_features, in_features) orientation.",
                DeprecationWarning,
                stacklevel=2,
            )
            W = dequantize_4bit(B, quant_state).to(A.dtype)
            result = torch.nn.functional.linear(A, W.t(), bias)
            return out.copy_(result) if out is not None else result
        raise ValueError(f"kbit.matmul_4bit: A.shape[-1] must be {K} (in_features), got {tuple(A.shape)}")
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        if A.numel() == 0:
            result = A.new_empty((*A.shape[:-1], N))
        else:
            result = _gemm(A, B, quant_state, bias)
        return out.copy_(result) if out is not None else result
    return MatMul4Bit.apply(A, B, out, bias, quant_state)


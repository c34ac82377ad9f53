"""LLM.int8() matmul (Dettmers et al. 2022) with outlier decomposition, SPEC §5.

``matmul(A, B, state=...)`` computes ``A @ W.T + bias`` where W is a float weight (quantized to int8
row-wise on the fly) or already int8 (``state.CB`` / ``state.SCB``). Input columns holding any
``|a| >= threshold`` are multiplied in float; the rest in int8 with int32 accumulation.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import torch

from ..functional import int8 as F8
from . import _float

log = logging.getLogger("kbit")

_REMOVED_STATE_ATTRS = ("CxB", "CxBt", "formatB", "_tile_indices")


@dataclasses.dataclass
class MatmulLtState:
    """Weights and settings of one LLM.int8() layer (CB: int8 weight [N, K], SCB: f32 row absmax [N])."""

    force_no_igemmlt: bool = False
    CB: torch.Tensor | None = None
    SB: torch.Tensor | None = None
    SCB: torch.Tensor | None = None
    SBt: torch.Tensor | None = None
    CBt: torch.Tensor | None = None
    subB: torch.Tensor | None = None
    outlier_pool: object = None
    has_accumulated_gradients: bool = False
    threshold: float = 0.0
    idx: torch.Tensor | None = None
    is_training: bool = True
    has_fp16_weights: bool = True
    use_pool: bool = False

    def reset_grads(self) -> None:
        self.CB = self.SB = self.SCB = self.SBt = self.CBt = None

    def __getattr__(self, name):
        if name in _REMOVED_STATE_ATTRS:
            warnings.warn(f"MatmulLtState.{name} was removed and always reads as None", FutureWarning, stacklevel=2)
            return None
        raise AttributeError(f"'MatmulLtState' object has no attribute {name!r}")


def _dequantized_weight(state: MatmulLtState, dtype: torch.dtype) -> torch.Tensor:
    if state.CB is None:
        raise RuntimeError("kbit.matmul: the int8 weight (state.CB) is gone; cannot compute the input gradient")
    return torch.ops.kbit.int8_vectorwise_dequant(state.CB, state.SCB).to(dtype)


def _quantize_weight(B: torch.Tensor, state: MatmulLtState) -> None:
    CB, SCB, _ = F8.int8_vectorwise_quant(B.contiguous().to(torch.float16))
    state.CB, state.SCB = CB, SCB


class MatMul8bitLt(torch.autograd.Function):
    """int8 x int8 -> int32 matmul with row/column scales; float outlier columns when threshold > 0."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):
        state = state or MatmulLtState()
        ctx.state = state
        N = B.shape[0] if state.CB is None else state.CB.shape[0]
        if A.numel() == 0:
            ctx.save_for_backward(None, None)
            ctx.empty = True
            return torch.empty(*A.shape[:-1], N, dtype=A.dtype, device=A.device)
        ctx.empty = False
        input_dtype = A.dtype
        if input_dtype != torch.float16 and not torch.compiler.is_compiling():  # dynamo cannot trace logging
            log.debug("kbit.matmul: inputs will be cast from %s to float16 during quantization", input_dtype)
        A2 = A.reshape(-1, A.shape[-1]).to(torch.float16)
        CA, SCA, outlier_cols = F8.int8_vectorwise_quant(A2, threshold=state.threshold)
        if state.has_fp16_weights or state.CB is None:
            if (state.is_training and B.grad is None) or state.CB is None or state.SCB is None:
                _quantize_weight(B, state)
        bias16 = bias.to(torch.float16) if bias is not None else None
        if state.threshold > 0.0 and outlier_cols is not None:
            state.idx = outlier_cols
            out2, _ = torch.ops.kbit.int8_mixed_scaled_mm(A2, CA, state.CB, SCA, state.SCB, outlier_cols, bias16)
        else:
            out2 = torch.ops.kbit.int8_scaled_mm(CA, state.CB, SCA, state.SCB, bias16, torch.float16)
        result = out2.to(input_dtype).view(*A.shape[:-1], -1)
        ctx.grad_shapes = (A.shape, bias.dtype if bias is not None else None)
        ctx.save_for_backward(A if ctx.needs_input_grad[1] else None, B if ctx.needs_input_grad[0] else None)
        if out is not None:
            return out.copy_(result)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.empty:
            return None, None, None, None, None
        A, _ = ctx.saved_tensors
        state = ctx.state
        _, bias_dtype = ctx.grad_shapes
        grad_A = grad_B = grad_bias = None
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[3]:
            grad_bias = g2.sum(0, dtype=torch.float32).to(bias_dtype)
        if ctx.needs_input_grad[0]:
            grad_A = _float.matmul(g2, _dequantized_weight(state, grad_output.dtype)).view(*grad_output.shape[:-1], -1)
        if ctx.needs_input_grad[1]:
            grad_B = _float.matmul(g2.t(), A.reshape(-1, A.shape[-1]).to(grad_output.dtype)).to(A.dtype)
        return grad_A, grad_B, None, grad_bias, None


class MatMul8bitFp(torch.autograd.Function):
    """Training on CPU/XPU: dequantize the int8 weight and use a float matmul (exact float gradients)."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):
        if state.CB is None or (state.has_fp16_weights and state.is_training):
            _quantize_weight(B, state)
        W = _dequantized_weight(state, A.dtype)
        ctx.state = state
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(A if ctx.needs_input_grad[1] else None)
        result = _float.linear(A, W, bias.to(A.dtype) if bias is not None else None)
        return out.copy_(result) if out is not None else result

    @staticmethod
    def backward(ctx, grad_output):
        (A,) = ctx.saved_tensors
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        grad_A = grad_B = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_A = _float.matmul(grad_output, _dequantized_weight(ctx.state, grad_output.dtype))
        if ctx.needs_input_grad[1]:
            grad_B = _float.matmul(g2.t(), A.reshape(-1, A.shape[-1]).to(grad_output.dtype)).to(A.dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = g2.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_A, grad_B, None, grad_bias, None


def matmul(A: torch.Tensor, B: torch.Tensor, out=None, state: MatmulLtState | None = None, threshold: float = 0.0, bias=None):
    """``A @ W.T + bias`` with LLM.int8(): A ``[..., K]`` float, B the weight ``[N, K]`` (float, or int8 with
    ``state.CB``/``state.SCB`` set). Returns ``(*A.shape[:-1], N)`` in A.dtype. threshold > 0 sets
    ``state.threshold`` (outlier decomposition). Training on CPU/XPU uses a dequantized float matmul.
    """
    state = state or MatmulLtState()
    if threshold > 0.0:
        state.threshold = threshold
    if not isinstance(A, torch.Tensor) or not A.is_floating_point():
        raise TypeError(f"kbit.matmul: A must be a floating-point tensor, got {getattr(A, 'dtype', type(A).__name__)}")
    K = state.CB.shape[1] if state.CB is not None else B.shape[-1]
    if A.shape[-1] != K:
        raise ValueError(f"kbit.matmul: A.shape[-1] must be {K} (the weight's in_features), got {tuple(A.shape)}")
    if state.is_training and A.device.type in ("cpu", "xpu"):
        return MatMul8bitFp.apply(A, B, out, bias, state)
    return MatMul8bitLt.apply(A, B, out, bias, state)

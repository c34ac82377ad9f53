"""Autograd functions over the kbit ops: gradients flow to activations and bias through frozen quantized weights."""

from .matmul_4bit import MatMul4Bit, matmul_4bit

__all__ = ["MatMul4Bit", "matmul_4bit"]

"""Embeddings: 4-bit and 8-bit quantized tables, and the Xavier/LayerNorm ones with 32-bit optimizer state (SPEC §6)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .. import formats
from ..functional.fourbit import dequantize_4bit
from ..functional.quant_state import QuantState
from .int8_params import Int8Params
from .params4bit import Params4bit


def _register_32bit_state(module: torch.nn.Module) -> None:
    """Ask kbit's 8-bit optimizers to keep 32-bit state for this embedding's weight (if kbit.optim is present)."""
    try:
        from ..optim import GlobalOptimManager
    except ImportError:
        return
    GlobalOptimManager.get_instance().register_module_override(module, "weight", {"optim_bits": 32})


class StableEmbedding(torch.nn.Embedding):
    """Embedding + LayerNorm with Xavier-uniform init; its weight keeps 32-bit optimizer state."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight, device, dtype)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)
        _register_32bit_state(self)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        emb = F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


class Embedding(torch.nn.Embedding):
    """A plain embedding with Xavier-uniform init whose weight keeps 32-bit optimizer state."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None, device=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight, device=device)
        _register_32bit_state(self)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()


class _NoSave:
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise NotImplementedError(f"kbit.nn.{type(self).__name__}: saving is not supported; save the float weights instead")


class Embedding4bit(_NoSave, torch.nn.Embedding):
    """Embedding table quantized to 4 bits (blocksize 64, no nested statistics).

    When embedding_dim is a multiple of 64 each looked-up row is dequantized alone (its packed bytes
    and absmax values are gathered); otherwise the whole table is dequantized per call.
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_type="fp4", quant_storage=torch.uint8, device=None):
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.blocksize = formats.FOURBIT_DEFAULT_BLOCKSIZE
        if embedding_dim % self.blocksize:
            warnings.warn(
                f"kbit.nn.Embedding4bit: embedding_dim {embedding_dim} is not a multiple of blocksize {self.blocksize}; "
                "every lookup dequantizes the whole table",
                UserWarning,
                stacklevel=2,
            )
        self.weight = Params4bit(self.weight.data, requires_grad=False, compress_statistics=False, quant_type=quant_type, quant_storage=quant_storage, module=self)

    def _ensure_quantized(self) -> None:
        if not self.weight.bnb_quantized:
            self.weight = self.weight._quantize(self.weight.device)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._ensure_quantized()
        qs: QuantState = self.weight.quant_state
        if self.embedding_dim % self.blocksize:
            table = dequantize_4bit(self.weight, qs)
            return F.embedding(input, table).to(self.dtype)
        flat = input.reshape(-1)
        row_bytes = self.embedding_dim // 2
        packed = self.weight.data.reshape(-1).view(torch.uint8).view(self.num_embeddings, row_bytes)
        blocks = self.embedding_dim // self.blocksize
        absmax = qs.absmax.view(self.num_embeddings, blocks)
        rows_qs = QuantState(
            absmax=absmax[flat].reshape(-1),
            shape=(flat.numel(), self.embedding_dim),
            code=qs.code,
            blocksize=self.blocksize,
            quant_type=qs.quant_type,
            dtype=self.dtype,
        )
        rows = dequantize_4bit(packed[flat].reshape(-1, 1), rows_qs)
        return rows.view(*input.shape, self.embedding_dim)


class EmbeddingFP4(Embedding4bit):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=torch.uint8, device=None):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage, device=device)


class EmbeddingNF4(Embedding4bit):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=torch.uint8, device=None):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage, device=device)


class Embedding8bit(_NoSave, torch.nn.Embedding):
    """Embedding table in row-wise int8: ``embedding(idx, CB) * embedding(idx, SCB) / 127``."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Int8Params(self.weight.data, has_fp16_weights=False, requires_grad=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.int8:
            self.weight = self.weight._quantize(self.weight.device)
        CB, SCB = self.weight.data, self.weight.SCB
        rows = F.embedding(input, CB).to(torch.float32)
        scales = F.embedding(input, SCB.view(-1, 1)).to(torch.float32)
        return (rows * scales / formats.INT8_MAX).to(self.dtype)

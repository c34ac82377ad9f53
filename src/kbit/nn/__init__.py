"""Quantized modules: 4-bit (QLoRA) and 8-bit (LLM.int8()) linears and embeddings, bitsandbytes-compatible."""

from . import parametrize
from .embedding import Embedding, Embedding4bit, Embedding8bit, EmbeddingFP4, EmbeddingNF4, StableEmbedding
from .int8_params import Int8Params
from .linear4bit import Linear4bit, LinearFP4, LinearNF4
from .linear8bitlt import Linear8bitLt
from .lora import LoRALinear, add_lora
from .outlier_aware import OutlierAwareLinear
from .params4bit import Params4bit
from .quantize_model import QuantConfig, quantize_model

__all__ = [
    "Embedding",
    "Embedding4bit",
    "Embedding8bit",
    "EmbeddingFP4",
    "EmbeddingNF4",
    "Int8Params",
    "Linear4bit",
    "Linear8bitLt",
    "LinearFP4",
    "LinearNF4",
    "LoRALinear",
    "OutlierAwareLinear",
    "Params4bit",
    "QuantConfig",
    "StableEmbedding",
    "add_lora",
    "parametrize",
    "quantize_model",
]

"""kbit.nn embeddings: quantized lookups against the dequantized table; SPEC §9 module bounds."""

from __future__ import annotations

import pytest
import torch

import kbit.functional as F
from kbit.nn import Embedding, Embedding4bit, Embedding8bit, EmbeddingFP4, EmbeddingNF4, StableEmbedding


def loaded(cls, weight, **kw):
    m = cls(weight.shape[0], weight.shape[1], **kw)
    m.load_state_dict({"weight": weight})
    return m.to("cpu")


@pytest.mark.parametrize("dim", [128, 96])
@pytest.mark.parametrize("cls", [EmbeddingNF4, EmbeddingFP4])
def test_4bit_lookup_equals_dequantized_table(cls, dim):
    W = torch.randn(50, dim)
    if dim % 64:
        with pytest.warns(UserWarning, match="not a multiple"):
            m = loaded(cls, W)
    else:
        m = loaded(cls, W)
    idx = torch.tensor([[0, 7, 49], [3, 3, 1]])
    table = F.dequantize_4bit(m.weight, m.weight.quant_state)
    assert torch.equal(m(idx), table[idx])


def test_lossless_and_uniform_bounds():
    ones = torch.randint(0, 2, (64, 128)).float() * 2 - 1
    idx = torch.arange(64)
    assert torch.equal(loaded(Embedding4bit, ones, quant_type="nf4")(idx), ones)
    assert torch.equal(loaded(Embedding8bit, ones)(idx), ones)
    U = torch.rand(64, 128)
    assert (loaded(Embedding4bit, U, quant_type="nf4")(idx) - U).abs().max() < 0.20
    assert (loaded(Embedding8bit, U)(idx) - U).abs().max() < 0.05


def test_8bit_dtype_and_saving_is_refused():
    m = loaded(Embedding8bit, torch.randn(10, 64).half(), dtype=torch.float16)
    assert m(torch.tensor([1, 2])).dtype == torch.float16
    for mod in (m, loaded(Embedding4bit, torch.randn(10, 64))):
        with pytest.raises(NotImplementedError, match="saving"):
            mod.state_dict()


def test_stable_embedding_and_embedding():
    m = StableEmbedding(20, 16, padding_idx=0)
    assert torch.equal(m.weight[0], torch.zeros(16))
    y = m(torch.tensor([[0, 5, 19]]))
    assert y.shape == (1, 3, 16)
    torch.testing.assert_close(y.mean(-1), torch.zeros(1, 3) + m.norm.bias.mean(), atol=1e-5, rtol=0)
    e = Embedding(20, 16)
    bound = (6 / (20 + 16)) ** 0.5
    assert e.weight.abs().max() <= bound

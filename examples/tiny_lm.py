"""A tiny decoder-only language model over bytes, defined here so the demo and tests need no downloads."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class TinyConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 768
    max_len: int = 128


class Block(torch.nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = torch.nn.LayerNorm(cfg.d_model)
        self.qkv = torch.nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = torch.nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = torch.nn.LayerNorm(cfg.d_model)
        self.up = torch.nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = torch.nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        heads = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyCausalLM(torch.nn.Module):
    def __init__(self, cfg: TinyConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TinyConfig()
        self.embed = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = torch.nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = torch.nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = torch.nn.LayerNorm(cfg.d_model)
        self.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.embed(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), idx[:, 1:].reshape(-1))

    @torch.no_grad()
    def generate(self, prompt: str, n_new: int = 40) -> str:
        idx = torch.tensor([list(prompt.encode())], dtype=torch.long)
        for _ in range(n_new):
            logits = self(idx[:, -self.cfg.max_len:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return bytes(idx[0].tolist()).decode(errors="replace")


def encode(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.long)


def batches(data: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
    """Endless random windows of ``seq_len + 1`` tokens."""
    while True:
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
        yield torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])

"""Building blocks of the GPT model: norms, rotary embeddings, attention and the feed-forward MLP.

Projections are separate ``nn.Linear`` modules (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``;
``up_proj``, ``gate_proj``, ``down_proj``) so that growth operators can address each one by name,
as they do for Hugging Face Llama-family models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.model.config import ModelConfig


def build_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(dim, eps=config.norm_eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), rotate-half convention.

    ``rope_scale`` > 1 divides positions by that factor (position interpolation, Chen et al. 2023),
    one way of growing the context length of a RoPE model.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = config.rope_base
        self.scale = config.rope_scale
        self._build(config.seq_len)

    def _build(self, seq_len: int, device: torch.device | None = None) -> None:
        inv_freq = 1.0 / (
            self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)
        )
        positions = torch.arange(seq_len, dtype=torch.float32, device=device) / self.scale
        angles = torch.outer(positions, inv_freq)  # [T, head_dim/2]
        angles = torch.cat([angles, angles], dim=-1)  # [T, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape [B, H, T, head_dim]."""
        T = x.shape[-2]
        if T > self.cos.shape[0]:
            self._build(T, device=x.device)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_attn, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, config.d_kv, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, config.d_kv, bias=config.bias)
        self.o_proj = nn.Linear(config.d_attn, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rope(q), rope(k)
        if self.n_kv_head != self.n_head:  # grouped-query attention: each kv head serves a group of q heads
            repeat = self.n_head // self.n_kv_head
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """Feed-forward network: GELU (GPT-2) or SwiGLU (Shazeer 2020, eq. 6: ``(silu(x W) * x V) W2``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        if self.swiglu:
            self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x), approximate="tanh")
        return self.down_proj(h)

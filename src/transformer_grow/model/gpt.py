"""A decoder-only, pre-norm Transformer language model (nanoGPT / Llama tradition).

Blocks live in an ``nn.ModuleDict`` keyed by *stable ids*, iterated in dict order. Inserting a
block (depth growth) gives it a fresh id and leaves every existing parameter name unchanged, so
parameter maps and optimizer state can be keyed by name across growth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.model.config import ModelConfig
from transformer_grow.model.layers import (
    MLP,
    CausalSelfAttention,
    LinearCrossEntropy,
    RotaryEmbedding,
    build_norm,
    fused_head_loss_applies,
)


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None  # mean next-token cross-entropy (when targets are given)
    aux_loss: torch.Tensor  # MoE load-balancing loss summed over layers (0 for dense models)


def build_ffn(config: ModelConfig) -> nn.Module:
    if config.n_expert:
        from transformer_grow.model.moe import MoE

        return MoE(config)
    return MLP(config)


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = build_norm(config)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = build_norm(config)
        self.mlp = build_ffn(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), rope))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class GPT(nn.Module):
    """Decoder-only Transformer LM configured by :class:`ModelConfig`.

    ``block_keys`` names the blocks in order (default ``"0" .. "n_layer-1"``); growth operators pass
    the keys of the grown model so that old parameters keep their names.
    """

    def __init__(self, config: ModelConfig, block_keys: Iterable[str] | None = None):
        super().__init__()
        self.config = config
        keys = [str(k) for k in block_keys] if block_keys is not None else [str(i) for i in range(config.n_layer)]
        if len(keys) != config.n_layer or len(set(keys)) != len(keys):
            raise ValueError(f"block_keys must be {config.n_layer} distinct names, got {keys}")
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model) if config.pos == "learned" else None
        self.rope = RotaryEmbedding(config) if config.pos == "rope" else None
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleDict({k: Block(config) for k in keys})
        self.norm_f = build_norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self.init_weights)

    # ------------------------------------------------------------------ init
    def init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, init_std) for linears and embeddings, zero biases; residual output
        projections (``o_proj``, ``down_proj``) get ``init_std / sqrt(2 * n_layer)``."""
        cfg = self.config
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
        elif isinstance(module, (CausalSelfAttention, MLP)) and cfg.scale_residual_init:
            out = module.o_proj if isinstance(module, CausalSelfAttention) else module.down_proj
            nn.init.normal_(out.weight, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layer))
        elif hasattr(module, "init_parameters"):  # e.g. the MoE router
            module.init_parameters(cfg)

    # ------------------------------------------------------------- structure
    @property
    def block_keys(self) -> list[str]:
        return list(self.blocks.keys())

    def output_weight(self) -> torch.Tensor:
        """The output head's weight ``[vocab, d_model]`` (the token embedding when tied)."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    # --------------------------------------------------------------- forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        B, T = idx.shape
        if self.pos_emb is not None and T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds seq_len={self.config.seq_len} of the learned positions")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.emb_dropout(x)
        aux = x.new_zeros(())
        for block in self.blocks.values():
            x = block(x, self.rope)
            if self.config.n_expert:
                aux = aux + block.mlp.aux_loss
        hidden, weight = self.norm_f(x), self.output_weight()
        loss = None
        if targets is not None and fused_head_loss_applies(hidden, weight):  # fp32 CPU training: fused
            logits, loss = LinearCrossEntropy.apply(hidden.reshape(B * T, -1), weight, targets.reshape(-1), -1)
            logits = logits.view(B, T, -1)
        else:
            logits = F.linear(hidden, weight)
            if targets is not None:
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return ModelOutput(logits, loss, aux)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` ([B, T]); greedy when ``temperature == 0``."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.seq_len :]
            logits = self(context).logits[:, -1, :].float()
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1, None]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    # ------------------------------------------------------------ accounting
    def num_params(self, non_embedding: bool = True, active: bool = False) -> int:
        """Number of (unique) parameters.

        ``non_embedding=True`` excludes the token and position embeddings and an untied output head
        (Kaplan et al. 2020 count N without embeddings). ``active=True`` counts, for MoE layers, only
        the ``moe_top_k`` experts a token is routed to (plus the router).
        """
        cfg = self.config
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
            if self.lm_head is not None:
                total -= self.lm_head.weight.numel()
        if active and cfg.n_expert:
            for block in self.blocks.values():
                per_expert = sum(p.numel() for p in block.mlp.experts[0].parameters())
                total -= (cfg.n_expert - cfg.moe_top_k) * per_expert
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), Kaplan et al. 2020, Table 1, times 3:

            6 * N_active_nonembedding  +  6 * d_model * vocab_size  +  6 * n_layer * seq_len * d_attn

        the first term for every weight matmul in the blocks (2 FLOPs per multiply-add forward,
        twice that backward), the second for the output head (counted explicitly, tied or not), the
        third for attention scores and the weighted sum over the context (full, not halved for the
        causal mask, as in Kaplan et al.). Norm and bias parameters are included in N.
        """
        cfg = self.config
        T = cfg.seq_len if seq_len is None else seq_len
        n = self.num_params(non_embedding=True, active=True)
        return 6 * n + 6 * cfg.d_model * cfg.vocab_size + 6 * cfg.n_layer * T * cfg.d_attn

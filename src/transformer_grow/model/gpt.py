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

from transformer_grow.model import sharing
from transformer_grow.model.config import ModelConfig
from transformer_grow.model.layers import (
    MLP,
    CausalSelfAttention,
    LinearCrossEntropy,
    MLMHead,
    RotaryEmbedding,
    build_norm,
    fused_head_loss_applies,
)


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None  # mean next-token cross-entropy (when targets are given)
    aux_loss: torch.Tensor  # MoE load-balancing loss summed over layers (0 for dense models)


def build_ffn(config: ModelConfig, n_expert: int | None = None) -> nn.Module:
    """The block's FFN: dense, or an MoE of ``n_expert`` experts (default ``config.n_expert``)."""
    if config.n_expert:
        from transformer_grow.model.moe import MoE

        return MoE(config, n_expert)
    return MLP(config)


class Block(nn.Module):
    """Pre-norm: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``. Post-norm (``norm_placement="post"``,
    BERT; Vaswani et al. 2017, sec. 3.1): ``norm(x + attn(x))`` then ``norm(x + ffn(x))``."""

    def __init__(self, config: ModelConfig, n_expert: int | None = None):
        super().__init__()
        self.attn_norm = build_norm(config)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = build_norm(config)
        self.mlp = build_ffn(config, n_expert)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.post_norm = config.norm_placement == "post"

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        if self.post_norm:
            x = self.attn_norm(x + self.resid_dropout(self.attn(x, rope)))
            return self.mlp_norm(x + self.resid_dropout(self.mlp(x)))
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
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.emb_norm = build_norm(config) if config.emb_norm else None
        self.emb_dropout = nn.Dropout(config.dropout)
        experts = config.experts_per_layer()  # per block: a dynamic MoE's layers may differ
        self.blocks = nn.ModuleDict({k: Block(config, e) for k, e in zip(keys, experts)})
        if config.share != "none":  # layers reuse their group's parameters (model/sharing.py)
            sharing.install(self)
        self.norm_f = build_norm(config) if config.norm_placement == "pre" else None  # post-norm ends normed
        self.mlm_head = MLMHead(config) if config.head == "mlm" else None
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._flops_marks: dict[str, tuple[int, int]] = {}  # routed_flops_per_token: counts at its last call
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
            if isinstance(module, sharing.LoRALinear):  # relaxed sharing: the delta B A starts at zero
                module.init_lora(cfg.init_std)
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

    def _apply(self, fn, recurse=True):
        """``to``/``to_empty``/``float`` may allocate every parameter anew, once per module that holds
        it, which unties shared parameters: tie them again (model/sharing.py)."""
        super()._apply(fn, recurse)
        if self.config.share != "none":
            sharing.tie_blocks(self.blocks, self.config)
        return self

    def output_weight(self) -> torch.Tensor:
        """The output head's weight ``[vocab, d_model]`` (the token embedding when tied)."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    # --------------------------------------------------------------- forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> ModelOutput:
        """Logits of ``idx`` [B, T]; with ``targets`` [B, T] also the mean cross-entropy over targets that
        are not -1 (next tokens for a causal LM, masked positions' tokens for masked-LM training).
        ``token_type_ids`` [B, T]: segment ids of a model with ``type_vocab_size`` (default all 0, as HF)."""
        B, T = idx.shape
        if self.pos_emb is not None and T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds seq_len={self.config.seq_len} of the learned positions")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self._add_token_types(x, token_type_ids)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.emb_dropout(x)
        aux = x.new_zeros(())
        for block in self.blocks.values():
            x = block(x, self.rope)
            if self.config.n_expert:
                aux = aux + block.mlp.aux_loss
        hidden, weight = x if self.norm_f is None else self.norm_f(x), self.output_weight()
        loss = None
        if self.mlm_head is not None:  # the head's bias and norm do not fit the fused head + loss
            logits = self.mlm_head(hidden, weight)
            if targets is not None:
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        elif targets is not None and fused_head_loss_applies(hidden, weight):  # fp32 CPU training: fused
            logits, loss = LinearCrossEntropy.apply(hidden.reshape(B * T, -1), weight, targets.reshape(-1), -1)
            logits = logits.view(B, T, -1)
        else:
            logits = F.linear(hidden, weight)
            if targets is not None:
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return ModelOutput(logits, loss, aux)

    def _add_token_types(self, x: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if self.type_emb is None:
            if token_type_ids is not None:
                raise ValueError("token_type_ids given to a model without token-type embeddings (type_vocab_size=0)")
            return x
        if token_type_ids is None:  # every token of segment 0, as transformers' default
            return x + self.type_emb.weight[0]
        return x + self.type_emb(token_type_ids)

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
        if not self.config.causal:
            raise ValueError("generate needs a causal model; this one is bidirectional (causal=False, masked LM)")
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
        the ``moe_top_k`` experts a token is routed to (plus the router); for a top-any router that is
        the plan-time estimate, :meth:`routed_flops_per_token` measures the router's actual choices.
        """
        cfg = self.config
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
            if self.type_emb is not None:  # token types are an embedding too (BERT)
                total -= self.type_emb.weight.numel()
            if self.lm_head is not None:
                total -= self.lm_head.weight.numel()
        if active and cfg.n_expert:
            for block in self.blocks.values():
                per_expert = sum(p.numel() for p in block.mlp.experts[0].parameters())
                total -= (block.mlp.n_expert - block.mlp.top_k) * per_expert
        return total

    def routed_flops_per_token(self, seq_len: int | None = None) -> float | None:
        """Training FLOPs per token of the training forwards since the last call, with the experts the
        top-any routers actually chose (mean active experts per token, per layer) in place of the
        planned ``moe_top_k``; ``None`` for models whose FLOPs do not depend on routing (dense, top-k)
        or when no training forward ran since the last call."""
        if not self.config.n_expert or self.config.moe_router != "topany":
            return None
        marks = self._flops_marks
        extra, routed = 0.0, False
        for key, block in self.blocks.items():
            moe = block.mlp
            if moe.counts is None:
                continue
            mark, now = marks.get(key), (moe.counts.tokens.item(), moe.counts.assignments.item())
            marks[key] = now
            tokens = now[0] - (mark[0] if mark else 0)
            if tokens > 0:
                routed = True
                active = (now[1] - (mark[1] if mark else 0)) / tokens
                per_expert = sum(p.numel() for p in moe.experts[0].parameters())
                extra += (active - moe.top_k) * per_expert
        return self.flops_per_token(seq_len) + 6 * extra if routed else None

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), Kaplan et al. 2020, Table 1, times 3:

            6 * N_active_nonembedding  +  6 * d_model * vocab_size  +  6 * n_layer * seq_len * d_attn

        the first term for every weight matmul in the blocks (2 FLOPs per multiply-add forward,
        twice that backward), the second for the output head (counted explicitly, tied or not), the
        third for attention scores and the weighted sum over the context (full, not halved for the
        causal mask, as in Kaplan et al.; a bidirectional model's is the same). Norm and bias parameters are
        included in N, and so is an MLM head's ``dense`` (``6 * d_model^2`` per token) and vocabulary bias.
        A shared parameter counts once per layer that uses it (cross-layer sharing saves storage, not
        compute), and relaxed sharing's LoRA factors count too (they are multiplied every token).
        """
        cfg = self.config
        T = cfg.seq_len if seq_len is None else seq_len
        n = self.num_params(non_embedding=True, active=True) + sharing.reused_params(self)
        return 6 * n + 6 * cfg.d_model * cfg.vocab_size + 6 * cfg.n_layer * T * cfg.d_attn

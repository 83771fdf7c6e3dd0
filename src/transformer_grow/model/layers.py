"""Building blocks of the GPT model: norms, rotary embeddings, attention and the feed-forward MLP.

Projections are separate ``nn.Linear`` modules (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``;
``up_proj``, ``gate_proj``, ``down_proj``) so that growth operators can address each one by name,
as they do for Hugging Face Llama-family models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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
    """Multi-head (or grouped-query) self-attention through ``scaled_dot_product_attention``: causal, or
    bidirectional for an encoder (``causal=False``, BERT)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        qkv_bias = config.bias or config.qkv_bias
        self.q_proj = nn.Linear(config.d_model, config.d_attn, bias=qkv_bias)
        self.k_proj = nn.Linear(config.d_model, config.d_kv, bias=qkv_bias)
        self.v_proj = nn.Linear(config.d_model, config.d_kv, bias=qkv_bias)
        self.o_proj = nn.Linear(config.d_attn, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.causal = config.causal

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
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


def gelu_approximation(config: ModelConfig) -> str:
    """``F.gelu``'s ``approximate``: ``"none"`` (exact erf GELU, BERT) for ``mlp="gelu_erf"``, else the tanh
    approximation (GPT-2's ``gelu_new``; Hendrycks & Gimpel 2016 give both)."""
    return "none" if config.mlp == "gelu_erf" else "tanh"


class MLP(nn.Module):
    """Feed-forward network: GELU (GPT-2: tanh approximation; BERT: exact erf) or SwiGLU (Shazeer 2020,
    eq. 6: ``(silu(x W) * x V) W2``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.approximate = gelu_approximation(config)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        if self.swiglu:
            self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x), approximate=self.approximate)
        return self.down_proj(h)


class MLMHead(nn.Module):
    """BERT's masked-LM prediction head (Devlin et al. 2019; ``BertLMPredictionHead``): the hidden state
    goes through ``dense`` (d -> d), GELU and a norm, then the output weight (the token embedding when
    tied) and a per-token ``bias``: ``logits = norm(gelu(dense(h))) @ W_out^T + bias``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=True)
        self.norm = build_norm(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.approximate = gelu_approximation(config)

    def reset_parameters(self) -> None:
        """The vocabulary bias starts at zero (``dense`` and ``norm`` initialise themselves)."""
        nn.init.zeros_(self.bias)

    def init_parameters(self, config: ModelConfig) -> None:  # called by GPT.init_weights
        self.reset_parameters()

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden), approximate=self.approximate))
        return F.linear(h, weight, self.bias)


# ------------------------------------------------------------------------ fused output head + loss
def fused_head_loss_applies(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`LinearCrossEntropy` should compute the output head and loss: fp32 training
    on the CPU, outside autocast and ``torch.compile`` (which fuse the plain ops themselves)."""
    return (
        torch.is_grad_enabled()
        and (hidden.requires_grad or weight.requires_grad)
        and hidden.device.type == "cpu"
        and hidden.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class LinearCrossEntropy(torch.autograd.Function):
    """``logits = hidden @ weight.T`` and their mean cross-entropy against ``targets`` in one step.

    Same values and gradients as ``F.linear`` then ``F.cross_entropy(..., ignore_index=...)`` up to
    float rounding, but with one vocabulary-sized buffer (the returned logits) instead of four, and
    fewer passes over it. The gradient of the mean cross-entropy w.r.t. the logits is
    ``(softmax(z) - onehot(t)) / n`` per counted row (the standard softmax-cross-entropy derivative,
    e.g. Goodfellow et al. 2016, *Deep Learning*, sec. 6.2.2.3). It is formed in the forward for a
    block of rows at a time (a buffer small enough for the cache and for ``malloc`` to reuse) and
    multiplied at once into the gradients of ``hidden`` and ``weight``; the backward then only scales
    those by the loss's incoming gradient. A gradient arriving for the logits themselves (another
    loss on them) is added in the backward, so the returned logits stay fully differentiable.

    Why it pays on the CPU: glibc ``malloc`` gives every buffer over 32 MB fresh ``mmap``-ed pages,
    and touching those costs more than the arithmetic done on them. Each row's numbers are formed as
    ``F.cross_entropy`` forms them (``log_softmax``, then ``exp(logp) * (1/n)``), independently of
    the other rows, so splitting a batch (data parallel, accumulation) rounds as it does there.
    """

    BLOCK_ELEMENTS = 1 << 22  # rows per block: 16 MB of fp32 logits-gradient

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        """``hidden`` [N, d], ``weight`` [vocab, d], ``targets`` [N] -> (logits [N, vocab], loss [])."""
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        logits = torch.mm(hidden, weight.t())
        counted = targets != ignore_index
        safe_targets = torch.where(counted, targets, 0)[:, None]
        n_counted = counted.sum()
        # Per-row gradient weight 1/n (0 for ignored rows; all zero when nothing counts, as F.cross_entropy).
        row_weight = (counted.to(logits.dtype) / n_counted.clamp_min(1))[:, None]
        target_logp = logits.new_empty(n_rows, 1)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        rows = max(1, LinearCrossEntropy.BLOCK_ELEMENTS // vocab)
        for r0 in range(0, n_rows, rows):
            block = slice(r0, min(r0 + rows, n_rows))
            grad_logits = torch.log_softmax(logits[block], dim=-1)
            torch.gather(grad_logits, 1, safe_targets[block], out=target_logp[block])
            grad_logits.exp_().mul_(row_weight[block])  # softmax / n
            grad_logits.scatter_add_(1, safe_targets[block], -row_weight[block])  # minus onehot / n
            if need_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[block])
            if need_weight:
                grad_weight.addmm_(grad_logits.t(), hidden[block])
        loss = -(target_logp.squeeze(1) * counted).sum() / n_counted  # NaN when nothing counts, as F.cross_entropy
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, grad_hidden, grad_weight)
        return logits, loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits: torch.Tensor | None, grad_loss: torch.Tensor | None):
        hidden, weight, grad_hidden, grad_weight = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out_hidden = grad_hidden * grad_loss if need_hidden and grad_loss is not None else None
        out_weight = grad_weight * grad_loss if need_weight and grad_loss is not None else None
        if grad_logits is not None:
            if need_hidden:
                extra = grad_logits @ weight
                out_hidden = extra if out_hidden is None else out_hidden.add_(extra)
            if need_weight:
                extra = grad_logits.t() @ hidden
                out_weight = extra if out_weight is None else out_weight.add_(extra)
        return out_hidden, out_weight, None, None

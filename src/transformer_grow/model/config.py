"""Typed model configuration and presets.

A :class:`ModelConfig` fully determines the architecture of :class:`~transformer_grow.model.GPT`.
Fields left as ``None`` are derived in ``__post_init__`` (and stored), so a config round-trips
through ``to_dict``/``from_dict`` unchanged and two equal configs build the same model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import ConfigError, choice, require

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rope", "learned")
MLPS = ("gelu", "swiglu")
ROUTERS = ("softmax_topk",)


@dataclass
class ModelConfig:
    """Architecture of a decoder-only, pre-norm Transformer (nanoGPT / Llama tradition).

    The attention inner width ``n_head * head_dim`` may differ from ``d_model`` (head growth adds
    heads without changing ``d_model``). ``n_kv_head < n_head`` gives grouped-query attention.
    ``n_expert > 0`` replaces every FFN by a top-k routed mixture of experts.
    """

    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    head_dim: int | None = None  # default: d_model // n_head
    n_kv_head: int | None = None  # default: n_head (multi-head attention)
    d_ff: int | None = None  # default: 4*d_model (gelu) or 8/3*d_model rounded up to 64 (swiglu)
    vocab_size: int = 8192
    seq_len: int = 256
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    pos: str = "rope"
    rope_base: float = 10000.0
    rope_scale: float = 1.0  # position interpolation factor (positions are divided by it)
    mlp: str = "swiglu"
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2: residual output projections get std / sqrt(2 * n_layer)
    # Mixture of experts (0 = dense FFN).
    n_expert: int = 0
    moe_top_k: int = 2
    moe_router: str = "softmax_topk"
    moe_aux_loss_coef: float = 0.01

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        if self.head_dim is None:
            require(
                self.d_model % self.n_head == 0,
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                "choose n_head dividing d_model or set head_dim explicitly",
            )
            self.head_dim = self.d_model // self.n_head
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        for name in ("head_dim", "n_kv_head", "d_ff"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        require(
            self.n_head % self.n_kv_head == 0,
            f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} (grouped-query attention)",
        )
        choice("norm", self.norm, NORMS)
        choice("pos", self.pos, POSITIONS)
        choice("mlp", self.mlp, MLPS)
        choice("moe_router", self.moe_router, ROUTERS)
        if self.pos == "rope":
            require(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even for RoPE")
            require(self.rope_base > 1, f"rope_base={self.rope_base} must be > 1")
            require(self.rope_scale > 0, f"rope_scale={self.rope_scale} must be > 0")
        require(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        require(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        require(self.init_std > 0, f"init_std={self.init_std} must be > 0")
        require(self.n_expert >= 0, f"n_expert={self.n_expert} must be >= 0 (0 = dense FFN)")
        if self.n_expert:
            require(
                1 <= self.moe_top_k <= self.n_expert,
                f"moe_top_k={self.moe_top_k} must be between 1 and n_expert={self.n_expert}",
            )

    @property
    def d_attn(self) -> int:
        """Attention inner width: ``n_head * head_dim``."""
        return self.n_head * self.head_dim

    @property
    def d_kv(self) -> int:
        """Width of the key and value projections: ``n_kv_head * head_dim``."""
        return self.n_kv_head * self.head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied. Derived fields are kept unless changed (pass ``None`` to re-derive)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(
                f"unknown model setting(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(names))}"
            )
        return cls(**d)


# Presets as code. Architecture only: vocab_size follows the tokenizer, seq_len may be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    # A model small enough that a few hundred CPU steps take seconds: tests and scripts.
    "micro": dict(n_layer=2, d_model=64, n_head=4, seq_len=64),
    "tiny": dict(n_layer=4, d_model=256, n_head=4, seq_len=256),
    "small": dict(n_layer=6, d_model=512, n_head=8, seq_len=512),
    "medium": dict(n_layer=8, d_model=768, n_head=12, seq_len=1024),
    "base": dict(n_layer=12, d_model=1024, n_head=16, seq_len=1024),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name`` with ``overrides`` applied."""
    choice("preset", name, tuple(PRESETS))
    return ModelConfig.from_dict({**PRESETS[name], **overrides})

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
MLPS = ("gelu", "gelu_erf", "swiglu")
NORM_PLACEMENTS = ("pre", "post")
HEADS = ("linear", "mlm")
ROUTERS = ("softmax_topk", "topany")


@dataclass
class ModelConfig:
    """Architecture of a decoder-only, pre-norm Transformer (nanoGPT / Llama tradition).

    The attention inner width ``n_head * head_dim`` may differ from ``d_model`` (head growth adds
    heads without changing ``d_model``). ``n_kv_head < n_head`` gives grouped-query attention.
    ``n_expert > 0`` replaces every FFN by a top-k routed mixture of experts.

    Attributes:
        n_layer: number of Transformer blocks.
        d_model: residual stream width.
        n_head: attention (query) heads; must divide ``d_model`` unless ``head_dim`` is set.
        head_dim: width of one attention head; default ``d_model // n_head``.
        n_kv_head: key/value heads (fewer than ``n_head``: grouped-query attention); default ``n_head``.
        d_ff: feed-forward hidden width; default ``4 * d_model`` (gelu) or ``8/3 * d_model`` rounded up
            to a multiple of 64 (swiglu).
        vocab_size: vocabulary size; training takes it from the tokenizer unless it is given (then it
            must be at least the tokenizer's).
        seq_len: context length in tokens (the training sequence length).
        norm: normalisation: ``layernorm`` or ``rmsnorm``.
        norm_eps: epsilon added to the variance inside the normalisation.
        pos: position encoding: ``rope`` (rotary, Su et al. 2021) or ``learned``.
        rope_base: RoPE base frequency.
        rope_scale: RoPE position interpolation factor: positions are divided by it (Chen et al. 2023).
        mlp: feed-forward type: ``gelu`` (tanh approximation, GPT-2), ``gelu_erf`` (exact erf GELU,
            BERT; Hendrycks & Gimpel 2016, eq. 1) or ``swiglu`` (Shazeer 2020).
        tie_embeddings: tie the output head to the token embedding (off: a separate head).
        bias: biases in linear layers and LayerNorm.
        qkv_bias: biases in the query, key and value projections even when ``bias`` is off (Qwen2;
            Bai et al. 2023 keep them for length extrapolation).
        dropout: dropout probability in [0, 1).
        init_std: standard deviation of the normal weight initialisation.
        scale_residual_init: scale the init std of residual output projections by
            ``1 / sqrt(2 * n_layer)`` (GPT-2, Radford et al. 2019).
        n_expert: experts in every mixture-of-experts FFN; 0 keeps the dense FFN.
        moe_top_k: experts each token is routed to (at most ``n_expert``); for ``topany`` routing the
            planned mean number of active experts (plan-time FLOP estimates only: training counts the
            router's actual choices).
        moe_router: router: ``softmax_topk`` (fixed top-k) or ``topany`` (DynMoE top-any gating, Guo et
            al. 2025: every expert whose cosine score passes its learned threshold fires).
        moe_aux_loss_coef: weight of the auxiliary loss (Switch Transformer load balancing, Fedus et al.
            2021; for ``topany`` plus the weighted diversity and sparsity terms).
        moe_layer_experts: experts of each block, in block order, when blocks differ (a dynamic MoE
            adds and removes experts per layer); ``None``: every block has ``n_expert`` (then the largest).
        moe_temperature: ``topany``: temperature ``t`` of the sigmoid gates ``sigmoid(score / t)``.
        moe_threshold_init: ``topany``: initial threshold of every expert, in cosine units (-1 to 1).
        moe_diversity_weight: ``topany``: weight of the routing-vector orthogonality loss, relative to
            load balancing.
        moe_sparsity_weight: ``topany``: weight of the active-experts (sparsity) loss, relative to load
            balancing.
        causal: causal self-attention (a decoder LM); false: bidirectional attention (an encoder such as
            BERT, trained by masked language modelling).
        norm_placement: ``pre`` (``x + f(norm(x))``, then a final norm) or ``post`` (``norm(x + f(x))``,
            no final norm; BERT, Devlin et al. 2019, after Vaswani et al. 2017).
        type_vocab_size: token-type (segment) embeddings added to the input (BERT: 2); 0: none.
        emb_norm: a norm on the summed input embeddings (BERT).
        head: output head: ``linear`` (logits = hidden @ W_out) or ``mlm`` (BERT's prediction head:
            dense + GELU + LayerNorm, then the output weight and a vocabulary bias).
        share: cross-layer parameter sharing (:mod:`~transformer_grow.model.sharing`): ``none``, ``all``
            (ALBERT), ``sequence``, ``cycle``, ``cycle_rev`` (Takase & Kiyono 2021), ``middle_all``
            (Subformer sandwich), ``middle_sequence``, ``middle_cycle`` (first and last layers unshared)
            or ``custom`` (``share_layers``).
        share_groups: stored blocks ``M`` the layers share (``all``: 1, ``middle_all``: 3, ``custom``: from
            ``share_layers``; required for the others).
        share_layers: ``share=custom``: the stored block of every layer, numbered in order of first use.
        share_parts: what a layer shares with its group: ``block``, ``attn`` or ``ffn``.
        share_norms: share the norms of the shared parts too (off: per-layer norms).
        share_lora_rank: rank of each shared layer's own low-rank delta on the shared linears (relaxed
            sharing, Bae et al. 2024); 0: none.
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
    qkv_bias: bool = False  # q/k/v biases without the others (Qwen2)
    dropout: float = 0.0
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2: residual output projections get std / sqrt(2 * n_layer)
    # Mixture of experts (0 = dense FFN).
    n_expert: int = 0
    moe_top_k: int = 2
    moe_router: str = "softmax_topk"
    moe_aux_loss_coef: float = 0.01
    moe_layer_experts: list[int] | None = None  # per-block expert counts (dynamic MoE)
    moe_temperature: float = 0.1
    moe_threshold_init: float = 0.0
    moe_diversity_weight: float = 1.0
    moe_sparsity_weight: float = 1.0
    # Encoder (BERT) variants; the defaults are the pre-norm causal decoder.
    causal: bool = True
    norm_placement: str = "pre"
    type_vocab_size: int = 0
    emb_norm: bool = False
    head: str = "linear"
    # Cross-layer parameter sharing (model/sharing.py; "none": every layer stores its own weights).
    share: str = "none"
    share_groups: int | None = None  # default: fixed by the strategy (all: 1, middle_all: 3, custom)
    share_layers: list[int] | None = None
    share_parts: str = "block"
    share_norms: bool = True
    share_lora_rank: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len"):
            _check_size(name, getattr(self, name))
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
            self.d_ff = self.derived_value("d_ff")
        if self.share_groups is None and self.share != "none":
            from transformer_grow.model.sharing import default_groups

            layers = self.share_layers
            custom = self.share == "custom" and isinstance(layers, list) and layers
            self.share_groups = max(layers) + 1 if custom and all(_is_int(g) for g in layers) \
                else default_groups(self.share)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        for name in ("head_dim", "n_kv_head", "d_ff"):
            _check_size(name, getattr(self, name))
        for name in ("norm_eps", "rope_base", "rope_scale", "dropout", "init_std", "moe_aux_loss_coef",
                     "moe_temperature", "moe_threshold_init", "moe_diversity_weight", "moe_sparsity_weight"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                    f"{name}={value!r} is not allowed; it must be a finite number")
        for name in ("tie_embeddings", "bias", "qkv_bias", "scale_residual_init", "causal", "emb_norm"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"{name}={value!r} is not allowed; it must be true or false")
        require(_is_int(self.n_expert) and _is_int(self.moe_top_k),
                f"n_expert={self.n_expert!r} and moe_top_k={self.moe_top_k!r} must be integers")
        require(self.n_expert <= MAX_SIZES["n_expert"],
                f"n_expert={self.n_expert} is not allowed; it must be at most {MAX_SIZES['n_expert']}")
        require(self.moe_aux_loss_coef >= 0, f"moe_aux_loss_coef={self.moe_aux_loss_coef} must be >= 0")
        require(1 <= self.moe_top_k <= MAX_SIZES["n_expert"],
                f"moe_top_k={self.moe_top_k} is not allowed; it must be from 1 to {MAX_SIZES['n_expert']}")
        for name, most in MAX_FLOATS.items():
            value = getattr(self, name)
            require(value <= most, f"{name}={value!r} is not allowed; it must be at most {most:g}")
        require(
            self.n_head % self.n_kv_head == 0,
            f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} (grouped-query attention)",
        )
        choice("norm", self.norm, NORMS)
        choice("pos", self.pos, POSITIONS)
        choice("mlp", self.mlp, MLPS)
        choice("moe_router", self.moe_router, ROUTERS)
        choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        choice("head", self.head, HEADS)
        require(_is_int(self.type_vocab_size) and 0 <= self.type_vocab_size <= MAX_SIZES["type_vocab_size"],
                f"type_vocab_size={self.type_vocab_size!r} is not allowed; it must be an integer from 0 (none) to "
                f"{MAX_SIZES['type_vocab_size']:,}")
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
        self._validate_topany()
        from transformer_grow.model.sharing import check_sharing  # lazy: sharing.py builds torch modules

        check_sharing(self)

    def _validate_topany(self) -> None:
        require(0 < self.moe_temperature, f"moe_temperature={self.moe_temperature} must be > 0")
        require(-1 <= self.moe_threshold_init <= 1,
                f"moe_threshold_init={self.moe_threshold_init} must lie in [-1, 1] (cosine units)")
        for name in ("moe_diversity_weight", "moe_sparsity_weight"):
            require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        counts = self.moe_layer_experts
        if counts is None:
            return
        require(isinstance(counts, list) and len(counts) == self.n_layer
                and all(_is_int(c) and 1 <= c <= MAX_SIZES["n_expert"] for c in counts),
                f"moe_layer_experts={counts!r} is not allowed; give n_layer={self.n_layer} expert counts, each "
                f"from 1 to {MAX_SIZES['n_expert']}")
        require(self.n_expert == max(counts),
                f"n_expert={self.n_expert} must be the largest of moe_layer_experts={counts}")
        require(self.moe_router == "topany" or self.moe_top_k <= min(counts),
                f"moe_top_k={self.moe_top_k} exceeds the {min(counts)} experts of a block (moe_layer_experts={counts})")

    def experts_per_layer(self) -> list[int]:
        """Experts of every block in block order (0 for a dense FFN)."""
        if self.moe_layer_experts is not None:
            return list(self.moe_layer_experts)
        return [self.n_expert] * self.n_layer

    @property
    def d_attn(self) -> int:
        """Attention inner width: ``n_head * head_dim``."""
        return self.n_head * self.head_dim

    @property
    def d_kv(self) -> int:
        """Width of the key and value projections: ``n_kv_head * head_dim``."""
        return self.n_kv_head * self.head_dim

    def derived_value(self, name: str) -> int | None:
        """What ``__post_init__`` derives for ``name`` (``head_dim``, ``n_kv_head`` or ``d_ff``) from
        the other fields; ``None`` where nothing can be derived (``n_head`` does not divide ``d_model``)."""
        if name == "head_dim":
            return self.d_model // self.n_head if self.d_model % self.n_head == 0 else None
        if name == "n_kv_head":
            return self.n_head
        if name == "d_ff":
            return 4 * self.d_model if self.mlp != "swiglu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
        raise ValueError(f"{name!r} is not a derived field; derived fields: {', '.join(DERIVED_FIELDS)}")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied.

        A derived field (``head_dim``, ``n_kv_head``, ``d_ff``) that is not in ``changes`` and holds
        its derived value follows the derivation: ``replace(d_model=512)`` of a 256-wide, 4-head
        model gives ``head_dim=128`` and the FFN width of ``d_model=512``. A value that differs from
        its derivation (set explicitly) is kept. Whether a field was derived is read from the values
        themselves, so a config behaves the same after a ``to_dict``/``from_dict`` round trip.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
        follow = {name: None for name in DERIVED_FIELDS
                  if name not in changes and getattr(self, name) == self.derived_value(name)}
        if changes.get("share") == "none":  # unsharing: the other sharing settings go with it
            from transformer_grow.model.sharing import UNSHARED

            follow.update({k: v for k, v in UNSHARED.items() if k not in changes})
        return dataclasses.replace(self, **follow, **changes)

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


# Upper bounds of the sizes: far beyond any model this library trains, low enough that a mistyped
# value (1e11 layers) is refused here instead of exhausting memory in an allocation.
MAX_SIZES = {"n_layer": 4096, "d_model": 1 << 16, "n_head": 4096, "head_dim": 4096, "n_kv_head": 4096,
             "d_ff": 1 << 20, "vocab_size": 1 << 32, "seq_len": 1 << 20, "n_expert": 4096,
             "type_vocab_size": 1 << 16}


# Upper bounds of the float settings, far above any useful value: 1e30 is a typo, not a setting.
MAX_FLOATS = {"norm_eps": 1.0, "rope_base": 1e12, "rope_scale": 1e6, "init_std": 10.0, "moe_aux_loss_coef": 1e6,
              "moe_temperature": 100.0, "moe_diversity_weight": 1e6, "moe_sparsity_weight": 1e6}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(name: str, value: Any) -> None:
    require(_is_int(value) and 0 < value <= MAX_SIZES[name],
            f"{name}={value!r} is not allowed; it must be an integer from 1 to {MAX_SIZES[name]:,}")


# Fields that __post_init__ derives from others when they are None (see ModelConfig.replace).
DERIVED_FIELDS = ("head_dim", "n_kv_head", "d_ff")

# Growth (transformer_grow.operators) keeps these: the architecture family, the vocabulary and the head
# size. No operator changes head_dim: heads are added (heads) or cloned (width=clone) whole.
FIXED_FIELDS = ("vocab_size", "norm", "pos", "mlp", "tie_embeddings", "bias", "qkv_bias", "head_dim",
                "moe_router", "causal", "norm_placement", "type_vocab_size", "emb_norm", "head")
# Sizes growth keeps or increases, never decreases; the grow/ operator that increases each:
GROWABLE_FIELDS = (
    "n_layer",  # depth: stack, duplicate, interleave, insert_zero, insert_random, layer_map
    "d_model",  # width: clone, net2net, zero_pad, random_pad
    "n_head",  # heads: zero (also width=clone, which clones heads)
    "n_kv_head",  # heads: zero (also width=clone)
    "d_ff",  # ffn: zero, split (also width=clone)
    "seq_len",  # seq: copy, tile, interpolate
    "n_expert",  # experts: upcycle (dense model), add (MoE model)
)
# Changed by the seq operator along with seq_len, or alone (RoPE position interpolation).
ROPE_FIELDS = ("rope_base", "rope_scale")
# Cross-layer sharing (model/sharing.py) changes only by unsharing, share -> "none" (check_growth
# treats these apart). Listed with the fixed fields so that every check that a grown model has its
# planned stage's fixed fields (the growth manager's) covers sharing too.
SHARE_FIELDS = ("share", "share_groups", "share_layers", "share_parts", "share_norms", "share_lora_rank")
FIXED_FIELDS = FIXED_FIELDS + SHARE_FIELDS


def describe_sizes(cfg: ModelConfig) -> str:
    """A one-line summary of the sizes that growth changes."""
    text = f"L={cfg.n_layer} d={cfg.d_model} heads={cfg.n_head}x{cfg.head_dim} ffn={cfg.d_ff} seq={cfg.seq_len}"
    if cfg.moe_layer_experts is not None:
        return text + f" experts={','.join(map(str, cfg.moe_layer_experts))}"
    return text + (f" experts={cfg.n_expert}" if cfg.n_expert else "")


def check_growth(old: ModelConfig, new: ModelConfig) -> None:
    """Refuse growing ``old`` into ``new`` (:class:`ConfigError`) unless no growable size shrinks,
    every fixed field is kept, and something grows (a size, or the RoPE settings change).

    The one check of an old -> new growth: growth plans, the growth manager and
    :func:`transformer_grow.operators.grow` all call it. Callers add where the configs come from.
    A shared model (``share`` not ``none``) grows only into an unshared one: unsharing (exact), then
    any other growth of the same event on the unshared model.
    """
    require(old.share == "none" or new.share == "none",
            f"a shared model (share={old.share!r}) grows only by unsharing: the target needs share='none' "
            f"(not {new.share!r}); other sizes may grow with it, after the unsharing")
    require(old.share != "none" or new.share == "none",
            f"share='none' -> {new.share!r} is not growth; convert a trained model to a shared one with "
            "`tgrow share` (transformer_grow.operators.share.convert)")
    for name in GROWABLE_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        require(after >= before, f"growth to a smaller model: {name}={after} is smaller than the model's {before}; "
                                 f"growth does not shrink ({describe_sizes(old)} -> {describe_sizes(new)})")
    for name in (n for n in FIXED_FIELDS if n not in SHARE_FIELDS):
        require(getattr(old, name) == getattr(new, name),
                f"{name} cannot change by growth ({getattr(old, name)!r} -> {getattr(new, name)!r}); growth "
                f"keeps {', '.join(FIXED_FIELDS)}")
    require(any(getattr(new, n) != getattr(old, n) for n in GROWABLE_FIELDS + ROPE_FIELDS + SHARE_FIELDS),
            f"nothing to grow: the model does not grow ({describe_sizes(old)} before and after)")


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

"""Target sizes as strings: ``"7B"`` -> a grown :class:`ModelConfig` by a documented depth/width rule.

Rule (:func:`target_for_size`): keep the source model's *shape* and scale it. Kaplan et al. 2020
(sec. 3.1, fig. 5) find the loss at a fixed parameter count depends only weakly on the aspect ratio
``d_model / n_layer`` over a wide range, so the source's aspect ratio is kept; ``head_dim``, the GQA
group size and the FFN ratio ``d_ff / d_model`` are kept too (every operator keeps ``head_dim``).
``d_model`` runs over multiples of ``head_dim * group`` (whole kv groups of heads, so the attention
stays ``d_model`` wide where it was), ``n_layer = round(d_model / aspect)``, and the candidate whose
total parameter count (embeddings included, as model names count them) is closest to the target wins.
"""

from __future__ import annotations

import re

from transformer_grow.errors import ConfigError, require
from transformer_grow.model import ModelConfig

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmbt]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def is_size(text: str) -> bool:
    """Whether ``text`` reads as a parameter count (``7B``), not a preset name or a file."""
    return bool(_SIZE.match(str(text)))


def parse_size(text: str) -> int:
    """``"7B"`` -> 7_000_000_000; ``"350M"``, ``"1.3b"``, ``"125000"`` likewise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"target size {text!r} is not allowed; write a number with an optional K, M, B or T "
                          "suffix, e.g. 350M or 7B")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def count_params(cfg: ModelConfig) -> int:
    """Total parameters of a GPT of ``cfg`` (embeddings and an untied head included), without building it.

    Closed form for the usual configs (``target_for_size`` evaluates it for many candidates); a model
    with cross-layer sharing or per-layer expert counts is counted on the meta device (no memory)."""
    if cfg.share != "none" or cfg.moe_layer_experts is not None:
        import torch

        from transformer_grow.model.gpt import GPT

        with torch.device("meta"):
            return GPT(cfg).num_params(non_embedding=False)
    d = cfg.d_model
    attn = d * cfg.d_attn * 2 + d * cfg.d_kv * 2
    bias = (cfg.d_attn + 2 * cfg.d_kv) if (cfg.bias or cfg.qkv_bias) else 0
    mats = 3 if cfg.mlp == "swiglu" else 2
    ffn = mats * d * cfg.d_ff + (cfg.d_ff * (mats - 1) + d if cfg.bias else 0)
    router = d * cfg.n_expert + (cfg.n_expert if cfg.moe_router == "topany" else 0)  # top-any: thresholds
    ffn = ffn * max(1, cfg.n_expert) + router
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    per_layer = attn + bias + (d if cfg.bias else 0) + ffn + 2 * norm
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + (cfg.seq_len * d if cfg.pos == "learned" else 0)
    embed += cfg.type_vocab_size * d + (norm if cfg.emb_norm else 0)  # BERT: token types, embedding norm
    final_norm = norm if cfg.norm_placement == "pre" else 0  # post-LN blocks end in their own norm
    head = d * d + d + norm + cfg.vocab_size if cfg.head == "mlm" else 0  # dense + bias, norm, decoder bias
    return cfg.n_layer * per_layer + embed + final_norm + head


def target_for_size(source: ModelConfig, size: str | int) -> ModelConfig:
    """The config of about ``size`` parameters with ``source``'s shape (module docstring); never smaller
    than the source in any size. :class:`ConfigError` if ``size`` is not above the source's count."""
    n_target = parse_size(size) if isinstance(size, str) else int(size)
    n_source = count_params(source)
    require(n_target > n_source, f"target size {size} ({n_target:,} parameters) is not larger than the model "
                                 f"({n_source:,}); growth needs a larger target")
    group = source.n_head // source.n_kv_head
    unit = source.head_dim * group
    aspect = source.d_model / source.n_layer
    heads_per_width = source.n_head / source.d_model  # keeps d_attn / d_model
    ffn_ratio = source.d_ff / source.d_model
    best = None
    d_model = source.d_model + unit  # something grows
    while True:
        n_layer = max(source.n_layer, round(d_model / aspect))
        n_head = max(source.n_head, group * round(heads_per_width * d_model / group))
        d_ff = max(source.d_ff, int(round(ffn_ratio * d_model / 64)) * 64 or source.d_ff)
        cfg = source.replace(d_model=d_model, n_layer=n_layer, n_head=n_head, n_kv_head=n_head // group,
                             head_dim=source.head_dim, d_ff=d_ff)
        n = count_params(cfg)
        if best is None or abs(n - n_target) < abs(best[0] - n_target):
            best = (n, cfg)
        if n > n_target:
            return best[1]
        d_model += unit

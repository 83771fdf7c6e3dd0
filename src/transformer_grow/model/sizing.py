"""Counts and target sizes as strings: ``"7B"`` -> a grown :class:`ModelConfig` by a documented depth/width rule.

Counts are read by :mod:`transformer_grow.counts` (the one count syntax: ``125000``, ``1.2e8``, ``350M``).

Rule (:func:`target_for_size`): keep the source model's *shape* and scale it. Kaplan et al. 2020
(sec. 3.1, fig. 5) find the loss at a fixed parameter count depends only weakly on the aspect ratio
``d_model / n_layer`` over a wide range, so the source's aspect ratio is kept; ``head_dim``, the GQA
group size and the FFN ratio ``d_ff / d_model`` are kept too (every operator keeps ``head_dim``).
``d_model`` runs over multiples of ``head_dim * group`` (whole kv groups of heads, so the attention
stays ``d_model`` wide where it was), ``n_layer = round(d_model / aspect)``, and the candidate whose
total parameter count (embeddings included, as model names count them) is closest to the target wins.

Operators that repeat whole blocks (depth ``stack``) or clone the width (``clone``) reach only whole
multiples of the model's depth or width: with ``whole_depth`` / ``whole_width`` the candidates are
those multiples (a whole-width step clones heads and FFN along, as ``clone`` does) and the closest
total count wins, the aspect ratio breaking ties. A target farther than :data:`SIZE_TOLERANCE` from the
asked size is refused, naming the nearest sizes the rule reaches.
"""

from __future__ import annotations

import math
from typing import Any

from transformer_grow.counts import MAX_COUNT, count_value, parse_count
from transformer_grow.errors import ConfigError, require
from transformer_grow.model.config import ModelConfig  # not the package: `tgrow scaling` imports no torch

SIZE_TOLERANCE = 0.25  # a derived target's parameter count lies within 25% of the asked size


def is_size(text: Any) -> bool:
    """Whether ``text`` reads as a parameter count (``7B``, ``1.2e8``), not a preset name or a file."""
    value = count_value(str(text))
    return value is not None and value > 0


def parse_size(text: Any) -> int:
    """``"7B"`` -> 7_000_000_000; ``"350M"``, ``"1.3b"``, ``"1.2e8"``, ``"125000"`` likewise."""
    return parse_count(text, "target size")


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


def _describe(cfg: ModelConfig) -> str:
    return f"L={cfg.n_layer} d={cfg.d_model} heads={cfg.n_head} ffn={cfg.d_ff}"


def _short(n: int) -> str:
    """``82512`` -> ``82.5K``: a count as one would ask for it."""
    for suffix, unit in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= unit:
            return f"{n / unit:.3g}{suffix}"
    return str(n)


def _ladder(source: ModelConfig, n_target: int):
    """The shape-keeping candidates (module docstring) in increasing size, up to the first above ``n_target``."""
    group = source.n_head // source.n_kv_head
    unit = source.head_dim * group
    aspect = source.d_model / source.n_layer
    heads_per_width = source.n_head / source.d_model  # keeps d_attn / d_model
    ffn_ratio = source.d_ff / source.d_model
    d_model = source.d_model + unit  # something grows
    while True:
        n_layer = max(source.n_layer, round(d_model / aspect))
        n_head = max(source.n_head, group * round(heads_per_width * d_model / group))
        d_ff = max(source.d_ff, int(round(ffn_ratio * d_model / 64)) * 64 or source.d_ff)
        cfg = source.replace(d_model=d_model, n_layer=n_layer, n_head=n_head, n_kv_head=n_head // group,
                             head_dim=source.head_dim, d_ff=d_ff)
        n = count_params(cfg)
        yield n, cfg
        if n > n_target:
            return
        d_model += unit


def _grid(source: ModelConfig, n_target: int, whole_depth: bool, whole_width: bool):
    """Candidates with whole multiples of the depth and/or width (module docstring): for each width, the
    two depths whose counts bracket ``n_target`` (the count is affine in the depth); widths until the
    shallowest is above it or past the model limits. Depths past the limits are left out."""
    ladder_widths = (cfg for _, cfg in _ladder(source, MAX_COUNT * 10))  # shape-keeping widths, heads, FFN
    step = source.n_layer if whole_depth else 1
    for k in range(1, MAX_COUNT):
        try:
            if k == 1:
                wide = source
            elif whole_width:
                wide = source.replace(d_model=k * source.d_model, n_head=k * source.n_head,
                                      n_kv_head=k * source.n_kv_head, head_dim=source.head_dim, d_ff=k * source.d_ff)
            else:
                wide = next(ladder_widths).replace(n_layer=source.n_layer)
        except ConfigError:
            return  # wider than the model limits allow
        shallow = count_params(wide)
        per_step = count_params(wide.replace(n_layer=source.n_layer + step)) - shallow
        j = max(0, math.floor((n_target - shallow) / per_step))
        for steps in (j, j + 1):
            if k == 1 and steps == 0:
                continue  # something grows
            try:
                cfg = wide.replace(n_layer=source.n_layer + steps * step)
            except ConfigError:
                continue  # deeper than the model limits allow
            yield count_params(cfg), cfg
        if shallow > n_target:
            return


def target_for_size(source: ModelConfig, size: str | int, *, what: str = "target size", whole_depth: bool = False,
                    whole_width: bool = False, tolerance: float | None = SIZE_TOLERANCE) -> ModelConfig:
    """The config of about ``size`` parameters with ``source``'s shape (module docstring); never smaller
    than the source in any size. ``whole_depth`` / ``whole_width``: only whole multiples of the depth /
    width (what ``stack`` / ``clone`` reach), the one nearest the source's aspect ratio among those within
    ``tolerance``. :class:`ConfigError` (one line, naming ``what``) if ``size`` is not above the source's
    count, or no candidate lies within ``tolerance`` of it (naming the nearest)."""
    n_target = parse_count(size, what)
    n_source = count_params(source)
    require(n_target > n_source, f"{what}={size!r} ({n_target:,} parameters) is not larger than the model "
                                 f"({n_source:,}); growth needs a larger target")
    aspect = source.d_model / source.n_layer
    grid = whole_depth or whole_width
    found = []
    try:
        for n, cfg in _grid(source, n_target, whole_depth, whole_width) if grid else _ladder(source, n_target):
            found.append((n, cfg, abs(math.log(cfg.d_model / cfg.n_layer / aspect))))
    except ConfigError as e:  # the shape-keeping rule ran past a size limit of ModelConfig
        raise ConfigError(f"{what}={size!r} ({n_target:,} parameters): no architecture of this model's shape "
                          f"reaches it within the model limits ({e})") from None
    reach = "of this model's shape" if not grid else "with whole multiples of the " + " and the ".join(
        w for w, on in (("depth (depth=stack)", whole_depth), ("width (width=clone)", whole_width)) if on)
    require(bool(found), f"{what}={size!r} ({n_target:,} parameters): no architecture {reach} reaches it within "
                         "the model limits")
    below = max((c for c in found if c[0] <= n_target), key=lambda c: (c[0], -c[2]), default=None)
    above = min((c for c in found if c[0] > n_target), key=lambda c: (c[0], c[2]), default=None)
    off = tolerance * n_target if tolerance is not None else math.inf
    within = [c for c in found if abs(c[0] - n_target) <= off]
    if grid and within:  # whole multiples are coarse: of the sizes near enough, the best shape
        return min(within, key=lambda c: (c[2], abs(c[0] - n_target)))[1]
    best = min((c for c in (below, above) if c is not None), key=lambda c: abs(c[0] - n_target))
    if abs(best[0] - n_target) > off:
        nearest = [c for c in (below, above) if c is not None]
        listed = " or ".join(f"{_short(c[0])} ({c[0]:,} parameters, {_describe(c[1])})" for c in nearest)
        raise ConfigError(f"{what}={size!r} ({n_target:,} parameters): no architecture {reach} lies within "
                          f"{tolerance:.0%} of it; the nearest: {listed}; ask for "
                          + ("that size" if len(nearest) == 1 else "one of those")
                          + (", or grow depth by insert_zero / width by zero_pad to reach sizes in between"
                             if grid else ", or give the target as a config"))
    return best[1]

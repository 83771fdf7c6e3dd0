"""Planning CompoundGrow: from a model's config and a target config to validated single-dimension steps.

Pure config arithmetic: nothing is built here, so every refusal (shrinking or unreachable targets,
changes of architecture type, unknown methods or options) happens before any work starts. The
methods, defaults and options are described in :mod:`transformer_grow.operators.composite`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import PRESETS, ModelConfig
from transformer_grow.model.config import check_growth
from transformer_grow.model.sharing import UNSHARED, unshared_config
from transformer_grow.operators import depth as depth_ops
from transformer_grow.operators import heads_ffn, moe, sequence, unshare, width
from transformer_grow.operators.build import GrowthPlan
from transformer_grow.operators.noise import NoiseSpec

CHOICES: dict[str, tuple[str, ...]] = {
    "width": width.WIDTH_METHODS,
    "heads": heads_ffn.HEADS_METHODS,
    "ffn": heads_ffn.FFN_METHODS,
    "experts": moe.EXPERT_METHODS,
    "depth": depth_ops.DEPTH_METHODS,
    "seq": sequence.SEQ_METHODS,
    "share": unshare.UNSHARE_METHODS,
}
DEFAULTS = {"width": "clone", "heads": "zero", "ffn": "zero", "depth": "stack", "seq": "copy", "share": "unshare"}
# option name -> (dimension, methods it applies to)
OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "layer_sources": ("depth", ("layer_map",)),
    "insert_positions": ("depth", ("insert_zero", "insert_random")),
    "block_init": ("depth", ("insert_zero",)),
    "rescale_eps": ("width", ("zero_pad",)),
    "router_init": ("experts", ("upcycle", "add")),
    "expert_init": ("experts", ("add",)),
}
FOLLOW_SOURCE = ("dropout", "init_std", "scale_residual_init", "moe_aux_loss_coef", "norm_eps")
NOISY = {
    "width": ("clone", "net2net"),
    "ffn": ("split",),
    "depth": ("stack", "duplicate", "interleave", "layer_map"),
    "experts": ("upcycle",),
}


@dataclass
class Step:
    """One planned single-dimension operator: its plan function, arguments and resulting config."""

    dimension: str
    method: str
    make_plan: Callable[..., GrowthPlan]
    kwargs: dict[str, Any]
    config: ModelConfig
    note: str | None = None


def target_config(source: ModelConfig, target: ModelConfig | dict | str) -> ModelConfig:
    """``target`` as a config: a :class:`ModelConfig`, a dict, or a preset name (its sizes; everything
    else, GQA group size included, from the source).

    A dict changes only what it names; every other setting is the *model's*, never a
    :class:`ModelConfig` default. Sizes derived from a named one keep the model's shape: ``head_dim``
    stays the model's; a new ``d_model`` without ``n_head`` scales ``n_head`` so heads keep their
    width (when the model's attention is d_model wide), a new ``n_head`` without ``n_kv_head`` keeps the
    GQA group size, and a new ``d_model`` without ``d_ff`` scales ``d_ff`` by the same ratio (when it
    divides). ``{"n_layer": 8}`` therefore grows depth and nothing else."""
    if isinstance(target, ModelConfig):
        return target
    if isinstance(target, dict):
        merged = {**source.to_dict(), **target}
        if target.get("share") == "none":  # unsharing: the other sharing settings go with it
            merged.update({k: v for k, v in UNSHARED.items() if k not in target})
        d_model = merged["d_model"]
        if isinstance(d_model, int) and d_model > 0 and d_model != source.d_model:  # else: from_dict refuses
            if "n_head" not in target and "head_dim" not in target and source.d_attn == source.d_model:
                if d_model % source.head_dim == 0:
                    merged["n_head"] = d_model // source.head_dim
            if "d_ff" not in target and (source.d_ff * d_model) % source.d_model == 0:
                merged["d_ff"] = source.d_ff * d_model // source.d_model
        group = source.n_head // source.n_kv_head
        n_head = merged["n_head"]
        if "n_kv_head" not in target and isinstance(n_head, int) and n_head != source.n_head and n_head % group == 0:
            merged["n_kv_head"] = n_head // group
        return ModelConfig.from_dict(merged)
    choice("target preset", target, tuple(PRESETS))
    sizes = PRESETS[target]
    kept = {
        k: v
        for k, v in source.to_dict().items()
        if k not in ("n_layer", "d_model", "n_head", "head_dim", "n_kv_head", "d_ff", "seq_len")
    }
    group = source.n_head // source.n_kv_head
    require(
        sizes["n_head"] % group == 0,
        f"preset {target!r} has n_head={sizes['n_head']}, not a multiple of "
        f"the model's kv group size {group}",
    )
    return ModelConfig.from_dict({**kept, **sizes, "n_kv_head": sizes["n_head"] // group})


def resolve_choices(method: str | None, given: dict[str, str | None]) -> dict[str, str | None]:
    """Per-dimension choices from ``method`` (depth and/or width shorthand) and explicit names."""
    chosen = dict(given)
    for name in [*(method.split("+") if method else []), given.get("depth")]:
        if isinstance(name, str):
            depth_ops.check_method_name(name)
    for name in method.split("+") if method else []:
        dims = [d for d in ("depth", "width", "share") if name in CHOICES[d]]
        require(
            bool(dims),
            f"method={name!r} is not a depth, width or share method; choose from "
            f"{', '.join(CHOICES['depth'] + CHOICES['width'] + CHOICES['share'])}",
        )
        require(
            chosen.get(dims[0]) in (None, name),
            f"method={name!r} conflicts with {dims[0]}={chosen.get(dims[0])!r}",
        )
        chosen[dims[0]] = name
    for dim, value in chosen.items():
        if value is not None:
            choice(dim, value, CHOICES[dim])
    return chosen


def plan_steps(
    source: ModelConfig,
    target: ModelConfig,
    choices: dict[str, str | None],
    options: dict[str, Any],
    noise: str,
    noise_std: float,
) -> list[Step]:
    """Every step from ``source`` to ``target``, fully validated; nothing is built."""
    check_growth(source, target)  # fixed fields kept, no size shrinks, something grows
    for name in options:
        require(name in OPTIONS, f"unknown growth option {name!r}; allowed: {', '.join(sorted(OPTIONS))}")
    steps, cur = [], source

    def method_for(dim: str) -> str:
        return choices.get(dim) or DEFAULTS[dim]

    def noise_for(dim: str, method: str) -> tuple[dict[str, Any], str | None]:
        if noise == "none" or method not in NOISY.get(dim, ()):
            return {}, None if noise == "none" else f"noise={noise!r} not used by {dim}={method!r}"
        if noise == "cancel" and dim in ("depth", "experts"):
            return {}, f"noise='cancel' not applicable to {dim}={method!r} (no cancelling pairs); none added"
        return {"noise": noise, "noise_std": noise_std}, None

    def add(dim: str, method: str, make_plan, kwargs: dict, config: ModelConfig, extra: dict | None = None):
        noise_kwargs, note = noise_for(dim, method)
        kwargs = {**kwargs, **noise_kwargs, **(extra or {})}
        steps.append(Step(dim, method, make_plan, kwargs, config, note))
        return config

    def opt(name: str, default=None):
        return options.get(name, default)

    if cur.share != "none":  # unsharing first (exact): every other operator then works on the full model
        cur = add("share", "unshare", unshare.unshare_plan, {}, unshared_config(cur))

    if target.d_model != cur.d_model:
        m = method_for("width")
        if m == "clone":
            k = width.clone_factor(cur.d_model, target.d_model)
            heads = target.n_head >= k * cur.n_head and target.n_kv_head >= k * cur.n_kv_head
            ffn = target.d_ff >= k * cur.d_ff
            cur = add(
                "width",
                m,
                width.clone_plan,
                {"factor": k, "heads": heads, "ffn": ffn},
                width.clone_config(cur, k, heads, ffn),
            )
        else:
            kwargs = {"d_model": target.d_model}
            new = width.padded_config(cur, target.d_model, m)
            if m == "zero_pad":
                kwargs["rescale_eps"] = opt("rescale_eps", True)
                if kwargs["rescale_eps"]:
                    new = new.replace(norm_eps=cur.norm_eps * cur.d_model / target.d_model)
            make = {
                "net2net": width.net2net_plan,
                "zero_pad": width.zero_pad_plan,
                "random_pad": width.random_pad_plan,
            }[m]
            cur = add("width", m, make, kwargs, new)
    if (target.n_head, target.n_kv_head) != (cur.n_head, cur.n_kv_head):
        new = heads_ffn.heads_config(cur, target.n_head, target.n_kv_head)
        cur = add(
            "heads",
            method_for("heads"),
            heads_ffn.heads_plan,
            {"n_head": target.n_head, "n_kv_head": target.n_kv_head},
            new,
        )
    if target.d_ff != cur.d_ff:
        m = method_for("ffn")
        cur = add(
            "ffn",
            m,
            heads_ffn.ffn_plan,
            {"d_ff": target.d_ff, "method": m},
            heads_ffn.ffn_config(cur, target.d_ff),
        )
    if target.n_expert != cur.n_expert:
        m = choices.get("experts") or ("upcycle" if cur.n_expert == 0 else "add")
        router = opt("router_init")
        if m == "upcycle":
            kwargs = {"n_expert": target.n_expert, "top_k": target.moe_top_k}
            new = moe.upcycle_config(cur, target.n_expert, target.moe_top_k)
            cur = add(
                "experts", m, moe.upcycle_plan, kwargs, new, {"router_init": router} if router else None
            )
        else:
            kwargs = {"n_expert": target.n_expert, "top_k": target.moe_top_k}
            extra = {
                k: v
                for k, v in (("router_init", router), ("expert_init", opt("expert_init")))
                if v is not None
            }
            cur = add(
                "experts",
                m,
                moe.add_experts_plan,
                kwargs,
                moe.add_experts_config(cur, target.n_expert, target.moe_top_k),
                extra,
            )
    elif cur.n_expert and target.moe_top_k != cur.moe_top_k:
        raise ConfigError(f"moe_top_k cannot change on an MoE model ({cur.moe_top_k} -> {target.moe_top_k})")
    if target.n_layer != cur.n_layer:
        m = method_for("depth")
        n = cur.n_layer
        if m in depth_ops.WHOLE_FACTOR_METHODS:
            factor = depth_ops.factor_for(n, target.n_layer, m)
            layout = depth_ops.whole_factor_layout(m, n, factor)
        elif m == "layer_map":
            sources = opt("layer_sources")
            require(
                sources is not None, "depth='layer_map' needs option layer_sources=[old block index, ...]"
            )
            require(
                len(sources) == target.n_layer,
                f"layer_sources has {len(sources)} entries; the target has n_layer={target.n_layer}",
            )
            layout = list(sources)
        else:
            positions = opt("insert_positions") or depth_ops.even_positions(n, target.n_layer - n)
            require(
                len(positions) == target.n_layer - n,
                f"insert_positions has {len(positions)} entries; "
                f"{target.n_layer - n} blocks are to be inserted",
            )
            init = opt("block_init", "copy") if m == "insert_zero" else "random"
            layout = depth_ops.insert_layout(n, list(positions), zero_writes=m == "insert_zero", init=init)
        kind = "exact" if m == "insert_zero" else "none"
        # interleave always carries plain noise on its copies (its defining difference from stack)
        extra = {"noise": "plain", "noise_std": noise_std} if m == "interleave" and noise != "plain" else {}
        cur = add(
            "depth",
            m,
            depth_ops.depth_plan,
            {"layout": layout, "method": m, "kind": kind},
            depth_ops.depth_config(cur, layout),
            extra,
        )
    if (target.seq_len, target.rope_scale, target.rope_base) != (cur.seq_len, cur.rope_scale, cur.rope_base):
        m = method_for("seq")
        rope = (
            {} if cur.pos == "learned" else {"rope_scale": target.rope_scale, "rope_base": target.rope_base}
        )
        cur = add(
            "seq",
            m,
            sequence.seq_plan,
            {"seq_len": target.seq_len, "method": m, **rope},
            sequence.seq_config(cur, target.seq_len, rope.get("rope_scale"), rope.get("rope_base")),
        )
    methods = {step.dimension: step.method for step in steps}
    for dim, value in choices.items():
        covered_by_clone = dim in ("heads", "ffn") and methods.get("width") == "clone"
        require(
            value is None or dim in methods or covered_by_clone,
            f"{dim}={value!r} was chosen, but no {dim} growth is needed to reach the target",
        )
    for name in options:
        dim, allowed = OPTIONS[name]
        require(dim in methods, f"option {name!r} does not apply: {dim} does not grow")
        require(
            methods[dim] in allowed,
            f"option {name!r} applies to {dim}={' or '.join(map(repr, allowed))}, not {dim}={methods[dim]!r}",
        )
    return steps


def plan(
    source: ModelConfig,
    target: ModelConfig | dict | str,
    method: str | None = None,
    *,
    depth: str | None = None,
    width: str | None = None,
    heads: str | None = None,
    ffn: str | None = None,
    seq: str | None = None,
    experts: str | None = None,
    noise: str = "none",
    noise_std: float = 1e-3,
    **options,
) -> list[Step]:
    """The validated steps :func:`grow` would take from ``source`` to ``target``; builds nothing.
    Raises :class:`ConfigError` for any refused target, method or option."""
    NoiseSpec(noise, noise_std)
    choices = resolve_choices(
        method, {"depth": depth, "width": width, "heads": heads, "ffn": ffn, "seq": seq, "experts": experts}
    )
    return plan_steps(source, target_config(source, target), choices, options, noise, noise_std)

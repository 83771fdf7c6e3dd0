"""Mixture-of-experts growth: dense -> MoE upcycling, and adding experts to an MoE layer.

- :func:`upcycle` (sparse upcycling, Komatsuzaki et al. 2022): every expert is a copy of the dense
  FFN; the router is random (``router_init="random"``, the default: the model's init N(0, init_std))
  or near zero (``"zero"``: N(0, ZERO_ROUTER_JITTER * init_std), seeded, so routing starts almost
  uniform). The MoE combine weights are renormalised over the chosen experts and sum to one, so the
  layer returns exactly the FFN's output whatever the router says. Exact.
  Why never an exactly zero router: all logits would tie, every token would pick the *same* first k
  experts, those k would get identical gradients and the others none, and the copies would never
  diverge (four experts stay two pairs). A small seeded jitter breaks the ties per token. The router
  learns from the LM loss from the first step through the stop-gradient combine of
  :mod:`transformer_grow.model.moe` (``w_j = p_j / sg(sum_chosen p)``: value renormalised, gradient
  Switch-style), which also gives top-1 routing a router gradient.
- :func:`add_experts`: new experts (copies of old ones or fresh) with a zero output projection and
  a zero (or random) router row. Exact only while a new expert is never selected: when one is, it
  takes a top-k slot and part of the combine weight from an old expert. Declared approximate; the
  share of routing slots the new experts took on the probe is measured and reported. Behind a top-any
  router (DynMoE) a new expert gets a threshold above every score (:func:`exact_threshold`): it can
  neither fire nor win a fallback, so the addition is exact (declared and measured).
- :func:`adapt_experts` (the dynamic expert count, DynMoE sec. 3.3): per layer, remove chosen experts
  (the survivors are renumbered, their weights, router rows and thresholds carried) and append new ones
  (copies of an expert with optional symmetry-breaking noise, or fresh; a given routing vector, e.g.
  from the tokens no expert fired for; an exact, unreachable threshold or a given one). Additions alone
  with exact thresholds are exact; a removal is exact on every token that never reached the removed
  experts (declared approximate; measured on the probe). The parameter map carries the AdamW moments of
  the kept experts and drops the removed experts' moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.model.dynmoe import UNREACHABLE_MARGIN
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.build import GrowthPlan, kind_with_noise, run_operator
from transformer_grow.operators.map import DimMap, ParamMap, ParamSource
from transformer_grow.operators.noise import NoiseSpec
from transformer_grow.operators.report import GrowthResult

EXPERT_METHODS = ("upcycle", "add")
ROUTER_INITS = ("random", "zero")
# upcycle router_init="zero": std of the symmetry-breaking jitter, relative to init_std. Logits of
# ~1e-2 * init_std * |x| break top-k ties per token yet leave the routing probabilities ~uniform.
ZERO_ROUTER_JITTER = 1e-2
EXPERT_INITS = ("copy", "random")


def upcycle_config(config: ModelConfig, n_expert: int, top_k: int | None = None) -> ModelConfig:
    require(
        config.n_expert == 0,
        f"upcycle turns a dense FFN into experts, but the model already has "
        f"n_expert={config.n_expert}; use experts='add'",
    )
    require(
        isinstance(n_expert, int) and n_expert >= 2, f"upcycle: n_expert={n_expert!r} must be an integer >= 2"
    )
    return config.replace(n_expert=n_expert, moe_top_k=config.moe_top_k if top_k is None else top_k)


def add_experts_config(config: ModelConfig, n_expert: int, top_k: int | None = None) -> ModelConfig:
    require(config.n_expert > 0, "experts='add' needs an MoE model (n_expert > 0); use experts='upcycle'")
    require(config.moe_layer_experts is None,
            f"experts='add' grows every layer to one count; this model's layers differ "
            f"(moe_layer_experts={config.moe_layer_experts}): use adapt_experts")
    require(
        isinstance(n_expert, int) and n_expert > config.n_expert,
        f"add experts: n_expert={n_expert!r} must be an integer larger than the current {config.n_expert}",
    )
    require(
        top_k in (None, config.moe_top_k),
        f"add experts keeps moe_top_k={config.moe_top_k} (asked {top_k}): "
        "changing k changes every layer's output",
    )
    return config.replace(n_expert=n_expert)


def _ffn_suffixes(
    model: nn.Module, adapter: ModelAdapter, key: str, expert: int | None
) -> dict[str, torch.Tensor]:
    prefix = adapter.ffn_prefix(key, expert)
    return {n[len(prefix) :]: p for n, p in model.named_parameters() if n.startswith(prefix)}


def _writes(adapter: ModelAdapter, name: str, config: ModelConfig) -> bool:
    return ("model", "write") in adapter.param_axes(name, config)


def threshold_name(adapter: ModelAdapter, key: str) -> str:
    """Name of the top-any thresholds ``[n_expert]`` of block ``key`` (next to the routing vectors)."""
    return adapter.router_name(key).rpartition(".")[0] + ".threshold"


def exact_threshold(thresholds: torch.Tensor) -> float:
    """A threshold at which a new top-any expert neither fires nor wins a fallback, whatever the token.

    Cosine scores lie in [-1, 1], so ``G_new > 1`` never fires. A token that fires nothing goes to the
    expert of largest margin ``s - G`` (:mod:`transformer_grow.model.dynmoe`); the old expert of the
    lowest threshold has margin ``>= -1 - min G``, the new one ``<= 1 - G_new``: with
    ``G_new > 2 + min G`` the new expert always loses. Plus :data:`UNREACHABLE_MARGIN` for rounding.
    """
    lowest = float(thresholds.min()) if thresholds.numel() else -1.0
    return max(1.0, 2.0 + lowest) + UNREACHABLE_MARGIN


def write_rows(values: dict[str, dict[int, torch.Tensor | float]]):
    """``GrowthPlan.finish``: overwrite chosen rows ``{param name: {row: value}}`` of the built model."""

    @torch.no_grad()
    def finish(model: nn.Module, seed: int) -> None:
        params = dict(model.named_parameters())
        for name, rows in values.items():
            for row, value in rows.items():
                params[name][row] = torch.as_tensor(value, dtype=params[name].dtype)

    return finish


def router_jitter(names: list[str], std: float):
    """``GrowthPlan.finish``: overwrite the routers ``names`` with seeded N(0, std) values."""

    @torch.no_grad()
    def finish(model: nn.Module, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        params = dict(model.named_parameters())
        for name in names:
            param = params[name]
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * std)

    return finish


def upcycle_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    n_expert: int,
    top_k: int | None = None,
    router_init: str = "random",
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
) -> GrowthPlan:
    choice("router_init", router_init, ROUTER_INITS)
    config = adapter.config(model)
    new_config = upcycle_config(config, n_expert, top_k)
    spec = NoiseSpec(noise, noise_std, seed)
    spec.check_supported(
        "experts='upcycle' (combine weights differ per token: no cancelling pairs)", ("none", "plain")
    )
    params = dict(model.named_parameters())
    entries = {n: ParamSource(tuple(p.shape), n) for n, p in params.items()}
    for key in adapter.block_keys(model):
        for suffix, p in _ffn_suffixes(model, adapter, key, None).items():
            old_name = adapter.ffn_prefix(key) + suffix
            del entries[old_name]
            for e in range(n_expert):
                noisy = spec.mode == "plain" and p.dim() >= 2
                entries[adapter.ffn_prefix(key, e) + suffix] = ParamSource(
                    tuple(p.shape), old_name, noise="plain" if noisy else "none", copies=n_expert
                )
        fill = "zeros" if router_init == "zero" else "fresh"  # "zero" gets its jitter in finish
        entries[adapter.router_name(key)] = ParamSource((n_expert, config.d_model), None, fill=fill)
        if config.moe_router == "topany":  # thresholds at moe_threshold_init (the router's own init)
            entries[threshold_name(adapter, key)] = ParamSource((n_expert,), None, fill="fresh")
    routers = [adapter.router_name(key) for key in adapter.block_keys(model)]
    jitter_std = ZERO_ROUTER_JITTER * config.init_std
    router_note = (
        f"router near zero: seeded N(0, {jitter_std:.2g}) jitter breaks top-k ties"
        if router_init == "zero"
        else f"router random N(0, {config.init_std:g})"
    )
    return GrowthPlan(
        "experts=upcycle",
        kind_with_noise("exact", spec),
        new_config,
        adapter.block_keys(model),
        ParamMap(entries),
        options={
            "n_expert": n_expert,
            "top_k": new_config.moe_top_k,
            "router_init": router_init,
            "noise": noise,
        },
        notes=[f"{n_expert} experts copied from the dense FFN; {router_note}"],
        noise=spec,
        finish=router_jitter(routers, jitter_std) if router_init == "zero" else None,
    )


def add_experts_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    n_expert: int,
    top_k: int | None = None,
    expert_init: str = "copy",
    router_init: str = "zero",
    seed: int = 0,
) -> GrowthPlan:
    choice("expert_init", expert_init, EXPERT_INITS)
    choice("router_init", router_init, ROUTER_INITS)
    config = adapter.config(model)
    new_config = add_experts_config(config, n_expert, top_k)
    old_e = config.n_expert
    entries = {n: ParamSource(tuple(p.shape), n) for n, p in model.named_parameters()}
    router_rows = DimMap.gather(torch.cat([torch.arange(old_e), torch.full((n_expert - old_e,), -1)]))
    top_any = config.moe_router == "topany"
    unreachable: dict[str, dict[int, float]] = {}
    params = dict(model.named_parameters())
    for key in adapter.block_keys(model):
        router = adapter.router_name(key)
        entries[router] = ParamSource(
            (n_expert, config.d_model),
            router,
            (router_rows, None),
            fill="zeros" if router_init == "zero" and not top_any else "fresh",  # a zero vector has no cosine
        )
        if top_any:
            name = threshold_name(adapter, key)
            entries[name] = ParamSource((n_expert,), name, (router_rows,), fill="fresh")
            unreachable[name] = dict.fromkeys(range(old_e, n_expert), exact_threshold(params[name].detach()))
        for e in range(old_e, n_expert):
            for suffix, p in _ffn_suffixes(model, adapter, key, e % old_e).items():
                name = adapter.ffn_prefix(key, e) + suffix
                if _writes(adapter, name, config):  # zero output: the expert adds nothing when chosen
                    entries[name] = ParamSource(tuple(p.shape), None, fill="zeros")
                elif expert_init == "copy":
                    entries[name] = ParamSource(tuple(p.shape), adapter.ffn_prefix(key, e % old_e) + suffix)
                else:
                    entries[name] = ParamSource(tuple(p.shape), None, fill="fresh")
    notes = [
        (
            f"{n_expert - old_e} new expert(s) per layer: {expert_init} weights, zero output projection, "
            + ("thresholds above every score (top-any): exact" if top_any else
               f"{router_init} router row; exact only while never selected (top-{config.moe_top_k})")
        )
    ]
    return GrowthPlan(
        "experts=add",
        "exact" if top_any else "approximate",
        new_config,
        adapter.block_keys(model),
        ParamMap(entries),
        options={"n_expert": n_expert, "expert_init": expert_init, "router_init": router_init},
        notes=notes,
        finish=write_rows(unreachable) if unreachable else None,
    )


def new_expert_share(model: nn.Module, old_n_expert: int) -> float | None:
    """Share of routing slots that went to experts ``>= old_n_expert`` in the model's last forward
    (GPT MoE layers record ``expert_load``); ``None`` if the model has no such record."""
    loads = [m.expert_load for m in model.modules() if hasattr(m, "expert_load") and m.expert_load.numel()]
    if not loads:
        return None
    total = sum(int(load.sum()) for load in loads)
    new = sum(int(load[old_n_expert:].sum()) for load in loads)
    return new / total if total else None


def upcycle(
    model: nn.Module,
    n_expert: int,
    top_k: int | None = None,
    *,
    router_init: str = "random",
    noise: str = "none",
    noise_std: float = 1e-3,
    **run,
) -> GrowthResult:
    """Dense FFN -> ``n_expert`` copies behind a top-k router (sparse upcycling, Komatsuzaki et al.
    2022; exact with combine weights renormalised over the chosen experts). ``router_init``: random
    (default) or near-zero with a seeded jitter; never exactly zero (see the module docstring)."""
    return run_operator(
        model,
        upcycle_plan,
        n_expert=n_expert,
        top_k=top_k,
        router_init=router_init,
        noise=noise,
        noise_std=noise_std,
        **run,
    )


def add_experts(
    model: nn.Module, n_expert: int, *, expert_init: str = "copy", router_init: str = "zero", **run
) -> GrowthResult:
    """Grow an MoE layer to ``n_expert`` experts whose output projection is zero; exact only while they
    are never selected (approximate; the routing share they take on the probe is reported)."""
    old_n = (run.get("adapter") or adapter_for(model)).config(model).n_expert
    result = run_operator(
        model, add_experts_plan, n_expert=n_expert, expert_init=expert_init, router_init=router_init, **run
    )
    note_new_expert_share(result, old_n)
    return result


def note_new_expert_share(result: GrowthResult, old_n_expert: int) -> None:
    """Add the probe's routing share of new experts to the report (after measurement)."""
    if result.report.max_abs_dlogits is None:  # not measured: no probe forward to read the routing from
        return
    share = new_expert_share(result.model, old_n_expert)
    if share is not None:
        result.report.options["new_expert_share"] = share
        result.report.notes.append(f"new experts took {share:.1%} of routing slots on the probe")


# ----------------------------------------------------------------- dynamic expert count (per layer)
@dataclass
class NewExpert:
    """One expert to append to a layer (:func:`adapt_experts`).

    Attributes:
        copy_of: the old expert whose FFN weights it copies (``None``: the model's fresh init).
        routing: its routing vector ``[d_model]`` (``None``: ``copy_of``'s vector, else fresh).
        threshold: its threshold (``None``: :func:`exact_threshold`, it cannot fire at first).
        noise_std: std of the symmetry-breaking Gaussian noise added to copied FFN weights (absolute).
    """

    copy_of: int | None = None
    routing: torch.Tensor | None = None
    threshold: float | None = None
    noise_std: float = 0.0


def layer_counts_config(config: ModelConfig, counts: list[int]) -> ModelConfig:
    """``config`` with per-block expert ``counts`` (``moe_layer_experts`` unset when they are equal)."""
    uniform = len(set(counts)) == 1
    return config.replace(n_expert=max(counts), moe_layer_experts=None if uniform else list(counts),
                          moe_top_k=min(config.moe_top_k, max(counts)))


def adapt_experts_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    remove: dict[str, list[int]] | None = None,
    add: dict[str, list[NewExpert]] | None = None,
    seed: int = 0,
) -> GrowthPlan:
    remove, add = dict(remove or {}), dict(add or {})
    config = adapter.config(model)
    require(config.n_expert > 0 and config.moe_router == "topany",
            f"adapt_experts needs a top-any MoE (moe_router='topany'); this model has n_expert={config.n_expert}, "
            f"moe_router={config.moe_router!r}")
    keys = adapter.block_keys(model)
    unknown = sorted((set(remove) | set(add)) - set(keys))
    require(not unknown, f"adapt_experts: blocks {unknown} do not exist; blocks: {', '.join(keys)}")
    params = dict(model.named_parameters())
    entries = {n: ParamSource(tuple(p.shape), n) for n, p in params.items()}
    rows: dict[str, dict[int, torch.Tensor | float]] = {}
    counts, noisy, exact = [], False, True
    for key, old_e in zip(keys, config.experts_per_layer()):
        gone = sorted(set(remove.get(key, [])))
        require(all(isinstance(e, int) and 0 <= e < old_e for e in gone),
                f"adapt_experts: block {key} has experts 0..{old_e - 1}; cannot remove {gone}")
        kept = [e for e in range(old_e) if e not in gone]
        new = add.get(key, [])
        require(len(kept) + len(new) >= 1, f"adapt_experts: block {key} would have no expert left")
        exact = exact and not gone and all(n.threshold is None for n in new)
        n_total = len(kept) + len(new)
        counts.append(n_total)
        for e in range(old_e):  # the old names are replaced by the renumbered ones below
            for suffix in _ffn_suffixes(model, adapter, key, e):
                del entries[adapter.ffn_prefix(key, e) + suffix]
        for j, e in enumerate(kept):
            for suffix, p in _ffn_suffixes(model, adapter, key, e).items():
                source = adapter.ffn_prefix(key, e) + suffix
                entries[adapter.ffn_prefix(key, j) + suffix] = ParamSource(tuple(p.shape), source)
        router, threshold = adapter.router_name(key), threshold_name(adapter, key)
        router_rows = torch.tensor(kept + [-1] * len(new))
        entries[router] = ParamSource((n_total, config.d_model), router, (DimMap.gather(router_rows), None))
        entries[threshold] = ParamSource((n_total,), threshold, (DimMap.gather(router_rows),))
        unreachable = exact_threshold(params[threshold].detach()[kept])
        for i, spec in enumerate(new):
            j = len(kept) + i
            require(spec.copy_of is None or 0 <= spec.copy_of < old_e,
                    f"adapt_experts: block {key} has no expert {spec.copy_of} to copy")
            for suffix, p in _ffn_suffixes(model, adapter, key, 0).items():
                name = adapter.ffn_prefix(key, j) + suffix
                if spec.copy_of is None:
                    entries[name] = ParamSource(tuple(p.shape), None, fill="fresh")
                else:
                    noise = "plain" if spec.noise_std > 0 and p.dim() >= 2 else "none"
                    noisy = noisy or noise == "plain"
                    entries[name] = ParamSource(tuple(p.shape), adapter.ffn_prefix(key, spec.copy_of) + suffix,
                                                noise=noise)
            vector = spec.routing
            if vector is None and spec.copy_of is not None:
                vector = params[router].detach()[spec.copy_of]
            if vector is not None:
                rows.setdefault(router, {})[j] = vector.detach().float().cpu()
            rows.setdefault(threshold, {})[j] = unreachable if spec.threshold is None else float(spec.threshold)
    stds = {n.noise_std for specs in add.values() for n in specs if n.copy_of is not None and n.noise_std > 0}
    require(len(stds) <= 1, f"adapt_experts: one noise_std per call, got {sorted(stds)}")
    spec = NoiseSpec("plain", stds.pop(), seed) if noisy else NoiseSpec()
    summary = {key: {"removed": sorted(set(remove.get(key, []))), "added": len(add.get(key, []))}
               for key in keys if remove.get(key) or add.get(key)}
    return GrowthPlan(
        "experts=adapt",
        # never-firing new experts leave the function unchanged, copied weights' noise included
        "exact" if exact else "approximate",
        layer_counts_config(config, counts),
        keys,
        ParamMap(entries),
        options={"changes": summary, "experts": counts},
        notes=[f"experts per layer {config.experts_per_layer()} -> {counts}"
               + ("; new experts cannot fire at first (exact)" if exact else "")],
        noise=spec,
        finish=write_rows(rows) if rows else None,
    )


def adapt_experts(
    model: nn.Module,
    remove: dict[str, list[int]] | None = None,
    add: dict[str, list[NewExpert]] | None = None,
    **run,
) -> GrowthResult:
    """Remove and append experts per layer of a top-any MoE (``{block key: expert indices}``,
    ``{block key: [NewExpert, ...]}``); exact when only unreachable experts are added. Not a growth in
    the :func:`~transformer_grow.model.config.check_growth` sense (layers may lose experts), so it is
    called directly, not through :func:`~transformer_grow.operators.grow`."""
    return run_operator(model, adapt_experts_plan, remove=remove, add=add, **run)

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
  share of routing slots the new experts took on the probe is measured and reported.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.grow.adapter import ModelAdapter, adapter_for
from transformer_grow.grow.build import GrowthPlan, kind_with_noise, run_operator
from transformer_grow.grow.map import DimMap, ParamMap, ParamSource
from transformer_grow.grow.noise import NoiseSpec
from transformer_grow.grow.report import GrowthResult
from transformer_grow.model import ModelConfig

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
    for key in adapter.block_keys(model):
        router = adapter.router_name(key)
        entries[router] = ParamSource(
            (n_expert, config.d_model),
            router,
            (router_rows, None),
            fill="zeros" if router_init == "zero" else "fresh",
        )
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
            f"{router_init} router row; exact only while never selected (top-{config.moe_top_k})"
        )
    ]
    return GrowthPlan(
        "experts=add",
        "approximate",
        new_config,
        adapter.block_keys(model),
        ParamMap(entries),
        options={"n_expert": n_expert, "expert_init": expert_init, "router_init": router_init},
        notes=notes,
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

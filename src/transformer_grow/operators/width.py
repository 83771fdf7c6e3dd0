"""Width growth (d_model): clone, Net2Net replication, zero padding, random padding.

- :func:`clone` (integer factor k; staged training, Shen et al. 2022; HyperCloning, Samragh et al.
  2024): the residual stream becomes ``[h, h, ...]``. Every linear becomes a k x k grid of ``W/k``
  (rows tiled where the axis is written, columns tiled and divided by k where it is read), norms
  are tiled (LayerNorm and RMSNorm see the same mean, variance and eps, so they return tiled outputs);
  attention heads are cloned with ``head_dim`` fixed (``n_head``, ``n_kv_head`` times k), the FFN
  units too. The LM head reads the tiled stream; its 1/k goes into the final norm, which also covers
  tied embeddings. Exact.
- :func:`net2net` (Chen et al. 2016, Net2WiderNet): any larger d_model; new coordinates replicate
  random old ones, readers divide by the replication count. Exact through linears; norms over unequally
  replicated coordinates see different statistics: approximate (exact when every coordinate has the
  same number of copies).
- :func:`zero_pad`: new coordinates start at exactly zero (every writer's new rows are zero). RMSNorm
  then sees mean-of-squares scaled by d/d_new; rescaling the old norm weights by sqrt(d/d_new) and eps
  by d/d_new (``rescale_eps``) makes it exact. LayerNorm's mean and variance change: approximate.
- :func:`random_pad`: new coordinates freshly initialised everywhere: no preservation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transformer_grow.errors import require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.adapter import ModelAdapter
from transformer_grow.operators.axes import AxisChange, axis_param_map
from transformer_grow.operators.build import GrowthPlan, kind_with_noise, run_operator
from transformer_grow.operators.noise import NoiseSpec
from transformer_grow.operators.report import GrowthResult

WIDTH_METHODS = ("clone", "net2net", "zero_pad", "random_pad")


def clone_config(config: ModelConfig, factor: int, heads: bool = True, ffn: bool = True) -> ModelConfig:
    require(
        isinstance(factor, int) and factor >= 2,
        f"clone factor={factor!r} must be an integer >= 2 (d_model {config.d_model} -> {config.d_model}*k)",
    )
    # head_dim and (unless cloned) the head counts and d_ff stay as they are, not re-derived from d_model
    changes = {"d_model": config.d_model * factor, "head_dim": config.head_dim, "n_kv_head": config.n_kv_head,
               "d_ff": config.d_ff}
    if heads:
        changes.update(n_head=config.n_head * factor, n_kv_head=config.n_kv_head * factor)
    if ffn:
        changes["d_ff"] = config.d_ff * factor
    return config.replace(**changes)


def clone_factor(old_d: int, new_d: int) -> int:
    """The integer factor from ``old_d`` to ``new_d``; ConfigError naming the alternatives if none."""
    require(
        new_d % old_d == 0 and new_d // old_d >= 2,
        f"width='clone' needs an integer factor >= 2, but d_model {old_d} -> {new_d} is "
        f"x{new_d / old_d:.4g}; "
        "use width='net2net', 'zero_pad' or 'random_pad' for other targets",
    )
    return new_d // old_d


def padded_config(config: ModelConfig, d_model: int, method: str) -> ModelConfig:
    require(
        isinstance(d_model, int) and d_model > config.d_model,
        f"{method}: d_model={d_model!r} must be an integer larger than the current {config.d_model}",
    )
    return config.replace(d_model=d_model, head_dim=config.head_dim, d_ff=config.d_ff)  # only d_model widens


def _tile(size: int, factor: int) -> torch.Tensor:
    return torch.arange(size).repeat(factor)


def clone_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    factor: int = 2,
    heads: bool = True,
    ffn: bool = True,
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
) -> GrowthPlan:
    config = adapter.config(model)
    new_config = clone_config(config, factor, heads, ffn)
    spec = NoiseSpec(noise, noise_std, seed)
    changes = {"model": AxisChange.replicate(_tile(config.d_model, factor))}
    if heads:
        changes["q"] = AxisChange.replicate(_tile(config.d_attn, factor))
        changes["kv"] = AxisChange.replicate(_tile(config.d_kv, factor))
    if ffn:
        changes["ffn"] = AxisChange.replicate(_tile(config.d_ff, factor))
    param_map = axis_param_map(model, adapter, changes, spec.mode)
    return GrowthPlan(
        "clone",
        kind_with_noise("exact", spec),
        new_config,
        adapter.block_keys(model),
        param_map,
        options={"factor": factor, "heads": heads, "ffn": ffn, "noise": noise, "noise_std": noise_std},
        noise=spec,
    )


def replication_rows(old_size: int, new_size: int, seed: int) -> torch.Tensor:
    """Old rows in place, then ``new_size - old_size`` seeded random old rows, balanced: every old row
    is copied once before any is copied twice (Net2Net's random mapping, with even counts)."""
    g = torch.Generator().manual_seed(seed)
    extra = new_size - old_size
    picks = torch.cat([torch.randperm(old_size, generator=g) for _ in range(math.ceil(extra / old_size))])
    return torch.cat([torch.arange(old_size), picks[:extra]])


def net2net_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    d_model: int,
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
) -> GrowthPlan:
    config = adapter.config(model)
    new_config = padded_config(config, d_model, "net2net")
    spec = NoiseSpec(noise, noise_std, seed)
    rows = replication_rows(config.d_model, d_model, seed)
    counts = torch.bincount(rows)
    uniform = bool((counts == counts[0]).all())
    param_map = axis_param_map(model, adapter, {"model": AxisChange.replicate(rows)}, spec.mode)
    notes = (
        []
        if uniform
        else [
            (
                f"{config.norm} statistics change: coordinates are replicated "
                f"{int(counts.min())}-{int(counts.max())} times, so the norm's mean/variance over d_model "
                "differ from the old model's (Net2Net is exact only through linears and elementwise maps)"
            )
        ]
    )
    return GrowthPlan(
        "net2net",
        kind_with_noise("exact" if uniform else "approximate", spec),
        new_config,
        adapter.block_keys(model),
        param_map,
        options={"d_model": d_model, "noise": noise, "noise_std": noise_std},
        notes=notes,
        noise=spec,
    )


def zero_pad_plan(
    model: nn.Module, adapter: ModelAdapter, *, d_model: int, rescale_eps: bool = True, seed: int = 0
) -> GrowthPlan:
    config = adapter.config(model)
    new_config = padded_config(config, d_model, "zero_pad")
    ratio = config.d_model / d_model
    if rescale_eps:
        new_config = new_config.replace(norm_eps=config.norm_eps * ratio)
    rms = config.norm == "rmsnorm"
    # Writers' new rows are zero, so the new coordinates of the residual stream are exactly zero.
    # RMSNorm: their normalised value is 0 whatever the weight, so readers may be fresh (and train);
    # LayerNorm: they normalise to -mean/std != 0, so readers' new columns start at zero instead.
    fill = {"write": "zeros", "read": "fresh" if rms else "zeros"}
    change = AxisChange.extend(config.d_model, d_model, fill, norm_scale=math.sqrt(ratio))
    param_map = axis_param_map(model, adapter, {"model": change})
    exact = rms and rescale_eps
    notes = [
        f"old norm weights scaled by sqrt({config.d_model}/{d_model}); new residual coordinates start at 0"
    ]
    if rescale_eps:
        notes.append(
            f"norm_eps {config.norm_eps:g} -> {new_config.norm_eps:g} (x d/d_new, keeps RMSNorm exact)"
        )
    if not rms:
        notes.append(
            "LayerNorm: the mean and variance now include the zero coordinates (approximate; MSG masks them)"
        )
    return GrowthPlan(
        "zero_pad",
        "exact" if exact else "approximate",
        new_config,
        adapter.block_keys(model),
        param_map,
        options={"d_model": d_model, "rescale_eps": rescale_eps},
        notes=notes,
    )


def random_pad_plan(model: nn.Module, adapter: ModelAdapter, *, d_model: int, seed: int = 0) -> GrowthPlan:
    config = adapter.config(model)
    new_config = padded_config(config, d_model, "random_pad")
    change = AxisChange.extend(config.d_model, d_model, {})
    param_map = axis_param_map(model, adapter, {"model": change})
    return GrowthPlan(
        "random_pad",
        "none",
        new_config,
        adapter.block_keys(model),
        param_map,
        options={"d_model": d_model},
        notes=["new coordinates freshly initialised everywhere"],
    )


def clone(
    model: nn.Module,
    factor: int = 2,
    *,
    heads: bool = True,
    ffn: bool = True,
    noise: str = "none",
    noise_std: float = 1e-3,
    **run,
) -> GrowthResult:
    """Width x ``factor`` by cloning (exact; staged training, Shen et al. 2022; HyperCloning, Samragh et
    al. 2024); ``heads``/``ffn``: clone heads and FFN units too.
    ``run``: ``seed``, ``probe``, ``measure``, ``adapter``."""
    return run_operator(
        model, clone_plan, factor=factor, heads=heads, ffn=ffn, noise=noise, noise_std=noise_std, **run
    )


def net2net(
    model: nn.Module, d_model: int, *, noise: str = "none", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """Width to any larger ``d_model`` by Net2Net random replication (Chen et al. 2016; approximate
    through norms unless every coordinate gets the same number of copies)."""
    return run_operator(model, net2net_plan, d_model=d_model, noise=noise, noise_std=noise_std, **run)


def zero_pad(model: nn.Module, d_model: int, *, rescale_eps: bool = True, **run) -> GrowthResult:
    """Width to ``d_model`` with zero new coordinates (exact for RMSNorm with ``rescale_eps``,
    approximate for LayerNorm, whose statistics MSG, Yao et al. 2023, masks instead)."""
    return run_operator(model, zero_pad_plan, d_model=d_model, rescale_eps=rescale_eps, **run)


def random_pad(model: nn.Module, d_model: int, **run) -> GrowthResult:
    """Width to ``d_model`` with freshly initialised new coordinates (the random baseline of Net2Net,
    Chen et al. 2016; no preservation)."""
    return run_operator(model, random_pad_plan, d_model=d_model, **run)

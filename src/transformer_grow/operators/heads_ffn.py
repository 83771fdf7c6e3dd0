"""Attention-head growth and FFN-width growth.

- :func:`add_heads`: new query (and key/value) heads with ``head_dim`` fixed, freshly initialised;
  their input columns of the output projection ``o_proj`` are zero, so they add nothing: exact (the
  grown model computes the same function). Grouped-query attention stays consistent: each old group of q heads keeps its
  kv head and may gain new q heads (a larger group), and new kv heads come with a full group of new
  q heads. The attention inner width ``n_head * head_dim`` then may differ from d_model.
- :func:`grow_ffn`: ``method="zero"`` adds fresh units whose ``down_proj`` columns are zero (exact);
  ``method="split"`` is Net2Net splitting (Chen et al. 2016): a new unit copies an old one (its
  ``up_proj`` row, and ``gate_proj`` row for SwiGLU) and both divide their ``down_proj`` column by
  the number of copies: exact for any elementwise activation, SwiGLU included. MoE experts grow alike.
"""

from __future__ import annotations

from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.adapter import ModelAdapter
from transformer_grow.operators.axes import AxisChange, axis_param_map, heads_rows
from transformer_grow.operators.build import GrowthPlan, kind_with_noise, run_operator
from transformer_grow.operators.noise import NoiseSpec
from transformer_grow.operators.report import GrowthResult
from transformer_grow.operators.width import replication_rows

HEADS_METHODS = ("zero",)
FFN_METHODS = ("zero", "split")

# New units are written freshly and read through zeros: they start with no effect.
_BLOCKED_OUTPUT = {"write": "fresh", "read": "zeros"}


def heads_config(config: ModelConfig, n_head: int, n_kv_head: int | None = None) -> ModelConfig:
    """Config with ``n_head`` query heads and ``n_kv_head`` kv heads (default: keep the group size)."""
    group = config.n_head // config.n_kv_head
    if n_kv_head is None:
        require(
            n_head % group == 0,
            f"n_head={n_head} is not a multiple of the kv group size {group}; give n_kv_head explicitly",
        )
        n_kv_head = n_head // group
    require(
        isinstance(n_head, int)
        and n_head >= config.n_head
        and n_kv_head >= config.n_kv_head
        and (n_head, n_kv_head) != (config.n_head, config.n_kv_head),
        f"heads: (n_head, n_kv_head)=({n_head}, {n_kv_head}) must grow from ({config.n_head}, "
        f"{config.n_kv_head}) without shrinking either",
    )
    require(n_head % n_kv_head == 0, f"n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
    require(
        n_head // n_kv_head >= group,
        f"heads: the kv group size would shrink from {group} to {n_head // n_kv_head} "
        f"(n_head={n_head}, n_kv_head={n_kv_head}); old groups must keep their q heads",
    )
    return config.replace(n_head=n_head, n_kv_head=n_kv_head, head_dim=config.head_dim)  # heads keep their size


def heads_plan(
    model: nn.Module, adapter: ModelAdapter, *, n_head: int, n_kv_head: int | None = None, seed: int = 0
) -> GrowthPlan:
    config = adapter.config(model)
    new_config = heads_config(config, n_head, n_kv_head)
    group, new_group = config.n_head // config.n_kv_head, new_config.n_head // new_config.n_kv_head
    q_heads, kv_heads = [], []
    for kv in range(new_config.n_kv_head):  # group kv: its old q heads first, then new ones
        old_q = list(range(kv * group, (kv + 1) * group)) if kv < config.n_kv_head else []
        kv_heads.append(kv if kv < config.n_kv_head else -1)
        q_heads += old_q + [-1] * (new_group - len(old_q))
    changes = {
        "q": AxisChange(heads_rows(q_heads, config.head_dim), fill=_BLOCKED_OUTPUT),
        "kv": AxisChange(heads_rows(kv_heads, config.head_dim), fill=_BLOCKED_OUTPUT),
    }
    return GrowthPlan(
        "heads=zero",
        "exact",
        new_config,
        adapter.block_keys(model),
        axis_param_map(model, adapter, changes),
        options={"n_head": new_config.n_head, "n_kv_head": new_config.n_kv_head},
        notes=["new heads: fresh q/k/v, zero o_proj input columns"],
    )


def ffn_config(config: ModelConfig, d_ff: int) -> ModelConfig:
    require(
        isinstance(d_ff, int) and d_ff > config.d_ff,
        f"ffn: d_ff={d_ff!r} must be an integer larger than the current {config.d_ff}",
    )
    return config.replace(d_ff=d_ff)


def ffn_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    d_ff: int,
    method: str = "zero",
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
) -> GrowthPlan:
    choice("ffn", method, FFN_METHODS)
    config = adapter.config(model)
    new_config = ffn_config(config, d_ff)
    spec = NoiseSpec(noise, noise_std, seed)
    if method == "zero":
        spec.check_supported("ffn='zero' (new units already differ)", ("none",))
        change = AxisChange.extend(config.d_ff, d_ff, _BLOCKED_OUTPUT)
    else:
        change = AxisChange.replicate(replication_rows(config.d_ff, d_ff, seed))
    param_map = axis_param_map(model, adapter, {"ffn": change}, spec.mode)
    notes = (
        ["new units: fresh up/gate rows, zero down_proj columns"]
        if method == "zero"
        else ["split units: copied up/gate rows, down_proj columns divided by the number of copies"]
    )
    return GrowthPlan(
        f"ffn={method}",
        kind_with_noise("exact", spec),
        new_config,
        adapter.block_keys(model),
        param_map,
        options={"d_ff": d_ff, "noise": noise, "noise_std": noise_std},
        notes=notes,
        noise=spec,
    )


def add_heads(model: nn.Module, n_head: int, n_kv_head: int | None = None, **run) -> GrowthResult:
    """Grow to ``n_head`` query heads (and ``n_kv_head`` kv heads) with zero o_proj columns (exact;
    head growth as in MSG, Yao et al. 2023, and staged training, Shen et al. 2022)."""
    return run_operator(model, heads_plan, n_head=n_head, n_kv_head=n_kv_head, **run)


def grow_ffn(
    model: nn.Module, d_ff: int, method: str = "zero", *, noise: str = "none", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """Grow the FFN to ``d_ff`` units: ``"zero"`` (fresh units, zero output) or ``"split"`` (Net2Net
    splitting, Chen et al. 2016); both exact."""
    return run_operator(model, ffn_plan, d_ff=d_ff, method=method, noise=noise, noise_std=noise_std, **run)

"""Sequence-length growth.

- Learned positions (GPT-2): the position table gets new rows; the old rows stay where they are, so
  the model is unchanged on inputs no longer than the old length (exact there). New rows: ``"copy"``
  (the last old row), ``"tile"`` (row ``i`` copies row ``i mod old_len``) or ``"interpolate"`` (the
  table stretched linearly over the new length, as in position interpolation, Chen et al. 2023; old
  positions move: approximate).
- RoPE needs no new parameters: exact. Optionally ``rope_scale`` (position interpolation: positions
  divided by the factor, Chen et al. 2023) and ``rope_base`` (base scaling, e.g. NTK-aware / ABF,
  Xiong et al. 2023) change every attention score: approximate, measured.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.adapter import ModelAdapter
from transformer_grow.operators.build import GrowthPlan, run_operator
from transformer_grow.operators.map import DimMap, ParamMap, ParamSource
from transformer_grow.operators.report import GrowthResult

SEQ_METHODS = ("copy", "tile", "interpolate")


def seq_config(
    config: ModelConfig, seq_len: int, rope_scale: float | None = None, rope_base: float | None = None
) -> ModelConfig:
    require(
        isinstance(seq_len, int) and seq_len >= config.seq_len,
        f"seq_len={seq_len!r} must be an integer >= the current {config.seq_len}",
    )
    changes: dict = {"seq_len": seq_len}
    if config.pos == "learned":
        require(
            rope_scale in (None, config.rope_scale) and rope_base in (None, config.rope_base),
            "rope_scale and rope_base apply to pos='rope' only; this model has learned positions",
        )
    else:
        if rope_scale is not None:
            changes["rope_scale"] = rope_scale
        if rope_base is not None:
            changes["rope_base"] = rope_base
    new = config.replace(**changes)
    require(new != config, f"sequence: nothing to grow (seq_len={seq_len}, rope unchanged)")
    return new


def position_rows(old_len: int, new_len: int, method: str) -> DimMap:
    """The map of the position table's rows."""
    choice("seq", method, SEQ_METHODS)
    old = torch.arange(old_len)
    if method == "copy":
        return DimMap.gather(torch.cat([old, torch.full((new_len - old_len,), old_len - 1)]))
    if method == "tile":
        return DimMap.gather(torch.arange(new_len) % old_len)
    # Linear interpolation: new position i sits at old position i * (old_len - 1) / (new_len - 1).
    where = torch.arange(new_len, dtype=torch.float64) * (old_len - 1) / max(new_len - 1, 1)
    lo = where.floor().long().clamp(max=old_len - 1)
    hi = (lo + 1).clamp(max=old_len - 1)
    frac = where - lo
    return DimMap(torch.stack([lo, hi], dim=1), torch.stack([1 - frac, frac], dim=1))


def seq_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    seq_len: int,
    method: str = "copy",
    rope_scale: float | None = None,
    rope_base: float | None = None,
    seed: int = 0,
) -> GrowthPlan:
    choice("seq", method, SEQ_METHODS)
    config = adapter.config(model)
    new_config = seq_config(config, seq_len, rope_scale, rope_base)
    rows = position_rows(config.seq_len, seq_len, method)
    entries = {}
    for name, param in model.named_parameters():
        axes = adapter.param_axes(name, config)
        dims = tuple(rows if axis == "pos" else None for axis, _ in axes)
        shape = tuple(rows.size if axis == "pos" else s for (axis, _), s in zip(axes, param.shape))
        entries[name] = ParamSource(shape, name, dims)
    notes, kind = [], "exact"
    if config.pos == "learned":
        notes.append(
            f"learned positions {config.seq_len} -> {seq_len} by {method!r}; measured on inputs of "
            "the old length"
        )
        if method == "interpolate":
            kind = "approximate"
            notes.append("interpolation moves the old positions: approximate")
    else:
        if (new_config.rope_scale, new_config.rope_base) != (config.rope_scale, config.rope_base):
            kind = "approximate"
            notes.append(
                f"RoPE rescaled (scale {config.rope_scale:g} -> {new_config.rope_scale:g}, base "
                f"{config.rope_base:g} -> {new_config.rope_base:g}): every attention score changes"
            )
        else:
            notes.append("RoPE: no parameters change")
    options = {"seq_len": seq_len, "seq": method if config.pos == "learned" else "rope"}
    if config.pos == "rope":
        options.update(rope_scale=new_config.rope_scale, rope_base=new_config.rope_base)
    return GrowthPlan(
        f"seq={options['seq']}",
        kind,
        new_config,
        adapter.block_keys(model),
        ParamMap(entries),
        options=options,
        notes=notes,
    )


def grow_seq(
    model: nn.Module,
    seq_len: int,
    method: str = "copy",
    *,
    rope_scale: float | None = None,
    rope_base: float | None = None,
    **run,
) -> GrowthResult:
    """Grow the context to ``seq_len`` (learned positions: ``method`` copy/tile/interpolate; RoPE:
    optional position interpolation ``rope_scale``, Chen et al. 2023, or ``rope_base`` scaling)."""
    return run_operator(
        model, seq_plan, seq_len=seq_len, method=method, rope_scale=rope_scale, rope_base=rope_base, **run
    )

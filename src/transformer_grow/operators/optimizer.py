"""Growing AdamW state with the parameter map.

``preserve="function"`` (default): moments follow the values: a copied value copies its moments; a
value scaled by ``s`` has ``exp_avg`` scaled by ``s`` and ``exp_avg_sq`` by ``s**2`` (staged training,
Shen et al. 2022); zero-initialised and fresh values start with zero moments; the step count is kept.
A weighted sum of several source rows (interpolated positions) sums ``w * m`` and ``w**2 * v``.

``preserve="dynamics"``: moments follow the *gradient* scale ``s_g = 1 / (s_v * r)`` instead (value
scale ``s_v``, replication count ``r``; :mod:`~transformer_grow.operators.dynamics`), so that with the LR
multipliers of :func:`~transformer_grow.operators.dynamics.lr_multipliers` AdamW on the grown model
retraces the small model's steps. :func:`handoff` gives both for a growth result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transformer_grow.errors import require
from transformer_grow.operators.dynamics import check_preserve, dynamics_scales, lr_multipliers
from transformer_grow.operators.map import ParamMap
from transformer_grow.operators.report import GrowthResult
from transformer_grow.optim_state import StateByName


def grow_optimizer_state(
    state_by_name: StateByName,
    param_map: ParamMap,
    preserve: str = "function",
    *,
    model: nn.Module | None = None,
) -> StateByName:
    """``{param: {"exp_avg", "exp_avg_sq", "step"}}`` of the grown model from the old model's state.

    Every parameter of the grown model gets an entry when the old state is not empty; values
    without a source (or whose source had no state) get zero moments and the old step count.
    ``preserve="dynamics"`` needs the grown ``model`` (its axes say which dimensions replicate).
    """
    check_preserve(preserve)
    require(preserve == "function" or model is not None,
            "grow_optimizer_state(preserve='dynamics') needs model=<the grown model>")
    if not state_by_name:
        return {}
    scales = dynamics_scales(param_map, model) if preserve == "dynamics" else {}
    reference = next(iter(state_by_name.values()))
    step = max((entry["step"] for entry in state_by_name.values()), key=float)
    grown: StateByName = {}
    for name, entry in param_map.items():
        source = state_by_name.get(entry.source) if entry.source is not None else None
        if source is None:
            zeros = torch.zeros(
                entry.shape, dtype=reference["exp_avg"].dtype, device=reference["exp_avg"].device
            )
            grown[name] = {
                "exp_avg": zeros,
                "exp_avg_sq": zeros.clone(),
                "step": torch.as_tensor(step).clone(),
            }
            continue
        exp_avg = entry.apply(source["exp_avg"], power=1)
        exp_avg_sq = entry.apply(source["exp_avg_sq"], power=2)
        if name in scales:
            for moment, power in ((exp_avg, 1), (exp_avg_sq, 2)):
                factor = scales[name].moment_factor(power)
                if factor is not None:
                    moment.mul_(factor.to(moment.device, moment.dtype))
        grown[name] = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step": torch.as_tensor(source["step"]).clone()}
    return grown


@dataclass
class Handoff:
    """What training continues with after growth: grown AdamW state and LR multipliers (empty for
    ``preserve="function"``), to pass to ``Trainer.replace_model``."""

    preserve: str
    optimizer_state: StateByName
    lr_multipliers: dict[str, torch.Tensor] = field(default_factory=dict)


def handoff(result: GrowthResult, state_by_name: StateByName, preserve: str | None = None) -> Handoff:
    """Grow ``state_by_name`` for ``result``; ``preserve`` defaults to the one given to
    :func:`~transformer_grow.operators.grow` (recorded in its report), else ``"function"``."""
    preserve = preserve or result.report.options.get("preserve", "function")
    check_preserve(preserve)
    state = grow_optimizer_state(state_by_name, result.param_map, preserve, model=result.model)
    multipliers = lr_multipliers(result) if preserve == "dynamics" else {}
    return Handoff(preserve, state, multipliers)

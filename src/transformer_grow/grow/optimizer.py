"""Growing AdamW state with the parameter map (GROWTH-NOTES §3).

Moments follow the values: a copied value copies its moments; a value scaled by ``s`` has
``exp_avg`` scaled by ``s`` and ``exp_avg_sq`` by ``s**2`` (staged training, Shen et al. 2022);
zero-initialised and fresh values start with zero moments; the step count is kept. A weighted sum of
several source rows (interpolated positions) sums ``w * m`` and ``w**2 * v``.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_grow.errors import choice
from transformer_grow.grow.map import ParamMap
from transformer_grow.optim_state import StateByName, decays, load_optimizer_state_by_name, optimizer_state_by_name

POLICIES = ("carry", "fresh")


def grow_optimizer_state(state_by_name: StateByName, param_map: ParamMap) -> StateByName:
    """``{param: {"exp_avg", "exp_avg_sq", "step"}}`` of the grown model from the old model's state.

    Every parameter of the grown model gets an entry when the old state is not empty; values
    without a source (or whose source had no state) get zero moments and the old step count.
    """
    if not state_by_name:
        return {}
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
        grown[name] = {
            "exp_avg": entry.apply(source["exp_avg"], power=1),
            "exp_avg_sq": entry.apply(source["exp_avg_sq"], power=2),
            "step": torch.as_tensor(source["step"]).clone(),
        }
    return grown


def grow_optimizer(
    optimizer: torch.optim.Optimizer,
    old_model: nn.Module,
    new_model: nn.Module,
    param_map: ParamMap,
    policy: str = "carry",
) -> torch.optim.AdamW:
    """An AdamW over ``new_model`` with ``optimizer``'s hyperparameters and param groups.

    Each new parameter joins the group of the parameter its values came from; a parameter without a
    source joins the first group whose decay matches the trainer's rule (``decays``: 2-D and larger
    tensors are decayed). ``policy="carry"`` grows the moments through ``param_map``;
    ``"fresh"`` starts with empty state.
    """
    choice("policy", policy, POLICIES)
    old_name = {id(p): n for n, p in old_model.named_parameters()}
    group_of = {
        old_name[id(p)]: i
        for i, g in enumerate(optimizer.param_groups)
        for p in g["params"]
        if id(p) in old_name
    }
    members: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    for name, param in new_model.named_parameters():
        if not param.requires_grad:
            continue
        source = param_map[name].source
        index = group_of.get(source) if source is not None else None
        if index is None:
            wanted = decays(param)
            matching = [
                i for i, g in enumerate(optimizer.param_groups) if (g.get("weight_decay", 0) > 0) == wanted
            ]
            index = matching[0] if matching else 0
        members[index].append(param)
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": params}
        for g, params in zip(optimizer.param_groups, members)
        if params
    ]
    new_optimizer = torch.optim.AdamW(groups)  # every group carries all of its hyperparameters
    if policy == "carry":
        state = grow_optimizer_state(optimizer_state_by_name(old_model, optimizer), param_map)
        load_optimizer_state_by_name(new_model, new_optimizer, state)
    return new_optimizer

"""AdamW state keyed by parameter *name*.

Keying Adam moments by parameter name (``blocks.3.attn.q_proj.weight``) rather than by position
lets growth operators map state from an old model to a grown one, lets distributed wrappers hand
state across a re-wrap, and lets checkpoints be read without knowing the optimizer's parameter order.
"""

from __future__ import annotations

import torch
from torch import nn

# Per-parameter AdamW state we save and restore (no amsgrad).
STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")
StateByName = dict[str, dict[str, torch.Tensor]]


def decays(param: nn.Parameter) -> bool:
    """nanoGPT convention: weight decay on tensors with >= 2 dims (matmul weights, embeddings) only;
    norm weights and biases are not decayed."""
    return param.dim() >= 2


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer,
                            copy=torch.Tensor.clone) -> dict[str, dict[str, torch.Tensor]]:
    """``{param name: {"exp_avg", "exp_avg_sq", "step"}}`` for every parameter that has state.

    Tensors are ``copy(detached tensor)`` (default: a clone on the parameter's device; a distributed
    wrapper passes one that gathers shards), taken in parameter order. Parameters the optimizer has
    not stepped yet have no entry.
    """
    result: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"optimizer state of {name} lacks {missing}; only AdamW without amsgrad is supported")
        result[name] = {k: copy(torch.as_tensor(state[k]).detach()) for k in STATE_KEYS}
    return result


def load_optimizer_state_by_name(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Install per-parameter AdamW state by name into ``optimizer`` (built over ``model``).

    Every name must be a parameter of ``model`` with moments of the parameter's shape. Parameters
    without an entry keep no state (AdamW starts them with zero moments at the next step).
    """
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, entry in state.items():
        if name not in params:
            raise ValueError(f"optimizer state names {name!r}, which is not a parameter of the model")
        param = params[name]
        if id(param) not in group_of:
            raise ValueError(f"parameter {name!r} is not managed by this optimizer")
        missing = [k for k in STATE_KEYS if k not in entry]
        if missing:
            raise ValueError(f"optimizer state of {name!r} lacks {missing}")
        for key in ("exp_avg", "exp_avg_sq"):
            if tuple(entry[key].shape) != tuple(param.shape):
                raise ValueError(f"optimizer state {name}.{key} has shape {tuple(entry[key].shape)}, "
                                 f"but the parameter has shape {tuple(param.shape)}")
        group = group_of[id(param)]
        # AdamW keeps `step` as a float32 scalar on the CPU unless fused/capturable (then on device).
        on_device = group.get("fused") or group.get("capturable")
        step = torch.as_tensor(entry["step"]).detach().to(dtype=torch.float32).reshape(())
        optimizer.state[param] = {
            "step": (step.to(param.device) if on_device else step.cpu()).clone(),
            "exp_avg": entry["exp_avg"].detach().to(param.device, param.dtype).clone(),
            "exp_avg_sq": entry["exp_avg_sq"].detach().to(param.device, param.dtype).clone(),
        }

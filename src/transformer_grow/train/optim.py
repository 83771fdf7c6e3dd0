"""AdamW construction for the trainer (state by name lives in :mod:`transformer_grow.optim_state`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformer_grow.errors import require
from transformer_grow.optim_state import decays
from transformer_grow.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters in two groups (decayed / not decayed).

    The fused kernel is used on CUDA and on the CPU (on a 10M-parameter model on this project's 2-core
    CPU one AdamW step took 7.5 ms fused against 26.5 ms ``foreach``, one thread); elsewhere (MPS)
    the multi-tensor (``foreach``) implementation. The learning rate is set by the trainer before every step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if decays(p)], "weight_decay": config.weight_decay},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), **kwargs)


# ---------------------------------------------------------------------------------- LR multipliers
# After dynamics-preserving growth (transformer_grow.operators.dynamics) some grown parameters need their
# AdamW direction scaled per element by m (the value scale s_v), while decoupled weight decay keeps
# its rate (Loshchilov & Hutter 2019): p* = p (1 - lr wd) - lr m u. torch's AdamW computes
# p' = p (1 - lr wd) - lr u, so
#     p* = d + m (p' - d),   d = p (1 - lr wd)                                     (derivation)
# which needs a copy of p before the step, for the parameters with multipliers only. We apply this
# correction after the stock optimizer step rather than using one param group per multiplier:
# multipliers vary per element (Net2Net splitting scales only the split units' columns), one path
# serves uniform and non-uniform ones, every parameter stays in the fused kernel, and the trainer's
# per-group learning rate (set every step) needs no knowledge of the multipliers. Cost while active:
# one copy of the multiplied parameters and three elementwise passes over them per step.

RELAX_MODES = ("never", "immediate", "window:N")


@dataclass(frozen=True)
class Relax:
    """How growth's LR multipliers return to 1: ``never``; ``immediate`` (not applied at all: moments
    in the gradient scale, plain LR); ``window:N``: linearly over ``N`` steps (the first step after
    growth uses ``m``, step ``j`` uses ``m + (1 - m) j / N``, from step ``N`` on 1)."""

    mode: str = "never"
    steps: int = 0

    @staticmethod
    def parse(spec: str | Relax) -> Relax:
        if isinstance(spec, Relax):
            return spec
        if spec in ("never", "immediate"):
            return Relax(spec)
        head, _, count = str(spec).partition(":")
        require(head == "window" and count.isdigit() and int(count) > 0,
                f"dynamics_relax={spec!r} is not allowed; choose one of {', '.join(map(repr, RELAX_MODES))} "
                "with N an integer >= 1")
        return Relax("window", int(count))

    def strength(self, steps_since_growth: int) -> float:
        """Weight ``t`` of the multipliers at that step: the step uses ``1 + t (m - 1)``."""
        if self.mode == "never":
            return 1.0
        if self.mode == "immediate":
            return 0.0
        return max(0.0, 1.0 - steps_since_growth / self.steps)

    def __str__(self) -> str:
        return f"window:{self.steps}" if self.mode == "window" else self.mode


class LRMultipliers:
    """Per-element multipliers ``{param name: tensor broadcastable to it}`` on AdamW's update direction
    (not on its weight decay), relaxed to 1 per ``relax``; ``steps_taken`` counts steps since growth."""

    def __init__(self, multipliers: dict[str, torch.Tensor], relax: str | Relax = "never", steps_taken: int = 0):
        self.multipliers = {name: torch.as_tensor(m).detach().float().cpu() for name, m in multipliers.items()}
        self.relax = Relax.parse(relax)
        self.steps_taken = int(steps_taken)
        self._on_device: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def done(self) -> bool:
        """Whether the multipliers have relaxed to 1 for good."""
        return self.relax.mode != "never" and self.relax.strength(self.steps_taken) == 0.0

    def _multiplier(self, name: str, param: torch.Tensor) -> torch.Tensor:
        key = (name, param.device, param.dtype)
        if key not in self._on_device:
            self._on_device[key] = self.multipliers[name].to(param.device, param.dtype)
        return self._on_device[key]

    def step(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """``optimizer.step()`` with the multipliers applied (see the derivation above)."""
        strength = self.relax.strength(self.steps_taken)
        self.steps_taken += 1
        if strength == 0.0 or not self.multipliers:
            optimizer.step()
            return
        params = dict(model.named_parameters())
        if not set(self.multipliers) <= set(params) and isinstance(getattr(model, "module", None), nn.Module):
            params = dict(model.module.named_parameters())  # a DDP-style wrapper prefixes names with "module."
        unknown = sorted(set(self.multipliers) - set(params))
        if unknown:
            raise ValueError(f"LR multipliers name {unknown[:3]}, which are not parameters of the model")
        hyper = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
        before = {n: params[n].detach().clone() for n in self.multipliers if params[n].grad is not None}
        optimizer.step()
        with torch.no_grad():
            for name, decayed in before.items():
                param = params[name]
                lr, weight_decay = hyper[id(param)]
                multiplier = self._multiplier(name, param)
                if strength != 1.0:
                    multiplier = 1.0 + strength * (multiplier - 1.0)
                decayed.mul_(1.0 - lr * weight_decay)
                param.sub_(decayed).mul_(multiplier).add_(decayed)

    def copy(self) -> LRMultipliers:
        return LRMultipliers(self.multipliers, self.relax, self.steps_taken)


def adamw_step(optimizer: torch.optim.Optimizer, model: nn.Module, multipliers: LRMultipliers | None) -> None:
    """One optimizer step, through ``multipliers`` when growth left some."""
    if multipliers is None:
        optimizer.step()
    else:
        multipliers.step(optimizer, model)

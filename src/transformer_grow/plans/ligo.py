"""The plan-time side of a LiGO growth event: its options, its checks before any training, and its cost
from the configs alone (the phase itself, on a trainer, is :mod:`transformer_grow.run.ligo_phase`).

Cost (counted in the run's budget and in the plan's accounting)::

    steps * (tokens_per_step * flops_per_token(grown model) + materialisation_per_step) + materialisation_once

with the operator's formulas in :mod:`transformer_grow.operators.ligo`. By default (``ligo_steps=None``)
the phase takes 1% of the baseline's tokens (``ligo_tokens``), in whole steps from 1 to the paper's 100
(Wang et al. 2023, Sec. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from transformer_grow.errors import require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators.ligo import DEFAULT_LIGO_LR, DEFAULT_LIGO_STEPS, ligo_layout

LIGO_SHARE = 0.01  # default share of the baseline's tokens spent on the operator (module docstring)
LIGO_OPTIONS = ("ligo_steps", "ligo_lr", "ligo_tokens", "depth", "width", "layer_sources", "insert_positions",
                "block_init")


def ligo_steps_for(options: dict[str, Any], tokens_per_step: int) -> int:
    """The phase's steps: ``ligo_steps`` when given, else ``ligo_tokens`` in whole steps within
    [1, 100] (the paper's count), else 100."""
    steps = options.get("ligo_steps")
    if steps is not None:
        require(isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps <= 10**6,
                f"ligo_steps={steps!r} is not allowed; it must be an integer from 0 to 1,000,000")
        return steps
    tokens = options.get("ligo_tokens")
    if tokens is None:
        return DEFAULT_LIGO_STEPS
    return min(DEFAULT_LIGO_STEPS, max(1, round(tokens / tokens_per_step)))


def ligo_operator_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(LIGO_OPTIONS))
    require(not unknown, f"growth method 'ligo' does not take option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(LIGO_OPTIONS)}")
    return {k: v for k, v in options.items() if k not in ("ligo_steps", "ligo_lr", "ligo_tokens")}


def check_ligo_event(old: ModelConfig, new: ModelConfig, options: dict[str, Any]) -> None:
    """Refuse (:class:`ConfigError`) a LiGO event that cannot run, before any training (nothing built)."""
    lr = options.get("ligo_lr", DEFAULT_LIGO_LR)
    require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr <= 1,
            f"ligo_lr={lr!r} is not allowed; it must be a number in (0, 1]")
    ligo_steps_for(options, 1)
    with torch.device("meta"):
        small = GPT(old)
    ligo_layout(small, new, **ligo_operator_options(options))


@dataclass
class PhaseCost:
    """Steps, tokens and FLOPs of one LiGO phase."""

    steps: int
    tokens: int
    flops: int


def ligo_phase_cost(old: ModelConfig, new: ModelConfig, options: dict[str, Any], tokens_per_step: int) -> PhaseCost:
    """The phase's cost from the configs alone (module docstring; the plan-time estimate)."""
    with torch.device("meta"):
        small, grown = GPT(old), GPT(new)
    layout = ligo_layout(small, new, **ligo_operator_options(options))
    steps = ligo_steps_for(options, tokens_per_step)
    per_step = tokens_per_step * grown.flops_per_token() + layout.flops(training=True)
    return PhaseCost(steps, steps * tokens_per_step, steps * per_step + layout.flops(training=False))

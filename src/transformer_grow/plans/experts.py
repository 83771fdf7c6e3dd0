"""The expert plans and the settings of the adaptive expert count (DynMoE, Guo et al. 2025, sec. 3.3).

* ``upcycle``: the target's dense counterpart (``n_expert=0``) trains on ``growth_fraction`` (default
  ``max_fraction``) of the budget's tokens, then is upcycled to the target MoE (sparse upcycling,
  Komatsuzaki et al. 2022; exact);
* ``dynamic``: ``upcycle`` into a top-any MoE, whose expert count then adapts
  (:class:`~transformer_grow.run.experts.ExpertController`, with the :class:`ExpertAdaptation` settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transformer_grow.errors import choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.plans.plan import GrowthPlan, Stage

NEW_THRESHOLDS = ("init", "exact")
NEW_EXPERTS = ("copy", "fresh")


@dataclass
class ExpertAdaptation:
    """Settings of the adaptive expert count (the ``dynamic`` plan).

    Attributes:
        interval: training steps between two decisions (0: the expert count never changes).
        window: steps of routing each decision reads: the last ``window`` before it (at most ``interval``).
        min_unrouted: share of a layer's tokens that fired no expert above which it gets a new expert.
        overload: the busiest expert is overloaded above ``overload`` times the mean share of assignments.
        new_threshold: ``init`` (``moe_threshold_init``: fires at once, DynMoE) or ``exact`` (above every
            score: the addition keeps the function exactly).
        new_expert: FFN of a new expert: ``copy`` of the busiest expert (with noise) or ``fresh``.
        noise_std: std of the symmetry-breaking noise on copied FFN weights and routing vectors.
        min_experts: fewest experts a layer keeps.
        max_experts: most experts a layer gets.
    """

    interval: int = 100
    window: int = 50
    min_unrouted: float = 0.01
    overload: float = 2.0
    new_threshold: str = "init"
    new_expert: str = "copy"
    noise_std: float = 1e-3
    min_experts: int = 1
    max_experts: int = 16

    def validate(self) -> None:
        require(isinstance(self.interval, int) and self.interval >= 0,
                f"experts interval={self.interval!r} is not allowed; it must be an integer >= 0 (0: off)")
        require(isinstance(self.window, int) and 1 <= self.window <= max(1, self.interval),
                f"experts window={self.window!r} is not allowed; it must be an integer from 1 to interval="
                f"{self.interval}")
        require(0 <= self.min_unrouted <= 1, f"experts min_unrouted={self.min_unrouted!r} must lie in [0, 1]")
        require(self.overload > 1, f"experts overload={self.overload!r} must be > 1 (times the mean share)")
        choice("experts new_threshold", self.new_threshold, NEW_THRESHOLDS)
        choice("experts new_expert", self.new_expert, NEW_EXPERTS)
        require(self.noise_std >= 0, f"experts noise_std={self.noise_std!r} must be >= 0")
        require(isinstance(self.min_experts, int) and isinstance(self.max_experts, int)
                and 1 <= self.min_experts <= self.max_experts <= 4096,
                f"experts min_experts={self.min_experts!r}, max_experts={self.max_experts!r}: need "
                "1 <= min_experts <= max_experts <= 4096")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ plans
@dataclass
class MoEGrowthPlan(GrowthPlan):
    """A growth plan whose MoE stage may adapt its expert count (``expert_adaptation``; ``None``: fixed)."""

    expert_adaptation: ExpertAdaptation | None = None

    def to_dict(self) -> dict:
        adaptation = None if self.expert_adaptation is None else self.expert_adaptation.to_dict()
        return {**super().to_dict(), "expert_adaptation": adaptation}


def _upcycle_stages(name: str, target: ModelConfig, budget_tokens: int, options) -> list[Stage]:
    require(target.n_expert > 0, f"plan {name!r} upcycles a dense model into the target MoE: give the target "
                                 "experts (n_expert > 0, e.g. --n-expert 4)")
    dense = target.replace(n_expert=0, moe_layer_experts=None)
    fraction = options.growth_fraction or options.max_fraction
    return [Stage(dense, tokens=max(1, round(fraction * budget_tokens)), name="dense"),
            Stage(target, growth=options.event(dense, target), name=f"moe E={target.n_expert}")]


def upcycle_plan(target: ModelConfig, budget_tokens: int, options) -> GrowthPlan:
    """The ``upcycle`` plan (module docstring); ``options``: the builders' ``PlanOptions``."""
    stages = _upcycle_stages("upcycle", target, budget_tokens, options)
    return MoEGrowthPlan("upcycle", stages, budget_tokens, options.budget_mode,
                         notes=[f"dense for {stages[0].tokens:,} tokens, then upcycled to {target.n_expert} experts "
                                f"({target.moe_router}, k={target.moe_top_k}; exact)"])


def dynamic_plan(target: ModelConfig, budget_tokens: int, options) -> GrowthPlan:
    """The ``dynamic`` plan (module docstring): ``upcycle`` to a top-any MoE, then adaptive experts."""
    require(target.moe_router == "topany", f"plan 'dynamic' adapts the expert count of a top-any MoE; the "
                                           f"target has moe_router={target.moe_router!r} (use --moe-router topany)")
    stages = _upcycle_stages("dynamic", target, budget_tokens, options)
    a = options.expert_adaptation
    return MoEGrowthPlan("dynamic", stages, budget_tokens, options.budget_mode, expert_adaptation=a,
                         notes=[f"dense for {stages[0].tokens:,} tokens, upcycled to {target.n_expert} top-any "
                                f"experts; every {a.interval} steps experts with no token in the last {a.window} "
                                f"steps are removed and one is added where over {a.min_unrouted:g} of the tokens "
                                f"fired no expert or an expert took over {a.overload:g}x the mean share "
                                f"(threshold {a.new_threshold})"])

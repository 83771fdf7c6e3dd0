"""Growth plans: typed descriptions of *what* to train, in which order, and how to grow.

A :class:`GrowthPlan` is a list of :class:`Stage` s. Each stage names a model config and how long
it trains: a token count, a :class:`PlateauTrigger` (grow when the validation curve flattens), or,
for the last stage, "the rest of the budget". Every stage after the first carries a
:class:`GrowthEvent`: the operator(s) that turn the previous stage's model into this one, what
happens to the AdamW state (carried through the parameter map, or fresh), and the learning-rate
policy (a re-warmup window; the global schedule continues or restarts).

The **budget** is shared by every plan of a comparison. ``budget_tokens`` is what the baseline (the
last stage's model trained from scratch) trains on; ``budget_mode`` says what is held equal:

* ``"flops"`` (default): every plan spends the baseline's FLOPs, ``budget_tokens *
  flops_per_token(target)``. A plan whose early stages are cheaper trains on more tokens. This is
  the fair compute comparison.
* ``"tokens"``: every plan trains on ``budget_tokens`` tokens (a growth run then spends fewer FLOPs).

:meth:`GrowthPlan.validate` refuses, with a :class:`~transformer_grow.errors.ConfigError`, plans that
shrink a model, leave nothing for the last stage, exceed the budget or end with a trigger.
Built-in plans are in :mod:`transformer_grow.plans.builders`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.model.config import check_growth, describe_sizes
from transformer_grow.operators.dynamics import PRESERVE_MODES
from transformer_grow.train.optim import Relax

OPTIMIZER_POLICIES = ("carry", "fresh")
SCHEDULE_POLICIES = ("continue", "restart")
BUDGET_MODES = ("flops", "tokens")
describe_config = describe_sizes  # the one-line size summary of reports and logs


@dataclass
class GrowthEvent:
    """How the previous stage's model becomes this stage's model.

    Attributes:
        method: the ``method`` shorthand of :func:`transformer_grow.operators.grow`: a depth and/or
            width operator (``"stack"``, ``"interleave"``, ``"insert_zero"``, ``"clone"``,
            ``"stack+clone"``...); ``None``: ``grow``'s defaults.
        options: further keyword arguments for ``grow`` (per-dimension choices such as
            ``{"width": "net2net", "seq": "copy"}``, ``noise``, operator options).
        optimizer: ``"carry"`` maps the AdamW moments through the parameter map
            (``grow_optimizer_state``); ``"fresh"`` starts a new optimizer.
        rewarmup_steps: linear LR re-warmup window after growth (0: none).
        schedule: ``"continue"``: the global LR schedule goes on; ``"restart"``: a new decay from
            the peak rate over the rest of the budget.
        preserve: ``"function"`` (the grown model computes the small model's function at growth) or
            ``"dynamics"`` (also its AdamW trajectory: moments follow the gradient scale and per-element
            LR multipliers undo the 1/k storage of cloned or split weights; :mod:`transformer_grow.operators.dynamics`).
        dynamics_relax: how the multipliers of ``preserve="dynamics"`` return to 1: ``"never"``,
            ``"immediate"`` or ``"window:N"`` (linearly over N steps).
    """

    method: str | None = "stack"
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "carry"
    rewarmup_steps: int = 0
    schedule: str = "continue"
    preserve: str = "function"
    dynamics_relax: str = "never"

    def validate(self, where: str) -> None:
        require(self.method is None or (isinstance(self.method, str) and self.method != ""),
                f"{where}: growth method={self.method!r} must name a growth operator (or be None)")
        require(isinstance(self.options, dict), f"{where}: growth options must be a mapping, got {self.options!r}")
        choice(f"{where}: optimizer", self.optimizer, OPTIMIZER_POLICIES)
        choice(f"{where}: schedule", self.schedule, SCHEDULE_POLICIES)
        require(isinstance(self.rewarmup_steps, int) and self.rewarmup_steps >= 0,
                f"{where}: rewarmup_steps={self.rewarmup_steps!r} must be an integer >= 0")
        choice(f"{where}: preserve", self.preserve, PRESERVE_MODES)
        require(self.preserve == "dynamics" or self.dynamics_relax == "never",
                f"{where}: dynamics_relax={self.dynamics_relax!r} applies only with preserve='dynamics'")
        try:
            Relax.parse(self.dynamics_relax)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def describe(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in sorted(self.options.items()))
        dynamics = f"; preserve dynamics, relax {self.dynamics_relax}" if self.preserve == "dynamics" else ""
        return (f"grow by {self.method or 'default operators'}{opts}; optimizer state {self.optimizer}; "
                f"LR re-warmup {self.rewarmup_steps} steps, schedule {self.schedule}s{dynamics}")


@dataclass
class PlateauTrigger:
    """Grow when the small model's validation curve flattens (the ``adaptive`` plan).

    After every evaluation past ``min_fraction`` of the budget (a guard against growing before the
    small model has learnt anything), a saturating power law ``L(F) = E + A F^-alpha`` is fitted
    to the stage's validation curve against FLOPs. The stage ends when the fitted curve's expected
    loss improvement over the next ``horizon_fraction`` of the budget falls below
    ``min_gain_ratio`` times the remaining reducible loss ``L - E`` (the curve has flattened
    relative to what is still to gain), or at ``max_fraction`` of the budget at the latest (a
    guard against growing too late). Fractions are of the budget in the plan's ``budget_mode``.
    """

    min_fraction: float = 0.1
    max_fraction: float = 0.5
    horizon_fraction: float = 0.1
    min_gain_ratio: float = 0.1
    min_points: int = 5

    def validate(self, where: str) -> None:
        require(0 < self.min_fraction <= self.max_fraction < 1,
                f"{where}: trigger needs 0 < min_fraction <= max_fraction < 1, got min_fraction="
                f"{self.min_fraction!r}, max_fraction={self.max_fraction!r}")
        require(self.horizon_fraction > 0, f"{where}: horizon_fraction={self.horizon_fraction!r} must be > 0")
        require(self.min_gain_ratio > 0, f"{where}: min_gain_ratio={self.min_gain_ratio!r} must be > 0")
        require(isinstance(self.min_points, int) and self.min_points >= 5,
                f"{where}: min_points={self.min_points!r} must be an integer >= 5 (a power law has 3 parameters, "
                "and the fit wants residual degrees of freedom)")


@dataclass
class Stage:
    """One model trained for a while.

    Attributes:
        model: the architecture of this stage.
        tokens: tokens trained in this stage; ``None`` for the last stage (the rest of the budget)
            or a stage that ends by ``trigger``.
        trigger: ends the stage adaptively (never on the last stage).
        growth: how the previous stage's model grows into this one (``None`` for the first stage).
        name: a label for tables and logs.
    """

    model: ModelConfig
    tokens: int | None = None
    trigger: PlateauTrigger | None = None
    growth: GrowthEvent | None = None
    name: str = ""

    def label(self, index: int) -> str:
        return self.name or f"stage {index}"


@dataclass
class GrowthPlan:
    """A sequence of stages sharing one budget (see the module docstring for ``budget_mode``).

    Attributes:
        name: the plan's name in reports (``"scratch"``, ``"g_stack"``...).
        stages: the stages in order; the last one's model is the target.
        budget_tokens: the baseline's token budget; ``None`` only when every stage has explicit
            tokens (the budget is then their sum, in ``"tokens"`` mode).
        budget_mode: ``"flops"`` or ``"tokens"``: what every plan of a comparison holds equal.
        notes: lines explaining how the plan was built (e.g. the G_stack timing computation).
    """

    name: str
    stages: list[Stage]
    budget_tokens: int | None = None
    budget_mode: str = "flops"
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> ModelConfig:
        return self.stages[-1].model

    def validate(self, flops_per_token=None) -> None:
        """Raise :class:`ConfigError` naming the first problem; ``flops_per_token(config)`` checks
        a FLOPs budget (default: :func:`transformer_grow.plans.accounting.flops_per_token`)."""
        require(isinstance(self.name, str) and self.name.strip() != "", f"plan name={self.name!r} must be non-empty")
        require(isinstance(self.stages, list) and len(self.stages) >= 1, f"plan {self.name!r} has no stages")
        choice(f"plan {self.name!r}: budget_mode", self.budget_mode, BUDGET_MODES)
        first = self.stages[0]
        require(first.growth is None, f"plan {self.name!r}: the first stage has nothing to grow from; "
                                      "remove its growth event")
        for i, stage in enumerate(self.stages):
            where = f"plan {self.name!r}, {stage.label(i)}"
            require(isinstance(stage.model, ModelConfig), f"{where}: model must be a ModelConfig")
            last = i == len(self.stages) - 1
            if stage.trigger is not None:
                require(not last, f"{where}: a growth trigger on the last stage has no stage to grow into; "
                                  "add a larger stage after it or remove the trigger")
                require(stage.tokens is None, f"{where}: give tokens or a trigger, not both")
                stage.trigger.validate(where)
            elif not last:
                require(stage.tokens is not None, f"{where}: a stage before the last needs tokens or a trigger")
            if stage.tokens is not None:
                require(isinstance(stage.tokens, int) and stage.tokens > 0,
                        f"{where}: tokens={stage.tokens!r} must be a positive integer")
            if i > 0:
                require(stage.growth is not None, f"{where}: a later stage needs a growth event (how to grow into it)")
                stage.growth.validate(where)
                try:
                    check_growth(self.stages[i - 1].model, stage.model)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
        self._validate_budget(flops_per_token)

    def _validate_budget(self, flops_per_token) -> None:
        last = self.stages[-1]
        if self.budget_tokens is None:
            require(self.budget_mode == "tokens" and all(s.tokens is not None for s in self.stages),
                    f"plan {self.name!r}: without budget_tokens every stage needs explicit tokens "
                    "(and budget_mode='tokens')")
            return
        require(isinstance(self.budget_tokens, int) and self.budget_tokens > 0,
                f"plan {self.name!r}: budget_tokens={self.budget_tokens!r} must be a positive integer")
        if flops_per_token is None:
            from transformer_grow.plans.accounting import flops_per_token
        budget = self.budget_amount(flops_per_token)
        early = 0.0
        for stage in self.stages[:-1]:
            if stage.trigger is not None:
                share = stage.trigger.max_fraction * budget  # the latest the trigger can fire
            else:
                share = stage.tokens * (flops_per_token(stage.model) if self.budget_mode == "flops" else 1)
            early += share
        unit = "FLOPs" if self.budget_mode == "flops" else "tokens"
        if early >= budget:
            raise ConfigError(f"plan {self.name!r}: the budgets do not add up: the stages before the last "
                              f"take {early:.4g} {unit} (at most), the whole budget is {budget:.4g} {unit}; "
                              "nothing is left for the last stage")
        if last.tokens is not None:
            spent = early + last.tokens * (flops_per_token(last.model) if self.budget_mode == "flops" else 1)
            require(abs(spent - budget) <= 0.01 * budget,
                    f"plan {self.name!r}: the budgets do not add up: the stages take {spent:.4g} {unit}, the "
                    f"budget is {budget:.4g} {unit}; leave the last stage's tokens unset to take the rest")

    def budget_amount(self, flops_per_token) -> float:
        """The shared budget in the plan's unit: FLOPs (``"flops"``) or tokens (``"tokens"``)."""
        if self.budget_tokens is None:
            return float(sum(s.tokens for s in self.stages))
        if self.budget_mode == "flops":
            return float(self.budget_tokens * flops_per_token(self.target))
        return float(self.budget_tokens)

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a comparison records it; :meth:`from_dict` rebuilds the plan)."""
        return {
            "name": self.name, "budget_tokens": self.budget_tokens, "budget_mode": self.budget_mode,
            "notes": list(self.notes),
            "stages": [{
                "name": s.name, "model": s.model.to_dict(), "tokens": s.tokens,
                "trigger": None if s.trigger is None else vars(s.trigger).copy(),
                "growth": None if s.growth is None else {**vars(s.growth), "options": dict(s.growth.options)},
            } for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GrowthPlan:
        stages = [Stage(model=ModelConfig.from_dict(s["model"]), tokens=s.get("tokens"),
                        trigger=None if s.get("trigger") is None else PlateauTrigger(**s["trigger"]),
                        growth=None if s.get("growth") is None else GrowthEvent(**s["growth"]),
                        name=s.get("name", "")) for s in d["stages"]]
        return cls(name=d["name"], stages=stages, budget_tokens=d.get("budget_tokens"),
                   budget_mode=d.get("budget_mode", "flops"), notes=list(d.get("notes", [])))

"""What a comparison trains: methods (baseline, growth plans, small-only controls) x seeds x budgets.

* the baseline ``scratch``: the target from scratch;
* each growth plan;
* with ``controls``, one **small-only control** per distinct first-stage model of the plans
  (:func:`~transformer_grow.plans.builders.small_only_plan`): that smaller model trained alone,
  never grown, on the baseline's FLOPs. A plan that does not beat its control at equal FLOPs gains
  nothing from growing; its gain over the baseline comes from the target being too large for the
  budget.

Every method is trained once per seed (initialisation and data order) and, with ``budgets``, once
per fraction of the budget with its own full schedule. Run directories::

    runs/seed{S}/{method}                  the full budget
    runs/seed{S}/budget{F}/{method}        a fraction F of the budget

(``:`` in a method's name becomes ``-`` in its directory.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformer_grow.model import ModelConfig
from transformer_grow.plans.builders import PlanOptions, build_plan, small_only_model, small_only_plan
from transformer_grow.plans.plan import GrowthPlan

BASELINE = "scratch"
KINDS = ("baseline", "plan", "control")


@dataclass(frozen=True)
class Method:
    """One line of the report.

    Attributes:
        name: ``scratch``, a plan's name, or a control's (``small-only:L4``).
        kind: ``baseline``, ``plan`` or ``control``.
        control: for a plan, the name of its small-only control (``None``: controls off, or its
            first stage is the target's size).
        control_of: for a control, the plans whose first stage it trains.
    """

    name: str
    kind: str
    control: str | None = None
    control_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method at a seed and a fraction of the budget."""

    method: Method
    seed: int
    fraction: float
    plan: GrowthPlan

    @property
    def directory(self) -> Path:
        name = self.method.name.replace(":", "-")
        if self.fraction == 1.0:
            return Path("runs") / f"seed{self.seed}" / name
        return Path("runs") / f"seed{self.seed}" / f"budget{self.fraction:g}" / name

    @property
    def label(self) -> str:
        """The run in progress lines: ``g_stack seed1 @0.5``."""
        budget = "" if self.fraction == 1.0 else f" @{self.fraction:g}"
        return f"{self.method.name} seed{self.seed}{budget}"


def method_plans(target: ModelConfig, budget_tokens: int, plans: list[str], options: PlanOptions,
                 controls: bool) -> list[tuple[Method, GrowthPlan]]:
    """The baseline, every plan and (with ``controls``) every distinct small-only control, built
    for ``budget_tokens``; each control once, however many plans start from its model."""
    built = [(name, build_plan(name, target, budget_tokens, options)) for name in plans]
    control_plans: dict[str, GrowthPlan] = {}
    users: dict[str, list[str]] = {}
    control_of_plan: dict[str, str | None] = {}
    for name, plan in built:
        control_of_plan[name] = None
        if not controls or small_only_model(plan) == plan.target:  # nothing smaller to train alone
            continue
        control = small_only_plan(plan, budget_tokens)
        control_plans.setdefault(control.name, control)
        users.setdefault(control.name, []).append(name)
        control_of_plan[name] = control.name
    out = [(Method(BASELINE, "baseline"), build_plan(BASELINE, target, budget_tokens, options))]
    out += [(Method(name, "plan", control=control_of_plan[name]), plan) for name, plan in built]
    out += [(Method(name, "control", control_of=tuple(users[name])), plan) for name, plan in control_plans.items()]
    return out


def run_specs(target: ModelConfig, budget_tokens: int, plans: list[str], options: PlanOptions, controls: bool,
              seeds: list[int], fractions: list[float]) -> list[RunSpec]:
    """Every run, seed-major (the full budget of a seed before its fractions)."""
    per_fraction = {f: method_plans(target, max(1, round(f * budget_tokens)), plans, options, controls)
                    for f in fractions}
    return [RunSpec(method, seed, f, plan) for seed in seeds for f in fractions for method, plan in per_fraction[f]]

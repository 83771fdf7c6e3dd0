"""The built-in growth plans: ``scratch``, ``g_stack``, ``compound``, ``progressive``, ``adaptive``.

* ``scratch``: the target model trained from scratch on the whole budget (the baseline).
* ``g_stack``: a model ``g`` times shallower than the target, grown by stacking (Du et al. 2024)
  after ``d`` tokens from G_stack's timing rule (:mod:`~transformer_grow.growth.timing`, clamped
  to the budget with a warning) or after an explicit ``growth_fraction`` of the budget's tokens.
* ``compound``: CompoundGrow (Gu et al. 2021, "On the Transformer Growth for Progressive BERT
  Training"): depth, width (with heads and FFN) and sequence length start smaller and grow in
  several stages (by default: everything halved, then depth and sequence length restored, then
  width).
* ``progressive``: several smaller depth steps, each doubling the depth (e.g. 2 -> 4 -> 8 layers).
* ``adaptive``: like ``g_stack``, but the small model grows when its validation curve flattens
  against a fitted power law (:class:`~transformer_grow.growth.plan.PlateauTrigger`), with guards
  against growing too early or too late.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.grow.composite import CHOICES
from transformer_grow.growth.accounting import param_counts
from transformer_grow.growth.plan import (
    BUDGET_MODES,
    OPTIMIZER_POLICIES,
    SCHEDULE_POLICIES,
    GrowthEvent,
    GrowthPlan,
    PlateauTrigger,
    Stage,
)
from transformer_grow.growth.timing import DEFAULT_MAX_FRACTION, g_stack_timing
from transformer_grow.model import ModelConfig

PLAN_NAMES = ("scratch", "g_stack", "compound", "progressive", "adaptive")
MAX_BUDGET_TOKENS = 10**18
SHORT = {"depth": "L", "width": "d", "seq": "T"}  # stage labels of compound plans


@dataclass
class PlanOptions:
    """Knobs of the built-in plans (each plan reads the ones it needs).

    Attributes:
        growth_factor: ``g``: the small model of ``g_stack``/``adaptive`` has ``n_layer / g`` layers.
        growth_fraction: tokens before growing as a fraction of the budget's tokens (``g_stack``);
            ``None`` uses G_stack's formula.
        max_fraction: the formula's ``d`` is clamped to this fraction of the budget.
        method: depth operator (``stack``, ``repeat``, ``interleave``, ``insert_zero``...).
        width_method: width operator for ``compound`` (``clone``, ``net2net``, ``zero_pad``...).
        optimizer: ``carry`` or ``fresh`` AdamW state after growth.
        rewarmup_steps: LR re-warmup window after each growth.
        schedule: ``continue`` or ``restart`` the global LR schedule after growth.
        preserve: ``function`` (the grown model equals the small one at growth) or ``dynamics`` (it also
            follows the small model's AdamW trajectory: per-element LR multipliers; needs ``carry``).
        dynamics_relax: how ``dynamics`` multipliers return to 1: ``never``, ``immediate`` or ``window:N``.
        budget_mode: what every plan holds equal: ``flops`` or ``tokens``.
        stage_fractions: token fractions of the budget for each stage before the last (``compound``,
            ``progressive``); default: ``growth_fraction`` (or ``max_fraction``) split evenly.
        progressive_steps: number of depth doublings of ``progressive``.
        compound_stages: per stage before the last, the factors by which the target is smaller:
            ``{"depth": 2, "width": 2, "seq": 2}``.
        trigger: the ``adaptive`` plan's trigger.
        options: extra keyword arguments for the growth operator.
    """

    growth_factor: int = 2
    growth_fraction: float | None = None
    max_fraction: float = DEFAULT_MAX_FRACTION
    method: str = "stack"
    width_method: str = "clone"
    optimizer: str = "carry"
    rewarmup_steps: int = 0
    schedule: str = "continue"
    preserve: str = "function"
    dynamics_relax: str = "never"
    budget_mode: str = "flops"
    stage_fractions: list[float] | None = None
    progressive_steps: int = 2
    compound_stages: list[dict[str, int]] = field(
        default_factory=lambda: [{"depth": 2, "width": 2, "seq": 2}, {"width": 2}])
    trigger: PlateauTrigger = field(default_factory=PlateauTrigger)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse (:class:`ConfigError`) any option out of range, whichever plan it is for."""
        for name, least, most in (("growth_factor", 1, 4096), ("rewarmup_steps", 0, 10**12),
                                  ("progressive_steps", 1, 12)):
            value = getattr(self, name)
            require(_is_int(value) and least <= value <= most,
                    f"{name}={value!r} is not allowed; it must be an integer from {least} to {most:,}")
        require(self.growth_fraction is None or (_is_number(self.growth_fraction) and 0 < self.growth_fraction < 1),
                f"growth_fraction={self.growth_fraction!r} is not allowed; it must lie strictly between 0 and 1 "
                "(or be unset: G_stack's formula)")
        require(_is_number(self.max_fraction) and 0 < self.max_fraction <= 1,
                f"max_fraction={self.max_fraction!r} is not allowed; it must lie in (0, 1]")
        methods = CHOICES["depth"] + CHOICES["width"]
        for part in self.method.split("+") if isinstance(self.method, str) else [self.method]:
            require(part in methods, f"method={part!r} is not a depth or width method; choose from "
                                     f"{', '.join(methods)} (or a depth+width pair)")
        choice("width_method", self.width_method, CHOICES["width"])
        choice("optimizer", self.optimizer, OPTIMIZER_POLICIES)
        choice("schedule", self.schedule, SCHEDULE_POLICIES)
        GrowthEvent(optimizer=self.optimizer, preserve=self.preserve,
                    dynamics_relax=self.dynamics_relax).validate("plan options")
        require(self.preserve == "function" or self.optimizer == "carry",
                f"preserve={self.preserve!r} needs optimizer='carry' (the moments are part of the trajectory kept)")
        choice("budget_mode", self.budget_mode, BUDGET_MODES)
        if self.stage_fractions is not None:
            require(isinstance(self.stage_fractions, list) and 1 <= len(self.stage_fractions) <= 64
                    and all(_is_number(f) and 0 < f < 1 for f in self.stage_fractions),
                    f"stage_fractions={self.stage_fractions!r} is not allowed; give 1 to 64 numbers, each strictly "
                    "between 0 and 1")
        require(isinstance(self.compound_stages, list) and 1 <= len(self.compound_stages) <= 64
                and all(isinstance(stage, dict) and all(_is_int(v) and 1 <= v <= 4096 for v in stage.values())
                        for stage in self.compound_stages),
                f"compound_stages={self.compound_stages!r} is not allowed; give 1 to 64 mappings such as "
                "{depth: 2, width: 2, seq: 2} with integer factors from 1 to 4096")
        require(isinstance(self.options, dict), f"options={self.options!r} is not allowed; give a mapping")
        require(isinstance(self.trigger, PlateauTrigger), f"trigger={self.trigger!r} is not allowed; give a mapping")
        for name in ("min_fraction", "max_fraction", "horizon_fraction", "min_gain_ratio"):
            value = getattr(self.trigger, name)
            require(_is_number(value), f"trigger {name}={value!r} is not allowed; it must be a finite number")
        require(_is_int(self.trigger.min_points) and self.trigger.min_points <= 10_000,
                f"trigger min_points={self.trigger.min_points!r} is not allowed; it must be an integer up to 10,000")
        self.trigger.validate("trigger")

    def event(self, old: ModelConfig, new: ModelConfig) -> GrowthEvent:
        """The growth event ``old -> new``: depth by ``method`` and width by ``width_method``, each
        named only when that dimension grows."""
        options = dict(self.options)
        if new.d_model != old.d_model:
            options.setdefault("width", self.width_method)
        return GrowthEvent(method=self.method if new.n_layer != old.n_layer else None, options=options,
                           optimizer=self.optimizer, rewarmup_steps=self.rewarmup_steps, schedule=self.schedule,
                           preserve=self.preserve, dynamics_relax=self.dynamics_relax)


# The options each plan reads; an option given for a plan that ignores it is refused, not dropped.
_GROWTH_EVENT_OPTIONS = frozenset({"optimizer", "rewarmup_steps", "schedule", "options", "method", "preserve",
                                   "dynamics_relax"})
PLAN_OPTIONS_USED: dict[str, frozenset[str]] = {
    "scratch": frozenset({"budget_mode"}),
    "g_stack": _GROWTH_EVENT_OPTIONS | {"budget_mode", "growth_factor", "growth_fraction", "max_fraction"},
    "progressive": _GROWTH_EVENT_OPTIONS | {"budget_mode", "progressive_steps", "stage_fractions", "growth_fraction",
                                            "max_fraction"},
    "compound": _GROWTH_EVENT_OPTIONS | {"budget_mode", "compound_stages", "stage_fractions", "growth_fraction",
                                         "max_fraction", "width_method"},
    "adaptive": _GROWTH_EVENT_OPTIONS | {"budget_mode", "growth_factor", "trigger"},
}


def check_plan_options_apply(plans: Iterable[str], given: Iterable[str],
                             spell: Callable[[str], str] = lambda name: name) -> None:
    """Refuse a plan option (field name; ``spell`` gives its flag) that none of ``plans`` reads."""
    plans = list(plans)
    used = set().union(*(PLAN_OPTIONS_USED.get(plan, frozenset()) for plan in plans))
    listed = set().union(*PLAN_OPTIONS_USED.values())
    for name in given:
        if name not in used and (name in listed or plans == ["scratch"]):  # an unlisted option: growth plans
            readers = [plan for plan, names in PLAN_OPTIONS_USED.items() if name in names]
            raise ConfigError(f"{spell(name)} does not apply to plan {', '.join(plans)}; it is an option of "
                              f"{', '.join(readers) or 'no plan'}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def shrink(target: ModelConfig, depth: int = 1, width: int = 1, seq: int = 1) -> ModelConfig:
    """``target`` with ``n_layer / depth`` layers, ``d_model / width`` (heads and FFN units divided
    too, head size kept: what width cloning by ``width`` restores) and ``seq_len / seq`` tokens."""
    for name, factor, field_name in (("depth", depth, "n_layer"), ("width", width, "d_model"),
                                     ("seq", seq, "seq_len")):
        size = getattr(target, field_name)
        require(isinstance(factor, int) and factor >= 1 and size % factor == 0 and size // factor >= 1,
                f"{name} growth factor {factor!r} must be a positive integer dividing the target's "
                f"{field_name}={size}")
    changes: dict[str, Any] = {"n_layer": target.n_layer // depth, "seq_len": target.seq_len // seq}
    if width > 1:
        require(target.n_head % width == 0 and target.n_kv_head % width == 0 and target.d_ff % width == 0,
                f"width factor {width} must divide n_head={target.n_head}, n_kv_head={target.n_kv_head} and "
                f"d_ff={target.d_ff} of the target")
        changes.update(d_model=target.d_model // width, n_head=target.n_head // width,
                       n_kv_head=target.n_kv_head // width, d_ff=target.d_ff // width, head_dim=target.head_dim)
    return target.replace(**changes)


def _fractions(options: PlanOptions, n: int) -> list[float]:
    if options.stage_fractions is not None:
        require(len(options.stage_fractions) == n,
                f"stage_fractions={options.stage_fractions} must give {n} fractions (one per stage before the last)")
        fractions = list(options.stage_fractions)
    else:
        fractions = [(options.growth_fraction or options.max_fraction) / n] * n
    require(all(0 < f < 1 for f in fractions) and sum(fractions) < 1,
            f"stage fractions {fractions} must each lie in (0, 1) and sum to less than 1")
    return fractions


def scratch_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    return GrowthPlan("scratch", [Stage(target, name="target")], budget_tokens, options.budget_mode,
                      notes=["the target model trained from scratch on the whole budget (baseline)"])


def g_stack_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    g = options.growth_factor
    small = shrink(target, depth=g)
    timing = g_stack_timing(param_counts(target)[0], budget_tokens, options.max_fraction, options.growth_fraction)
    stages = [Stage(small, tokens=timing.growth_tokens, name=f"small L={small.n_layer}"),
              Stage(target, growth=options.event(small, target), name="target")]
    return GrowthPlan("g_stack", stages, budget_tokens, options.budget_mode,
                      notes=[f"growth factor g={g} ({small.n_layer} -> {target.n_layer} layers)", *timing.explain()])


def progressive_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    n = options.progressive_steps
    require(isinstance(n, int) and n >= 1, f"progressive_steps={n!r} must be an integer >= 1")
    fractions = _fractions(options, n)
    stages = []
    for i, fraction in enumerate(fractions):
        config = shrink(target, depth=2 ** (n - i))
        stages.append(Stage(config, tokens=max(1, round(fraction * budget_tokens)), name=f"L={config.n_layer}",
                            growth=None if i == 0 else options.event(stages[-1].model, config)))
    stages.append(Stage(target, growth=options.event(stages[-1].model, target), name="target"))
    return GrowthPlan("progressive", stages, budget_tokens, options.budget_mode,
                      notes=[" -> ".join(str(s.model.n_layer) for s in stages) + " layers, doubling by "
                             f"{options.method}; stage token fractions {fractions}"])


def compound_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    n = len(options.compound_stages)
    require(n >= 1, "compound_stages must list at least one smaller stage")
    fractions = _fractions(options, n)
    stages = []
    for i, (factors, fraction) in enumerate(zip(options.compound_stages, fractions)):
        unknown = set(factors) - {"depth", "width", "seq"}
        require(not unknown, f"compound stage factors {sorted(unknown)} unknown; use depth, width, seq")
        config = shrink(target, **factors)
        event = None if i == 0 else options.event(stages[-1].model, config)
        stages.append(Stage(config, tokens=max(1, round(fraction * budget_tokens)), growth=event,
                            name=",".join(f"{SHORT[k]}/{v}" for k, v in factors.items())))
    stages.append(Stage(target, growth=options.event(stages[-1].model, target), name="target"))
    return GrowthPlan("compound", stages, budget_tokens, options.budget_mode,
                      notes=[(f"CompoundGrow: stage factors {options.compound_stages}, token fractions {fractions}; "
                             f"depth by {options.method}, width by {options.width_method}")])


def adaptive_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    g = options.growth_factor
    small = shrink(target, depth=g)
    stages = [Stage(small, trigger=options.trigger, name=f"small L={small.n_layer}"),
              Stage(target, growth=options.event(small, target), name="target")]
    t = options.trigger
    return GrowthPlan("adaptive", stages, budget_tokens, options.budget_mode,
                      notes=[(f"growth factor g={g}; grow when the fitted power law predicts a gain below "
                             f"{t.min_gain_ratio:g} x the reducible loss over the next {t.horizon_fraction:g} of the "
                             f"budget, not before {t.min_fraction:g} nor after {t.max_fraction:g} of it")])


BUILDERS = {"scratch": scratch_plan, "g_stack": g_stack_plan, "compound": compound_plan,
            "progressive": progressive_plan, "adaptive": adaptive_plan}


def build_plan(name: str, target: ModelConfig, budget_tokens: int, options: PlanOptions | None = None) -> GrowthPlan:
    """The built-in plan ``name`` growing into ``target`` under a ``budget_tokens`` budget, validated."""
    choice("plan", name, PLAN_NAMES)
    require(isinstance(budget_tokens, int) and 0 < budget_tokens <= MAX_BUDGET_TOKENS,
            f"budget_tokens={budget_tokens!r} must be a positive integer of at most {MAX_BUDGET_TOKENS:.0e}")
    options = options or PlanOptions()
    options.validate()
    plan = BUILDERS[name](target, budget_tokens, options)
    plan.validate()
    return plan


# ------------------------------------------------------------------------- small-only control
SMALL_ONLY_PREFIX = "small-only"


def small_only_model(plan: GrowthPlan) -> ModelConfig:
    """The first-stage model of ``plan`` at the target's context length.

    A stage with a shorter context (``compound``'s ``seq`` factor) is a curriculum, not a smaller
    model: the control keeps the target's ``seq_len`` so that it trains on the same batches and is
    evaluated on the same fixed windows as every other run.
    """
    return plan.stages[0].model.replace(seq_len=plan.target.seq_len)


def small_only_name(plan: GrowthPlan) -> str:
    """``small-only:L4`` (depth differs from the target), ``small-only:L4-d128`` (width too)."""
    small, target = small_only_model(plan), plan.target
    width = "" if small.d_model == target.d_model else f"-d{small.d_model}"
    return f"{SMALL_ONLY_PREFIX}:L{small.n_layer}{width}"


def small_only_plan(plan: GrowthPlan, budget_tokens: int) -> GrowthPlan:
    """The control of ``plan``: its first-stage model trained alone, never grown, on the FLOPs of
    the baseline (``plan.target`` trained from scratch on ``budget_tokens`` tokens).

    If a plan's gain over the baseline comes only from the target being too large for the budget,
    this smaller model trained on the same compute matches or beats the plan. A plan's budget in
    FLOPs is ``budget_tokens * flops_per_token(plan.target)`` and the target of this one-stage plan
    is the small model, so its token budget is scaled by the ratio of FLOPs per token (the same
    FLOPs in either ``budget_mode``).
    """
    from transformer_grow.growth.accounting import flops_per_token

    require(isinstance(budget_tokens, int) and budget_tokens > 0,
            f"budget_tokens={budget_tokens!r} must be a positive integer")
    small = small_only_model(plan)
    tokens = max(1, round(budget_tokens * flops_per_token(plan.target) / flops_per_token(small)))
    control = GrowthPlan(small_only_name(plan), [Stage(small, name="small only")], tokens, plan.budget_mode,
                         notes=[f"control of {plan.name}: its first-stage model ({small.n_layer} layers, d_model "
                                f"{small.d_model}) trained alone on the baseline's FLOPs ({tokens:,} tokens), "
                                "never grown"])
    control.validate()
    return control

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

from dataclasses import dataclass, field
from typing import Any

from transformer_grow.errors import choice, require
from transformer_grow.growth.accounting import param_counts
from transformer_grow.growth.plan import GrowthEvent, GrowthPlan, PlateauTrigger, Stage
from transformer_grow.growth.timing import DEFAULT_MAX_FRACTION, g_stack_timing
from transformer_grow.model import ModelConfig

PLAN_NAMES = ("scratch", "g_stack", "compound", "progressive", "adaptive")
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
    budget_mode: str = "flops"
    stage_fractions: list[float] | None = None
    progressive_steps: int = 2
    compound_stages: list[dict[str, int]] = field(
        default_factory=lambda: [{"depth": 2, "width": 2, "seq": 2}, {"width": 2}])
    trigger: PlateauTrigger = field(default_factory=PlateauTrigger)
    options: dict[str, Any] = field(default_factory=dict)

    def event(self, old: ModelConfig, new: ModelConfig) -> GrowthEvent:
        """The growth event ``old -> new``: depth by ``method`` and width by ``width_method``, each
        named only when that dimension grows."""
        options = dict(self.options)
        if new.d_model != old.d_model:
            options.setdefault("width", self.width_method)
        return GrowthEvent(method=self.method if new.n_layer != old.n_layer else None, options=options,
                           optimizer=self.optimizer, rewarmup_steps=self.rewarmup_steps, schedule=self.schedule)


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
    require(isinstance(budget_tokens, int) and budget_tokens > 0,
            f"budget_tokens={budget_tokens!r} must be a positive integer")
    plan = BUILDERS[name](target, budget_tokens, options or PlanOptions())
    plan.validate()
    return plan

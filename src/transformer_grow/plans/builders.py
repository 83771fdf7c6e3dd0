"""The built-in growth plans: ``scratch``, ``g_stack``, ``compound``, ``progressive``, ``adaptive``,
``ligo``, ``share_unshare``, and the expert plans ``upcycle`` and ``dynamic``.

* ``scratch``: the target model trained from scratch on the whole budget (the baseline).
* ``g_stack``: a model ``g`` times shallower than the target, grown by stacking (Du et al. 2024)
  after ``d`` tokens from G_stack's timing rule (:mod:`~transformer_grow.plans.timing`, clamped
  to the budget with a warning) or after an explicit ``growth_fraction`` of the budget's tokens.
* ``compound``: CompoundGrow (Gu et al. 2021, "On the Transformer Growth for Progressive BERT
  Training"): depth, width (with heads and FFN) and sequence length start smaller and grow in
  several stages (by default: everything halved, then depth and sequence length restored, then
  width).
* ``g_stack_duplicate``: ``g_stack`` with every block duplicated in place (``L0 L0 L1 L1``) instead of
  the whole model stacked: the layout our ``g_stack`` used before 2026-12-08, kept to measure both.
* ``progressive``: several smaller depth steps, each doubling the depth (e.g. 2 -> 4 -> 8 layers).
* ``midas``: MIDAS (Saunshi et al. 2024, "On the Inductive Bias of Stacking Towards Improving
  Reasoning"): gradual middle stacking, one block of ``n_layer / midas_stages`` layers more per stage,
  each new block a copy of the middle one; stage ``i`` trains on a share of tokens proportional to ``i``
  (the paper's PROP-1 schedule).
* ``adaptive``: like ``g_stack``, but the small model grows when its validation curve flattens
  against a fitted power law (:class:`~transformer_grow.plans.plan.PlateauTrigger`), with guards
  against growing too early or too late.
* ``ligo``: ``g_stack``'s small model and timing, grown by a learned LiGO operator (Wang et al. 2023)
  that starts as stacking and trains briefly on the grown model's loss, its FLOPs in the budget
  (:mod:`~transformer_grow.run.ligo_phase`).
* ``share_unshare``: the target's layers first share ``n_layer / g`` stored blocks (``share_strategy``,
  e.g. Takase & Kiyono 2021's ``cycle``; :mod:`transformer_grow.model.sharing`), then the model is
  unshared exactly (:mod:`transformer_grow.operators.unshare`) and trains on as the full target. The shared
  model costs the target's FLOPs per token: it saves parameters and memory, not compute.

Also importable from here (their callers' and tests' import path): the ``adaptive`` plan's anneal prior
(:mod:`~transformer_grow.plans.anneal`) and the small-only control (:mod:`~transformer_grow.plans.small_only`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.model.sharing import SHARE_STRATEGIES
from transformer_grow.operators.composite import CHOICES
from transformer_grow.operators.ligo import DEFAULT_LIGO_LR
from transformer_grow.plans.accounting import param_counts
from transformer_grow.plans.anneal import AdaptivePlan, load_anneal_prior, with_anneal_prior  # noqa: F401
from transformer_grow.plans.experts import ExpertAdaptation, dynamic_plan, upcycle_plan
from transformer_grow.plans.ligo import LIGO_SHARE
from transformer_grow.plans.plan import (
    BUDGET_MODES,
    OPTIMIZER_POLICIES,
    SCHEDULE_POLICIES,
    GrowthEvent,
    GrowthPlan,
    PlateauTrigger,
    Stage,
)
from transformer_grow.plans.small_only import (  # noqa: F401
    SMALL_ONLY_PREFIX,
    small_only_model,
    small_only_name,
    small_only_plan,
)
from transformer_grow.plans.timing import DEFAULT_MAX_FRACTION, g_stack_timing

SHARE_PLAN_STRATEGIES = tuple(s for s in SHARE_STRATEGIES if s not in ("none", "custom"))

# upcycle / dynamic (dense -> MoE, then an adaptive expert count) are built in run/experts.py
PLAN_NAMES = ("scratch", "g_stack", "g_stack_duplicate", "compound", "progressive", "midas", "adaptive", "ligo",
              "share_unshare", "upcycle", "dynamic")
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
        method: depth operator (``stack``: G_stack's layout; ``duplicate``, ``interleave``, ``insert_zero``...).
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
        midas_stages: ``midas``: number of stages, the last the target; each adds ``n_layer / midas_stages``
            layers (a block), so it must divide the target's ``n_layer``.
        compound_stages: per stage before the last, the factors by which the target is smaller:
            ``{"depth": 2, "width": 2, "seq": 2}``.
        trigger: the ``adaptive`` plan's trigger.
        expert_adaptation: ``dynamic``: the adaptive expert count (interval, window, add/remove rules),
            e.g. ``{interval: 100, window: 50, new_threshold: exact}``.
        options: extra keyword arguments for the growth operator.
        share_strategy: ``share_unshare``: how the shared stage's layers share its ``n_layer / growth_factor``
            blocks: ``all``, ``sequence``, ``cycle``, ``cycle_rev``, ``middle_all``, ``middle_sequence`` or
            ``middle_cycle``; it trains ``growth_fraction`` of the budget (default ``max_fraction / 2``).
        ligo_steps: ``ligo``: training steps of the LiGO operator; ``None``: 1% of the budget's tokens in
            whole steps, from 1 to the paper's 100 (Wang et al. 2023).
        ligo_lr: ``ligo``: learning rate of the operator's own AdamW (no weight decay).
        ligo_width_factor: ``ligo``: also grow the width by this factor (the small model has ``d_model``,
            heads and FFN units divided by it, head size kept), with LiGO's learned width expansion
            (Wang et al. 2023, sec. 3.2) initialised as ``width_method``; 1: depth only.
        anneal_prior: ``adaptive``: a JSON file of a prior on the annealing bonus pooled over completed runs
            (``tgrow scaling curve --reference ... --save-prior FILE``); the trigger's fit then holds the
            bonus a warmup-stable-decay schedule's decay will pay near the pooled ratio, which the small
            stage's curve cannot show before its decay (:mod:`~transformer_grow.run.trigger`); unset:
            no prior.
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
    midas_stages: int = 4
    compound_stages: list[dict[str, int]] = field(
        default_factory=lambda: [{"depth": 2, "width": 2, "seq": 2}, {"width": 2}])
    trigger: PlateauTrigger = field(default_factory=PlateauTrigger)
    expert_adaptation: ExpertAdaptation = field(default_factory=ExpertAdaptation)
    options: dict[str, Any] = field(default_factory=dict)
    share_strategy: str = "cycle"
    ligo_steps: int | None = None
    ligo_lr: float = DEFAULT_LIGO_LR
    ligo_width_factor: int = 1
    anneal_prior: str | None = None

    def validate(self) -> None:
        """Refuse (:class:`ConfigError`) any option out of range, whichever plan it is for."""
        for name, least, most in (("growth_factor", 1, 4096), ("rewarmup_steps", 0, 10**12),
                                  ("progressive_steps", 1, 12), ("midas_stages", 2, 1024)):
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
        choice("share_strategy", self.share_strategy, SHARE_PLAN_STRATEGIES)
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
        require(self.ligo_steps is None or (_is_int(self.ligo_steps) and 1 <= self.ligo_steps <= 10**6),
                f"ligo_steps={self.ligo_steps!r} is not allowed; it must be an integer from 1 to 1,000,000 (or unset)")
        require(_is_number(self.ligo_lr) and 0 < self.ligo_lr <= 1,
                f"ligo_lr={self.ligo_lr!r} is not allowed; it must be a number in (0, 1]")
        require(_is_int(self.ligo_width_factor) and 1 <= self.ligo_width_factor <= 64,
                f"ligo_width_factor={self.ligo_width_factor!r} is not allowed; it must be an integer from 1 to 64")
        require(self.anneal_prior is None or (isinstance(self.anneal_prior, str) and self.anneal_prior.strip() != ""),
                f"anneal_prior={self.anneal_prior!r} is not allowed; give the path of a prior's JSON file (or leave "
                "it unset)")
        if self.anneal_prior is not None:
            load_anneal_prior(self.anneal_prior)  # a missing or malformed file is refused before any work
        require(isinstance(self.trigger, PlateauTrigger), f"trigger={self.trigger!r} is not allowed; give a mapping")
        for name in ("min_fraction", "max_fraction", "horizon_fraction", "min_gain_ratio"):
            value = getattr(self.trigger, name)
            require(_is_number(value), f"trigger {name}={value!r} is not allowed; it must be a finite number")
        require(_is_int(self.trigger.min_points) and self.trigger.min_points <= 10_000,
                f"trigger min_points={self.trigger.min_points!r} is not allowed; it must be an integer up to 10,000")
        self.trigger.validate("trigger")
        require(isinstance(self.expert_adaptation, ExpertAdaptation),
                f"expert_adaptation={self.expert_adaptation!r} is not allowed; give a mapping")
        self.expert_adaptation.validate()

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
    "g_stack_duplicate": (_GROWTH_EVENT_OPTIONS - {"method"}) | {"budget_mode", "growth_factor", "growth_fraction",
                                                                 "max_fraction"},
    "progressive": _GROWTH_EVENT_OPTIONS | {"budget_mode", "progressive_steps", "stage_fractions", "growth_fraction",
                                            "max_fraction"},
    "midas": (_GROWTH_EVENT_OPTIONS - {"method"}) | {"budget_mode", "midas_stages", "stage_fractions"},
    "compound": _GROWTH_EVENT_OPTIONS | {"budget_mode", "compound_stages", "stage_fractions", "growth_fraction",
                                         "max_fraction", "width_method"},
    "adaptive": _GROWTH_EVENT_OPTIONS | {"budget_mode", "growth_factor", "trigger", "anneal_prior"},
    "ligo": _GROWTH_EVENT_OPTIONS | {"budget_mode", "growth_factor", "growth_fraction", "max_fraction", "ligo_steps",
                                     "ligo_lr", "ligo_width_factor", "width_method"},
}

PLAN_OPTIONS_USED["share_unshare"] = (_GROWTH_EVENT_OPTIONS - {"method"}) | {
    "budget_mode", "growth_factor", "growth_fraction", "max_fraction", "share_strategy"}


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


def g_stack_duplicate_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    """``g_stack``'s small model and timing, every block duplicated in place (``depth="duplicate"``)."""
    plan = g_stack_plan(target, budget_tokens, dataclasses.replace(options, method="duplicate"))
    plan.notes.append("each block duplicated in place (L0 L0 L1 L1 ...), not the whole model stacked")
    return dataclasses.replace(plan, name="g_stack_duplicate")


def midas_layout(n_blocks: int, block: int) -> list[int]:
    """Layer sources of MIDAS's growth from ``n_blocks`` blocks of ``block`` layers to one block more: the
    middle block (the lower one of two middles) is copied in place, so the copy sits in the middle."""
    middle = (n_blocks - 1) // 2
    layers = list(range(n_blocks * block))
    at = (middle + 1) * block
    return [*layers[:at], *layers[middle * block:at], *layers[at:]]


def midas_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    k = options.midas_stages
    require(target.n_layer % k == 0, f"midas_stages={k} must divide the target's n_layer={target.n_layer} (each "
                                     "stage adds one block of n_layer / midas_stages layers)")
    block = target.n_layer // k
    # PROP-1 (Saunshi et al. 2024): stage i of k trains on a share proportional to i; the last stage, the target,
    # takes the rest of the budget.
    default = [i / (k * (k + 1) / 2) for i in range(1, k)]
    fractions = _fractions(dataclasses.replace(options, stage_fractions=options.stage_fractions or default), k - 1)
    stages: list[Stage] = []
    for i in range(1, k + 1):
        config = target.replace(n_layer=i * block)
        event = None
        if stages:
            base = options.event(stages[-1].model, config)
            event = dataclasses.replace(base, method="layer_map",
                                        options={**base.options, "layer_sources": midas_layout(i - 1, block)})
        tokens = max(1, round(fractions[i - 1] * budget_tokens)) if i < k else None
        stages.append(Stage(config, tokens=tokens, growth=event, name="target" if i == k else f"L={config.n_layer}"))
    return GrowthPlan("midas", stages, budget_tokens, options.budget_mode,
                      notes=[" -> ".join(str(s.model.n_layer) for s in stages) + " layers, each step copying the "
                             f"middle block of {block} layer(s) (MIDAS, Saunshi et al. 2024); stage token fractions "
                             f"{[round(f, 4) for f in fractions]}"])


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
    plan = GrowthPlan("adaptive", stages, budget_tokens, options.budget_mode,
                      notes=[(f"growth factor g={g}; grow when the fitted power law predicts a gain below "
                             f"{t.min_gain_ratio:g} x the reducible loss over the next {t.horizon_fraction:g} of the "
                             f"budget, not before {t.min_fraction:g} nor after {t.max_fraction:g} of it")])
    if options.anneal_prior is None:
        return plan
    prior = load_anneal_prior(options.anneal_prior)
    plan.notes.append(f"the trigger's fit uses an anneal prior from {options.anneal_prior}: {prior.describe()}")
    return with_anneal_prior(plan, prior)


def ligo_event(options: PlanOptions, old: ModelConfig, new: ModelConfig, budget_tokens: int) -> GrowthEvent:
    """The LiGO growth event ``old -> new`` (:mod:`~transformer_grow.run.ligo_phase`): the operator
    starts as ``method`` (depth) and ``width_method`` (width), each named only when that dimension grows."""
    require(options.preserve == "function", f"preserve={options.preserve!r} does not apply to LiGO growth (the "
                                            "learned map is not a fixed operator); use preserve='function'")
    event = options.event(old, new)
    extra = dict(event.options)
    if event.method is not None:
        extra.setdefault("depth", event.method)
    extra.update(ligo_steps=options.ligo_steps, ligo_lr=options.ligo_lr,
                 ligo_tokens=max(1, round(LIGO_SHARE * budget_tokens)))
    return dataclasses.replace(event, method="ligo", options=extra)


def ligo_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    """``g_stack``'s stages (small model, timing) grown by a learned LiGO operator initialised as ``method``."""
    plan = g_stack_plan(target, budget_tokens, options)
    small = plan.stages[0].model
    start = options.method
    if options.ligo_width_factor > 1:  # g_stack's timing, a model narrower as well as shallower
        small = shrink(target, depth=options.growth_factor, width=options.ligo_width_factor)
        plan.stages[0] = dataclasses.replace(plan.stages[0], model=small)
        start = f"{options.method} (depth) and {options.width_method} (width)"
    plan.stages[1] = dataclasses.replace(plan.stages[1], growth=ligo_event(options, small, target, budget_tokens))
    steps = f"{options.ligo_steps} steps" if options.ligo_steps is not None else \
        "1% of the budget's tokens (1 to 100 steps)"
    plan.notes.append(f"LiGO (Wang et al. 2023): the operator starts as {start}, trains {steps} at lr "
                      f"{options.ligo_lr:g} on the grown model's loss, its FLOPs counted in the budget")
    return dataclasses.replace(plan, name="ligo")


BUILDERS = {"scratch": scratch_plan, "g_stack": g_stack_plan, "g_stack_duplicate": g_stack_duplicate_plan,
            "compound": compound_plan, "progressive": progressive_plan, "midas": midas_plan, "adaptive": adaptive_plan,
            "ligo": ligo_plan}


def share_unshare_plan(target: ModelConfig, budget_tokens: int, options: PlanOptions) -> GrowthPlan:
    """The target with shared layers (:func:`shared_stage`), unshared exactly into the target."""
    require(target.share == "none", f"plan share_unshare grows into an unshared target; the target has "
                                    f"share={target.share!r}")
    shared = shared_stage(target, options.share_strategy, options.growth_factor)
    fraction = options.growth_fraction or options.max_fraction / 2
    event = GrowthEvent(method="unshare", options=dict(options.options), optimizer=options.optimizer,
                        rewarmup_steps=options.rewarmup_steps, schedule=options.schedule, preserve=options.preserve,
                        dynamics_relax=options.dynamics_relax)
    stages = [Stage(shared, tokens=max(1, round(fraction * budget_tokens)),
                    name=f"shared {shared.share} M={shared.share_groups}"),
              Stage(target, growth=event, name="target")]
    return GrowthPlan("share_unshare", stages, budget_tokens, options.budget_mode,
                      notes=[f"{target.n_layer} layers sharing {shared.share_groups} blocks by {shared.share} "
                             f"(Takase & Kiyono 2021) for {fraction:g} of the budget, then unshared (exact); same "
                             "FLOPs per token in both stages, fewer parameters in the first"])


def shared_stage(target: ModelConfig, strategy: str, factor: int) -> ModelConfig:
    """``target`` whose layers share ``n_layer / factor`` stored blocks by ``strategy`` (rounded, at least
    one; the middle strategies keep the first and last layer's blocks besides)."""
    n, middle = target.n_layer, strategy.startswith("middle_")
    require(n >= (3 if middle else 2), f"share_strategy={strategy!r} needs at least {3 if middle else 2} layers; "
                                       f"the target has n_layer={n}")
    blocks = max(1, round((n - 2 if middle else n) / factor))
    groups = {"all": 1, "middle_all": 3}.get(strategy, blocks + 2 if middle else blocks)
    return target.replace(share=strategy, share_groups=groups)


BUILDERS["share_unshare"] = share_unshare_plan
BUILDERS.update(upcycle=upcycle_plan, dynamic=dynamic_plan)
PLAN_OPTIONS_USED["upcycle"] = _GROWTH_EVENT_OPTIONS | {"budget_mode", "growth_fraction", "max_fraction"}
PLAN_OPTIONS_USED["dynamic"] = PLAN_OPTIONS_USED["upcycle"] | {"expert_adaptation"}


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

"""The seed API: grow a given model to a target size on a budget, with ordinary PyTorch data.

>>> from transformer_grow import GrowthManager
>>> manager = GrowthManager(model=my_model, strategy="g_stack", target_size="7B", budget="100B tokens")
>>> large = manager.grow_and_train(train_data=train_loader, eval_data=val_loader)

``model`` is our :class:`~transformer_grow.model.GPT` or a ``transformers`` model of a supported family
(:mod:`transformer_grow.hf`; converted natively, trained as our GPT, returned as the family's class).
It is the plan's first stage: trained from its weights, then grown (:func:`seed_plan`).

``target_size``: a parameter count (``"7B"``, ``"350M"``, ``"1.2e8"``), or the target itself (a
:class:`ModelConfig`, a dict of its fields, a ``transformers`` config). From a count the target is
derived by one rule for every model (:func:`transformer_grow.model.sizing.target_for_size`): keep the model's
shape (aspect ratio ``d_model / n_layer``, ``head_dim``, GQA group, FFN ratio) and take the
architecture whose total parameter count is closest. A size not above the model's is refused, and
so is one no architecture within :class:`ModelConfig`'s limits reaches, or none within 25% of it
(:data:`~transformer_grow.model.sizing.SIZE_TOLERANCE`; the refusal names the nearest sizes).

``budget``: ``"100B tokens"`` (the target trained from scratch on that many tokens: the baseline's
budget, which every plan shares, in FLOPs by default) or ``"3e21 FLOPs"`` (that many FLOPs: the
baseline's tokens are the FLOPs over the target's FLOPs per token). A plain integer is tokens.

:func:`resolve_arguments` turns :class:`~transformer_grow.run.manager.GrowthManager`'s arguments
(this seed API, the plan API's ``target``/``plan``/``budget_tokens``, or a ``transformers`` config as
``target``) into the validated plan it runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from transformer_grow.counts import MAX_COUNT, count_value, parse_count
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.config import check_growth
from transformer_grow.model.sizing import target_for_size
from transformer_grow.operators.depth import WHOLE_FACTOR_METHODS
from transformer_grow.plans.accounting import flops_per_token, param_counts
from transformer_grow.plans.builders import (
    SHORT,
    PlanOptions,
    _fractions,
    build_plan,
    ligo_event,
    load_anneal_prior,
    shrink,
    with_anneal_prior,
)
from transformer_grow.plans.plan import GrowthEvent, GrowthPlan, Stage, describe_config
from transformer_grow.plans.timing import g_stack_timing
from transformer_grow.run.hf_run import check_exportable, gpt_from_hf, hf_target, is_hf_config, is_hf_model
from transformer_grow.train.distributed import STRATEGIES as PARALLEL_STRATEGIES
from transformer_grow.train.distributed import DistEnv

STRATEGIES = ("g_stack", "compound", "progressive", "adaptive", "ligo")
_BUDGET = re.compile(r"^\s*(.+?)\s*(tokens?|flops?)\s*$", re.IGNORECASE)
# Depth operators that repeat blocks a whole number of times; other depths use insert_zero (exact).
WHOLE_FACTOR_DEPTH = WHOLE_FACTOR_METHODS


@dataclass(frozen=True)
class Budget:
    """A training budget: ``amount`` tokens or FLOPs."""

    amount: int
    unit: str  # "tokens" or "flops"

    def baseline_tokens(self, target: ModelConfig) -> int:
        """The tokens the target trained from scratch gets on this budget (what plans are built on)."""
        if self.unit == "tokens":
            return self.amount
        tokens = round(self.amount / flops_per_token(target))
        require(tokens >= 1, f"budget of {self.amount:.3g} FLOPs is less than one token of the target "
                             f"({flops_per_token(target):,} FLOPs per token)")
        return tokens


def parse_budget(budget: str | int) -> Budget:
    """``"100B tokens"``, ``"2M tokens"``, ``"3e21 FLOPs"``; an integer is tokens."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        return Budget(parse_count(budget, "budget"), "tokens")
    match = _BUDGET.match(budget) if isinstance(budget, str) else None
    value = count_value(match.group(1)) if match else None
    unit = "tokens" if match and match.group(2).lower().startswith("token") else "flops"
    most = MAX_COUNT if unit == "tokens" else 1e40  # FLOPs exceed tokens by about 6N
    require(value is not None and 1 <= value <= most,
            f"budget={budget!r} is not allowed; write a positive count and a unit, e.g. '100B tokens', '2M tokens' "
            "or '3e21 FLOPs'")
    return Budget(int(round(value)), unit)


# ------------------------------------------------------------------------------- target
def derive_target(source: ModelConfig, target_size: Any, seq_len: int | None = None
                  ) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The target config for ``target_size`` (module docstring) and, for an HF config, its family."""
    if isinstance(target_size, ModelConfig):
        return target_size, None
    if is_hf_config(target_size):
        return hf_target(target_size, seq_len or source.seq_len)
    if isinstance(target_size, dict):
        return ModelConfig.from_dict({**source.to_dict(), "head_dim": None, "n_kv_head": None, "d_ff": None,
                                      **target_size}), None
    return target_for_size(source, target_size, what="target_size"), None


# --------------------------------------------------------------------------------- plan
def _event(options: PlanOptions, old: ModelConfig, new: ModelConfig, notes: list[str]) -> GrowthEvent:
    """``options.event(old, new)`` with operators that can make this step: a depth that is not a whole
    multiple takes ``insert_zero``, a width that is not takes ``zero_pad`` (both exact for RMSNorm;
    noted in the plan)."""
    event = options.event(old, new)
    method, extra = event.method, dict(event.options)
    if method in WHOLE_FACTOR_DEPTH and new.n_layer % old.n_layer:
        notes.append(f"depth {old.n_layer} -> {new.n_layer} is not a whole multiple: insert_zero instead of {method}")
        method = "insert_zero"
    if extra.get("width") == "clone" and new.d_model % old.d_model:
        notes.append(f"width {old.d_model} -> {new.d_model} is not a whole multiple: zero_pad instead of clone")
        extra["width"] = "zero_pad"
    return dataclasses.replace(event, method=method, options=extra)


def _grows_into(old: ModelConfig, new: ModelConfig) -> bool:
    try:
        check_growth(old, new)
        return True
    except ConfigError:
        return False


def _middle_stages(strategy: str, target: ModelConfig, options: PlanOptions) -> list[tuple[ModelConfig | None, str]]:
    """The built-in plan's stages between its first and the target (``None`` where the target does not
    divide by the stage's factors)."""
    if strategy == "progressive":
        factors = [{"depth": 2 ** (options.progressive_steps - i)} for i in range(1, options.progressive_steps)]
    elif strategy == "compound":
        factors = options.compound_stages[1:]
    else:
        return []
    stages = []
    for f in factors:
        try:
            stages.append((shrink(target, **f), ",".join(f"{SHORT[k]}/{v}" for k, v in f.items())))
        except ConfigError:
            stages.append((None, ",".join(f"{SHORT[k]}/{v}" for k, v in f.items())))
    return stages


def seed_plan(strategy: str, source: ModelConfig, target: ModelConfig, budget_tokens: int,
              options: PlanOptions | None = None) -> GrowthPlan:
    """The built-in plan ``strategy`` into ``target`` with ``source`` as its first stage.

    The stages' token shares, G_stack's timing and the adaptive trigger are the built-in plan's
    (:mod:`~transformer_grow.plans.builders`); its first stage's model is ``source``. A middle stage
    (``progressive``, ``compound``) that ``source`` cannot grow into (smaller in some size, e.g. a
    compound stage with a shorter context) is dropped and its tokens go to the stage before it.
    Growth events are built for the actual neighbours (:func:`_event`).
    """
    choice("strategy", strategy, STRATEGIES)
    options = options or PlanOptions()
    options.validate()
    require(_grows_into(source, target), f"the model cannot grow into the target: {describe_config(source)} -> "
                                         f"{describe_config(target)} (growth keeps the architecture and shrinks "
                                         "nothing); give a larger target of the same family")
    notes: list[str] = []
    if strategy in ("g_stack", "ligo"):  # ligo: g_stack's timing, a learned operator (builders.ligo_plan)
        timing = g_stack_timing(param_counts(target)[0], budget_tokens, options.max_fraction, options.growth_fraction)
        first_tokens, trigger, middle, shares = timing.growth_tokens, None, [], []
        notes += timing.explain()
    elif strategy == "adaptive":
        first_tokens, trigger, middle, shares = None, options.trigger, [], []
    else:
        middle = _middle_stages(strategy, target, options)
        shares = [max(1, round(f * budget_tokens)) for f in _fractions(options, len(middle) + 1)]
        first_tokens, trigger, shares = shares[0], None, shares[1:]
    stages = [Stage(source, tokens=first_tokens, trigger=trigger, name=f"model L={source.n_layer}")]
    for (config, name), tokens in zip(middle, shares):
        if config is not None and _grows_into(stages[-1].model, config) and _grows_into(config, target):
            stages.append(Stage(config, tokens=tokens, growth=_event(options, stages[-1].model, config, notes),
                                name=name))
        else:
            notes.append(f"stage {name} dropped: the model does not grow into it; its tokens stay with the stage "
                         "before")
            stages[-1] = dataclasses.replace(stages[-1], tokens=stages[-1].tokens + tokens)
    last = _event(options, stages[-1].model, target, notes)
    if strategy == "ligo":
        last = ligo_event(dataclasses.replace(options, method=last.method or options.method), stages[-1].model,
                          target, budget_tokens)
    stages.append(Stage(target, growth=last, name="target"))
    notes.append(f"{strategy} from the given model ({describe_config(source)}, {param_counts(source)[0]:,} "
                 "parameters, trained from its weights)")
    plan = GrowthPlan(strategy, stages, budget_tokens, options.budget_mode, notes=notes)
    plan.validate()
    return plan


# -------------------------------------------------------------------------------- setup
@dataclass
class SeedSetup:
    """What the seed API derived before training: the plan, the first model and its family."""

    plan: GrowthPlan
    initial: GPT  # the first stage's weights, fp32 (never trained in place)
    family: dict[str, Any] | None  # the HF family record of an HF model or target
    lines: list[str]  # what was derived, shown before training


def prepare_seed(model: Any, strategy: str, target_size: Any, budget: Any, options: PlanOptions | None,
                 seq_len: int | None = None) -> SeedSetup:
    """Resolve the seed API's arguments (module docstring), refusing bad ones before any work."""
    choice("strategy", strategy, STRATEGIES)
    require(target_size is not None and budget is not None,
            "model= needs target_size= (e.g. '350M') and budget= (e.g. '2B tokens')")
    parsed_budget = parse_budget(budget)
    if is_hf_model(model):
        initial, family = gpt_from_hf(model, seq_len)
    elif isinstance(model, GPT):
        require(seq_len in (None, model.config.seq_len),
                f"seq_len={seq_len} is not allowed for our GPT: its seq_len is {model.config.seq_len}")
        initial, family = model, None
    else:
        raise ConfigError(f"model must be our GPT or a transformers model of a supported family; got "
                          f"{type(model).__name__}")
    source = initial.config
    target, target_family = derive_target(source, target_size, seq_len)
    if target_family is not None:
        require(family is None or family["family"] == target_family["family"],
                f"the model is {family and family['family']}, the target config {target_family['family']}: "
                "growth keeps the family")
        family = target_family
    if family is not None:
        check_exportable(target, family)
    budget_tokens = parsed_budget.baseline_tokens(target)
    plan = seed_plan(strategy, source, target, budget_tokens, options)
    n_target = param_counts(target)[0]
    fpt = flops_per_token(target)
    lines = [f"model: {describe_config(source)}, {param_counts(source)[0]:,} parameters"
             + (f" ({family['hf_class']})" if family else ""),
             f"target ({target_size if isinstance(target_size, (str, int)) else 'given'}): {describe_config(target)}, "
             f"{n_target:,} parameters, {fpt:,} FLOPs/token",
             f"budget: {budget_tokens:,} tokens of the target trained from scratch = {budget_tokens * fpt:.4g} FLOPs "
             f"({plan.budget_mode} held equal)", *plan.notes]
    return SeedSetup(plan, initial, family, lines)


@dataclass
class ManagerSetup:
    """:class:`~transformer_grow.run.manager.GrowthManager`'s arguments resolved: the plan it runs, its
    parallelism, and what the seed API or an HF target adds (first model, family, lines to log)."""

    plan: GrowthPlan
    parallel: str | None
    env: DistEnv | None
    initial: GPT | None = None  # the seed API's model: the first stage's weights
    hf_family: Any = None  # as given (a dict or a FamilyInfo), or the HF model's or target's family record
    lines: list[str] = field(default_factory=list)  # the seed API's derived target and budget
    mask_token_id: int | None = None  # a bidirectional target's [MASK] id (mask_token_for)


def mask_token_for(causal: bool, given: int | None, tokenizer: Any, model: Any, *targets: Any) -> int | None:
    """A bidirectional (BERT) target's ``[MASK]`` id for masked LM: ``given`` (``train_config.mask_token_id``),
    ``tokenizer.mask_token_id`` or the HF config's ``mask_token_id`` (of ``model`` or ``targets``), which must
    agree; ``None`` when none says (the trainer's default). An HF model with none of them is refused: the
    default, the last id, is a token of its vocabulary. A causal target: ``given``."""
    if causal:
        return given
    said = [] if given is None else [("train_config.mask_token_id", given)]
    if tokenizer is not None:
        require(getattr(tokenizer, "mask_token_id", None) is not None,
                f"tokenizer= ({type(tokenizer).__name__}) has no mask_token_id; a bidirectional model's masked LM "
                "needs its [MASK] token")
        said.append(("tokenizer.mask_token_id", tokenizer.mask_token_id))
    for spec in (model, *targets):
        config = spec.config if is_hf_model(spec) else spec if is_hf_config(spec) else None
        value = config.get("mask_token_id") if isinstance(config, dict) else getattr(config, "mask_token_id", None)
        if value is not None:
            said.append(("the HF config's mask_token_id", value))
    for name, value in said[1:]:
        require(value == said[0][1], f"{said[0][0]}={said[0][1]!r} and {name}={value!r} disagree; give one [MASK] id")
    require(bool(said) or not is_hf_model(model),
            f"{type(model).__name__} is trained by masked LM: give its [MASK] id, tokenizer= (its mask_token_id) or "
            "train_config=TrainConfig(mask_token_id=...); the default, the last id, is a token of its vocabulary")
    return said[0][1] if said else None


def resolve_arguments(target: Any, plan: str | GrowthPlan, budget_tokens: int | None,
                      plan_options: PlanOptions | None, parallel: str | None, env: DistEnv | None,
                      hf_family: Any, *, model: Any, strategy: str | None, target_size: Any, budget: Any,
                      seq_len: int | None, tokenizer: Any = None, mask_token_id: int | None = None) -> ManagerSetup:
    """Resolve :class:`~transformer_grow.run.manager.GrowthManager`'s arguments (seed API, plan API or an
    HF config as ``target``) into a validated plan, refusing bad ones before any work."""
    if strategy in PARALLEL_STRATEGIES:  # the old name of `parallel`: say so rather than "not a growth plan"
        raise ConfigError(f"strategy={strategy!r} is data parallelism: pass parallel={strategy!r} (strategy= "
                          "names the growth plan of the seed API: g_stack, compound, progressive, adaptive)")
    parallel = None if parallel in (None, "none") else parallel
    if parallel is not None:
        choice("parallel", parallel, PARALLEL_STRATEGIES)
        env = env or DistEnv.current()
    initial, lines, target_spec = None, [], target
    if model is not None or strategy is not None or target_size is not None or budget is not None:
        require(model is not None, "strategy=, target_size= and budget= go with model= (the model to grow)")
        require(target is None and budget_tokens is None,
                "give either model=, target_size=, budget= (seed API) or target, budget_tokens (plan API)")
        require(isinstance(plan, str) and (strategy is None or plan in ("g_stack", strategy)),
                f"give the growth plan once: strategy={strategy!r} (plan={plan!r} too)")
        setup = prepare_seed(model, strategy or plan, target_size, budget, plan_options, seq_len)
        plan, initial, hf_family, lines = setup.plan, setup.initial, setup.family, setup.lines
    elif is_hf_config(target):
        target, family = hf_target(target, seq_len)
        hf_family = hf_family or family
    require(plan is not None and (target is not None or isinstance(plan, GrowthPlan)),
            "GrowthManager needs a target config and a plan (or model=, target_size=, budget=)")
    if isinstance(plan, str):
        require(budget_tokens is not None, f"plan={plan!r} needs budget_tokens (the baseline's token budget)")
        plan = build_plan(plan, target, budget_tokens, plan_options)
    require(isinstance(plan, GrowthPlan), f"plan must be a plan name or a GrowthPlan, got {type(plan).__name__}")
    if plan_options is not None and plan_options.anneal_prior is not None \
            and getattr(plan, "anneal_prior", None) is None:  # a plan not built from plan_options (seed API)
        plan = with_anneal_prior(plan, load_anneal_prior(plan_options.anneal_prior))
    plan.validate()
    mask = mask_token_for(plan.target.causal, mask_token_id, tokenizer, model, target_spec, target_size)
    return ManagerSetup(plan, parallel, env, initial, hf_family, lines, mask)


def weights_digest(model: torch.nn.Module) -> str:
    """A cheap identity of a model's weights (names, shapes, sums) for a run's fingerprint."""
    import hashlib

    with torch.no_grad():
        parts = [f"{name}:{tuple(p.shape)}:{float(p.double().sum()):.10e}:{float(p.double().abs().sum()):.10e}"
                 for name, p in model.named_parameters()]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def batch_sources(train_data: Any, eval_data: Any, target: ModelConfig, eval_windows: int) -> tuple[Any, Any]:
    """``(train, eval)`` as :meth:`GrowthManager.run` takes them: our token data and window tensors pass
    through; other iterables of token batches are read by :class:`~transformer_grow.data.iterable.IterableTokens`
    (which then also serves the validation windows; :mod:`~transformer_grow.data.rows`: Hugging Face rows,
    labels and padding)."""
    from transformer_grow.data.iterable import IterableTokens, eval_windows_of

    if not hasattr(train_data, "batch"):
        return IterableTokens(train_data, target.vocab_size, eval_data=eval_data, causal=target.causal), None
    if eval_data is not None and not isinstance(eval_data, torch.Tensor) and not hasattr(eval_data, "val_windows"):
        eval_data = eval_windows_of(eval_data, target.vocab_size, target.seq_len, eval_windows, target.causal)
    return train_data, eval_data

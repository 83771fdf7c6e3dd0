"""The small-only control of a growth plan: its first-stage model trained alone, never grown, on the
baseline's FLOPs (:func:`small_only_plan`), as the compare package runs it next to each plan.

Re-exported by :mod:`transformer_grow.plans.builders`.
"""

from __future__ import annotations

from transformer_grow.errors import require
from transformer_grow.model import ModelConfig
from transformer_grow.plans.plan import GrowthPlan, Stage

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
    from transformer_grow.plans.accounting import flops_per_token

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

"""The ``adaptive`` plan's anneal prior (``PlanOptions.anneal_prior``): :func:`load_anneal_prior` reads and
checks its file, :func:`with_anneal_prior` attaches it to a plan as an :class:`AdaptivePlan`.

Re-exported by :mod:`transformer_grow.plans.builders`, whose ``adaptive_plan`` and option validation use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import require
from transformer_grow.plans.plan import GrowthPlan
from transformer_grow.scaling.anneal_prior import AnnealPrior
from transformer_grow.scaling.curve import DEFAULT_SCHEDULE_FORM


def load_anneal_prior(path: str) -> AnnealPrior:
    """The prior in the JSON file ``path`` (``PlanOptions.anneal_prior``); refused with one line
    (:class:`ConfigError`) when the file is missing, not JSON, not a prior, or of a law the trigger does not fit."""
    prior = AnnealPrior.load(path)  # its refusals name the file
    require(prior.form == DEFAULT_SCHEDULE_FORM,
            f"anneal prior file {str(path)!r} was read from the {prior.form} law; the growth trigger fits "
            f"{DEFAULT_SCHEDULE_FORM} (save the prior with that form)")
    return prior


@dataclass
class AdaptivePlan(GrowthPlan):
    """A plan whose trigger's fit uses a pooled prior on the annealing bonus (``PlanOptions.anneal_prior``)."""

    anneal_prior: AnnealPrior | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.anneal_prior is not None:  # the key only when set: records of plans without a prior stay as they were
            out["anneal_prior"] = self.anneal_prior.to_dict()
        return out


def with_anneal_prior(plan: GrowthPlan, prior: AnnealPrior | None) -> GrowthPlan:
    """``plan`` whose trigger fits with ``prior``; ``plan`` itself when ``prior`` is ``None`` or no stage has a
    trigger."""
    if prior is None or not any(stage.trigger is not None for stage in plan.stages):
        return plan
    return AdaptivePlan(plan.name, plan.stages, plan.budget_tokens, plan.budget_mode, list(plan.notes),
                        anneal_prior=prior)

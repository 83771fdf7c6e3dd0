"""The adaptive growth trigger: has the small model's validation curve flattened?

A learning-curve law is fitted to the stage's validation losses
(:func:`transformer_grow.scaling.curve.fit_learning_curve`). When the manager passes the stage's
learning-rate schedule (:class:`StageSchedule`), it is the multi-power law of Luo et al. 2025 (ICLR
2025, eq. 2), ``L(t) = E + A S1(t)^-alpha + B w(t)`` in the forward area ``S1`` of the schedule, with the
annealing bonus ``B w(t)`` still to come: it predicts cosine and warmup-stable-decay curves where a
power law in steps cannot (``benchmarks/learning_curves.py``). Without a schedule it is the saturating
power law ``L(x) = E + A (x / x_ref)^-alpha`` in the budget spent (Kaplan et al. 2020 eq. 1.3 with an
irreducible term, Hoffmann et al. 2022).

The curve has flattened when the fitted law expects the next ``horizon_fraction`` of the budget to
remove less than ``min_gain_ratio`` of the loss still reducible by this model, ``L(now) - E``: the
small model is close to its own floor and further compute is better spent on the grown model.
Guards: never before ``min_fraction`` of the budget or with fewer than ``min_points`` evaluations; the
manager grows at ``max_fraction`` regardless.

The annealing bonus ``B`` is identified only by a curve that has seen its learning rate fall. Under a
warmup-stable-decay schedule the small stage usually ends before the decay begins, so its own curve says
nothing about what the decay would pay, and the fit leaves ``B`` at 0. With an
:class:`~transformer_grow.scaling.anneal_prior.AnnealPrior` (``PlanOptions.anneal_prior``: a JSON file of
``tgrow scaling curve --reference ... --save-prior FILE``), pooled over completed runs as Luo et al. 2025
(ICLR 2025, sec. 4) carry a law fitted on a few runs to other schedules, the fit holds ``B`` near the
pooled ratio times the fitted loss at the end of the schedule. That end is the end of the whole run's
budget, so the stage's rates are then extended to it (:func:`stage_schedule` with ``to_budget_end``):
the step at which the small model would have spent the budget, the schedule decaying as it would. The
verdict still looks ``horizon_fraction`` of the budget ahead. Without a prior nothing changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from transformer_grow.errors import require
from transformer_grow.plans.plan import PlateauTrigger
from transformer_grow.run.budget import BudgetSchedule
from transformer_grow.scaling.anneal_prior import AnnealPrior
from transformer_grow.scaling.curve import MIN_POINTS, fit_learning_curve
from transformer_grow.train.schedule import lr_at


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """The learning rates of a stage's steps, for the schedule-aware law.

    Attributes:
        steps: steps done since the stage began, at each of the stage's evaluations.
        lrs: learning rate of the stage's steps 1..len(lrs), through the end of the trigger's horizon (or,
            for a fit with an anneal prior, through the end of the budget: see ``horizon``).
        cost_per_step: budget units (FLOPs or tokens) one step of the stage costs.
        horizon: the stage step at which the trigger's horizon ends, when ``lrs`` runs past it;
            ``None``: at ``len(lrs)``.
    """

    steps: list[int]
    lrs: np.ndarray
    cost_per_step: float
    horizon: int | None = None


def stage_schedule(trainer: Any, start_step: int, eval_steps: list[int], spent_now: float, cost_per_step: float,
                   trigger: PlateauTrigger, budget: float, to_budget_end: bool = False) -> StageSchedule:
    """The rates the trainer's schedule gives every step of the stage, from its start to the horizon.

    The stage's model is fixed, so its steps all cost ``cost_per_step``: the budget spent before any
    step follows from the budget spent now (``spent_now``, at ``trainer.step``), which is all a
    :class:`BudgetSchedule` reads. Re-warmup after growth is included (:func:`lr_at`).

    ``to_budget_end``: run the rates on to the step at which this stage's model would have spent the whole
    ``budget`` (if that is past the horizon), and keep the horizon in :attr:`StageSchedule.horizon`.
    """
    require(cost_per_step > 0, f"cost_per_step={cost_per_step} must be > 0")
    now = int(trainer.step)
    horizon = math.ceil(trigger.horizon_fraction * budget / cost_per_step)
    end = now + horizon
    if to_budget_end:
        # A fit with an anneal prior centres the bonus B on the pooled ratio times the fitted loss at the
        # end of the rates it is given (fit_learning_curve), and the annealing still to come, w, counts the
        # schedule's whole decrease: both are the run's, so the rates must reach the end of its schedule,
        # i.e. the end of the budget, not only the trigger's horizon. The stage's model trained on to that
        # end is the counterfactual the trigger weighs growth against. The verdict still ends at the horizon.
        end = max(end, now + math.ceil(max(budget - spent_now, 0.0) / cost_per_step))
    rates = []
    for it in range(start_step, end):
        schedule = trainer.schedule
        if isinstance(schedule, BudgetSchedule):
            spent = spent_now + (it - now) * cost_per_step
            schedule = dataclasses.replace(schedule, spent=lambda spent=spent: spent)
        rates.append(lr_at(schedule, it, trainer.rewarmup))
    return StageSchedule([int(s) - start_step for s in eval_steps], np.asarray(rates, dtype=float), cost_per_step,
                         horizon=now + horizon - start_step if to_budget_end else None)


def trigger_fires(spent: list[float], losses: list[float], trigger: PlateauTrigger, budget: float,
                  schedule: StageSchedule | None = None, prior: AnnealPrior | None = None) -> tuple[bool, str]:
    """Whether the stage should grow now, and a line saying why (see the module docstring).

    ``spent`` are the budget amounts (FLOPs or tokens) at the stage's evaluations, ``losses`` their
    validation losses; ``budget`` is the plan's whole budget in the same unit. ``schedule``: the
    stage's learning rates (fit the multi-power law in steps); ``None`` fits the power law in ``spent``.
    ``prior``: a pooled prior on the annealing bonus for the schedule's fit (module docstring); its
    ``schedule`` must then run to the end of the budget (:func:`stage_schedule` with ``to_budget_end``).
    """
    if not spent or spent[-1] < trigger.min_fraction * budget:
        return False, "before min_fraction"
    if len(spent) < trigger.min_points:
        return False, f"only {len(spent)} evaluations (need {trigger.min_points})"
    losses_array = np.asarray(losses, dtype=np.float64)
    if schedule is not None:
        return _fires_on_schedule(losses_array, trigger, budget, schedule, prior)
    # x in units of 1/1000 of the budget (the curve fit wants x >= 1)
    x = np.asarray(spent, dtype=np.float64) / budget * 1000.0
    keep = x >= 1.0
    if keep.sum() < max(trigger.min_points, MIN_POINTS):
        return False, f"only {int(keep.sum())} evaluations past 0.1% of the budget"
    fit = fit_learning_curve(x[keep], losses_array[keep], n_bootstrap=2)
    now = float(x[-1])
    return _verdict(fit, now, now + 1000.0 * trigger.horizon_fraction, trigger, f"{now / 1000:.3f} of the budget")


def _fires_on_schedule(losses: np.ndarray, trigger: PlateauTrigger, budget: float, schedule: StageSchedule,
                       prior: AnnealPrior | None = None) -> tuple[bool, str]:
    steps = np.asarray(schedule.steps, dtype=np.float64)
    require(steps.shape == losses.shape, f"{steps.size} evaluation steps for {losses.size} losses")
    keep = steps >= 1
    if keep.sum() < max(trigger.min_points, MIN_POINTS):
        return False, f"only {int(keep.sum())} evaluations after the stage's first step"
    fit = fit_learning_curve(steps[keep], losses[keep], schedule.lrs, n_bootstrap=2, prior=prior)
    now = float(steps[-1])
    end = schedule.lrs.size if schedule.horizon is None else min(schedule.horizon, schedule.lrs.size)
    ahead = min(now + trigger.horizon_fraction * budget / schedule.cost_per_step, float(end))
    return _verdict(fit, now, round(ahead), trigger, f"stage step {now:.0f}")


def _verdict(fit, now: float, ahead: float, trigger: PlateauTrigger, where: str) -> tuple[bool, str]:
    p = fit.params
    predicted_now = fit.predict(now)
    gain = predicted_now - fit.predict(ahead)
    # Reducible by training on: the power-law part above the floor. The annealing bonus still to come,
    # B w(now), is left out: it is paid by a decay, not by more steps at this rate, and counting it would
    # make a prior on B (which raises B w before a WSD decay) fire the trigger earlier by itself.
    reducible = predicted_now - p["E"] - p.get("B", 0.0) * float(fit.features(now)[1])
    ratio = gain / reducible if reducible > 0 else 0.0
    law = f"{p['E']:.3f} + {p['A']:.3g} (x/x_ref)^-{p['alpha']:.3f}"
    if "B" in p:
        law = f"{p['E']:.3f} + {p['A']:.3g} (S1/S1_ref)^-{p['alpha']:.3f} + {p['B']:.3g} w ({fit.form})"
    if fit.prior is not None:
        law += f", B under an anneal prior of {fit.prior.ratio:.3f} x the final loss ({fit.prior.n_runs} run(s))"
    note = (f"fitted L = {law} at {where}: next {trigger.horizon_fraction:g} of the budget expected to gain "
            f"{gain:.4f} = {ratio:.3f} of the reducible {reducible:.4f}")
    return ratio < trigger.min_gain_ratio, note

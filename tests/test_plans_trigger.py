"""The adaptive plan's growth trigger on hand-made validation curves."""

from types import SimpleNamespace

import numpy as np
import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.plans.plan import PlateauTrigger
from transformer_grow.run.budget import BudgetSchedule
from transformer_grow.run.trigger import StageSchedule, stage_schedule, trigger_fires
from transformer_grow.scaling.schedule_laws import schedule_features
from transformer_grow.train.schedule import LRSchedule, Rewarmup, lr_at

BUDGET = 1000.0
TRIGGER = PlateauTrigger(min_fraction=0.1, max_fraction=0.6, horizon_fraction=0.1, min_gain_ratio=0.1, min_points=5)


def curve(e, a, alpha, upto, n=8):
    x = np.linspace(upto / n, upto, n)
    return list(x), list(e + a * (x / BUDGET) ** -alpha)


def test_flat_curve_fires_and_steep_curve_does_not():
    # A saturated curve: next 10% of the budget removes ~1% of what is left to gain.
    fires, note = trigger_fires(*curve(3.0, 1.0, 0.05, upto=500), TRIGGER, BUDGET)
    assert fires, note
    # Early on a steep power law: the next 10% of the budget removes a large share.
    fires, note = trigger_fires(*curve(3.0, 1.0, 1.0, upto=200), TRIGGER, BUDGET)
    assert not fires, note
    assert "expected to gain" in note


def test_guards_against_growing_too_early():
    spent, losses = curve(3.0, 1.0, 0.05, upto=90)
    assert trigger_fires(spent, losses, TRIGGER, BUDGET) == (False, "before min_fraction")
    fires, note = trigger_fires(spent[-4:], [4.0, 3.9, 3.9, 3.9], PlateauTrigger(min_fraction=0.05), BUDGET)
    assert not fires and "only 4 evaluations" in note


def _cosine_lrs(total=1000, warmup=20, peak=1e-2):
    i = np.arange(total)
    return peak * np.minimum(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * i / total))


def test_with_the_schedule_the_trigger_fits_the_multi_power_law():
    # A stage whose curve follows the multi-power law (Luo et al. 2025) under a cosine schedule, one budget
    # unit per step. At 90% of the budget the rate is nearly 0: the next 10% gains ~1% of what is left
    # (the annealing bonus has been paid), but the steep annealed curve looks to a power law in the budget
    # like ~5% still to come.
    lrs = _cosine_lrs()
    steps = np.arange(50, 901, 50)
    s1 = np.cumsum(np.concatenate([[0.0], lrs]))
    z, w = schedule_features("multi_power", lrs, steps, float(s1[900]))
    losses = list(2.0 + z**-0.5 + 0.5 * w)
    trigger = PlateauTrigger(min_fraction=0.1, max_fraction=0.95, horizon_fraction=0.1, min_gain_ratio=0.03)
    stage = StageSchedule(list(steps), lrs, 1.0)
    fires, note = trigger_fires(list(steps.astype(float)), losses, trigger, BUDGET, stage)
    assert fires and "multi_power" in note, note
    fires, note = trigger_fires(list(steps.astype(float)), losses, trigger, BUDGET)
    assert not fires, note
    with pytest.raises(ConfigError, match="17 evaluation steps for 18 losses"):
        trigger_fires(list(steps.astype(float)), losses, trigger, BUDGET, StageSchedule(list(steps[1:]), lrs, 1.0))


def test_stage_schedule_replays_the_budget_schedule():
    # A stage that began at step 40 (budget spent 400 then, 10 units a step), now at step 100 (spent 1000).
    shape = LRSchedule("cosine", peak_lr=1e-2, min_lr=1e-3, warmup_steps=10, total_steps=300)
    budget = 3000.0
    spent = {"now": 1000.0}
    schedule = BudgetSchedule(shape, start_step=0, start_spent=0.0, end_spent=budget - 10, spent=lambda: spent["now"])
    trainer = SimpleNamespace(step=100, schedule=schedule, rewarmup=Rewarmup(grow_step=40, steps=5))
    trigger = PlateauTrigger(horizon_fraction=0.1)
    stage = stage_schedule(trainer, 40, [60, 80, 100], 1000.0, 10.0, trigger, budget)
    assert stage.steps == [20, 40, 60] and stage.cost_per_step == 10.0
    assert stage.lrs.size == 60 + 30  # to now, then the horizon: 0.1 * 3000 / 10 steps
    for it in (40, 41, 44, 45, 99, 100, 129):  # what the trainer would use at step index it
        spent["now"] = 400.0 + (it - 40) * 10.0
        assert stage.lrs[it - 40] == pytest.approx(lr_at(schedule, it, trainer.rewarmup), rel=1e-12)
    spent["now"] = 400.0
    assert stage.lrs[0] == pytest.approx(lr_at(schedule, 40) / 5)  # re-warmup after growth

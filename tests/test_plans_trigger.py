"""The adaptive plan's growth trigger on hand-made validation curves."""

import numpy as np

from transformer_grow.growth.plan import PlateauTrigger
from transformer_grow.growth.trigger import trigger_fires

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

"""The adaptive growth trigger: has the small model's validation curve flattened?

A saturating power law ``L(x) = E + A (x / x_ref)^-alpha`` (Kaplan et al. 2020 eq. 1.3 with an
irreducible term, Hoffmann et al. 2022; fitted by
:func:`transformer_grow.scaling.curve.fit_learning_curve`) is fitted to the stage's validation
losses against ``x``, the budget spent. The curve has flattened when the fitted law expects the next
``horizon_fraction`` of the budget to remove less than ``min_gain_ratio`` of the loss still
reducible by this model, ``L(u) - E``: the small model is close to its own floor and further
compute is better spent on the grown model. Guards: never before ``min_fraction`` of the budget
or with fewer than ``min_points`` evaluations; the manager grows at ``max_fraction`` regardless.
"""

from __future__ import annotations

import numpy as np

from transformer_grow.growth.plan import PlateauTrigger
from transformer_grow.scaling.curve import MIN_POINTS, fit_learning_curve


def trigger_fires(spent: list[float], losses: list[float], trigger: PlateauTrigger,
                  budget: float) -> tuple[bool, str]:
    """Whether the stage should grow now, and a line saying why (see the module docstring).

    ``spent`` are the budget amounts (FLOPs or tokens) at the stage's evaluations, ``losses`` their
    validation losses; ``budget`` is the plan's whole budget in the same unit.
    """
    if not spent or spent[-1] < trigger.min_fraction * budget:
        return False, "before min_fraction"
    if len(spent) < trigger.min_points:
        return False, f"only {len(spent)} evaluations (need {trigger.min_points})"
    # x in units of 1/1000 of the budget (the curve fit wants x >= 1)
    x = np.asarray(spent, dtype=np.float64) / budget * 1000.0
    keep = x >= 1.0
    if keep.sum() < max(trigger.min_points, MIN_POINTS):
        return False, f"only {int(keep.sum())} evaluations past 0.1% of the budget"
    fit = fit_learning_curve(x[keep], np.asarray(losses, dtype=np.float64)[keep], n_bootstrap=2)
    e, a, alpha = fit.params["E"], fit.params["A"], fit.params["alpha"]
    now = float(x[-1])
    predicted_now = fit.predict(now)
    gain = predicted_now - fit.predict(now + 1000.0 * trigger.horizon_fraction)
    reducible = predicted_now - e
    ratio = gain / reducible if reducible > 0 else 0.0
    note = (f"fitted L = {e:.3f} + {a:.3g} (x/x_ref)^-{alpha:.3f} at {now / 1000:.3f} of the budget: next "
            f"{trigger.horizon_fraction:g} expected to gain {gain:.4f} = {ratio:.3f} of the reducible {reducible:.4f}")
    return ratio < trigger.min_gain_ratio, note

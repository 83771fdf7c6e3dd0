"""Learning-curve extrapolation, early stopping and the local slope."""

import numpy as np
import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.scaling.curve import fit_learning_curve, local_slope, lr_areas, should_stop_early


def _power_curve(noise=0.01, seed=0):
    steps = np.arange(10, 2001, 10)
    true = 2.0 + 3.0 * steps**-0.5
    return steps, true, true * np.exp(np.random.default_rng(seed).normal(0, noise, steps.size))


def _cosine(total=3000, warmup=100, peak=3e-4):
    i = np.arange(total)
    return peak * np.minimum(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * i / total))


def test_power_law_curve_is_recovered_and_its_interval_covers_the_final_loss():
    steps, true, observed = _power_curve()
    seen = steps <= 600
    fit = fit_learning_curve(steps[seen], observed[seen], n_bootstrap=100)
    assert fit.form == "power"
    assert fit.predict(2000) == pytest.approx(true[-1], rel=0.01)
    lo, hi = fit.predict_interval(2000, level=0.95)
    assert lo <= true[-1] <= hi and hi - lo < 0.1
    np.testing.assert_allclose(fit.predict(steps[seen]), true[seen], rtol=0.01)
    assert fit.predict_interval(2000) == (lo, hi)  # bootstrap samples are kept (and seeded)


def test_lr_area_form_predicts_a_cosine_schedule():
    lrs = _cosine()
    s1, s2 = lr_areas(lrs)
    steps = np.arange(20, 3001, 20)
    true = 2.0 + 0.5 * s1[steps] ** -0.4 - 0.3 * s2[steps]  # Tissue et al. 2024, eq. 1
    observed = true * np.exp(np.random.default_rng(1).normal(0, 0.005, steps.size))
    seen = steps <= 1800
    fit = fit_learning_curve(steps[seen], observed[seen], lrs=lrs, n_bootstrap=100)
    assert fit.form == "lr_area" and fit.params["B"] > 0
    assert fit.predict(3000) == pytest.approx(true[-1], rel=0.01)
    lo, hi = fit.predict_interval(3000)
    assert lo <= true[-1] <= hi
    # Written with its floor: no prediction inside the schedule is below the fitted E.
    assert np.all(fit.predict(np.arange(1, 3001)) >= fit.params["E"])
    # The plain power law in steps cannot see the annealing bonus still to come.
    plain = fit_learning_curve(steps[seen], observed[seen], n_bootstrap=2)
    assert abs(plain.predict(3000) - true[-1]) > 2 * abs(fit.predict(3000) - true[-1])


def test_lr_areas_count_decreases_only():
    lrs = np.array([1.0, 2.0, 2.0, 1.0, 0.5])
    s1, s2 = lr_areas(lrs, decay=0.5)
    np.testing.assert_allclose(s1, [0, 1, 3, 5, 6, 6.5])
    # momentum m: 0, 0, 0, 1, 0.5 * 1 + 0.5 = 1.0 -> S2 = cumulative sum
    np.testing.assert_allclose(s2, [0, 0, 0, 0, 1.0, 2.0])


def test_should_stop_early_compares_the_optimistic_bound():
    steps, _, observed = _power_curve(seed=2)
    fit = fit_learning_curve(steps[:60], observed[:60], n_bootstrap=50)
    lo, hi = fit.predict_interval(2000)
    assert should_stop_early(fit, 2000, best_known_loss=lo - 0.05, margin=0.01)
    assert not should_stop_early(fit, 2000, best_known_loss=lo - 0.05, margin=0.1)
    assert not should_stop_early(fit, 2000, best_known_loss=hi)


def test_local_slope_is_the_log_log_slope():
    steps = np.arange(1, 101, dtype=float)
    assert local_slope(steps, 5.0 * steps**-0.3, window=10) == pytest.approx(-0.3, abs=1e-12)
    flat = 2.0 + 3.0 * steps**-2.0
    assert -0.01 < local_slope(steps, flat, window=20) < 0
    assert local_slope(steps, flat, window=20) > local_slope(steps[:30], flat[:30], window=20)


def test_bad_curves_are_refused():
    steps, _, observed = _power_curve()
    with pytest.raises(ConfigError, match="need at least 5"):
        fit_learning_curve(steps[:3], observed[:3])
    with pytest.raises(ConfigError, match="strictly increasing"):
        fit_learning_curve(steps[::-1], observed)
    with pytest.raises(ConfigError, match="positive finite"):
        fit_learning_curve(steps, -observed)
    with pytest.raises(ConfigError, match="lrs has 100 entries"):
        fit_learning_curve(steps, observed, lrs=np.full(100, 1e-3))
    fit = fit_learning_curve(steps[:50], observed[:50], lrs=np.full(800, 1e-3), n_bootstrap=2)
    with pytest.raises(ConfigError, match="outside the learning-rate schedule"):
        fit.predict(1000)
    with pytest.raises(ConfigError, match="window=1"):
        local_slope(steps, observed, window=1)
    with pytest.raises(ConfigError, match="longer than the curve"):
        local_slope(steps[:5], observed[:5], window=10)

"""Learning-curve extrapolation, early stopping and the local slope."""

import numpy as np
import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.scaling.curve import fit_learning_curve, local_slope, lr_areas, should_stop_early
from transformer_grow.scaling.schedule_laws import multi_power_drop, schedule_features


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
    raw_lo, raw_hi = fit.predict_interval(2000, level=0.95, calibrated=False)
    assert lo <= raw_lo <= true[-1] <= raw_hi <= hi and raw_hi - raw_lo < 0.1
    # The backtests' own fit noise widens the band of a law that is right: at most +-5% here.
    assert hi - lo < 0.2
    np.testing.assert_allclose(fit.predict(steps[seen]), true[seen], rtol=0.01)
    assert fit.predict_interval(2000) == (lo, hi)  # bootstrap samples are kept (and seeded)


def test_lr_area_form_predicts_a_cosine_schedule():
    lrs = _cosine()
    s1, s2 = lr_areas(lrs)
    steps = np.arange(20, 3001, 20)
    true = 2.0 + 0.5 * s1[steps] ** -0.4 - 0.3 * s2[steps]  # Tissue et al. 2024, eq. 1
    observed = true * np.exp(np.random.default_rng(1).normal(0, 0.005, steps.size))
    seen = steps <= 1800
    fit = fit_learning_curve(steps[seen], observed[seen], lrs=lrs, n_bootstrap=100, form="lr_area")
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


def _wsd(total=2000, warmup=50, peak=1e-2, decay_frac=0.2, min_ratio=0.1):
    i = np.arange(total)
    decay_start = int(total * (1 - decay_frac))
    lr = peak * np.minimum(1.0, (i + 1) / warmup)
    frac = np.clip((i - decay_start) / (total - 1 - decay_start), 0.0, 1.0)
    return np.where(i >= decay_start, peak + (min_ratio * peak - peak) * frac, lr)


def test_multi_power_drop_is_the_papers_sum():
    lrs = np.array([1.0, 1.0, 0.5, 0.5, 0.25])
    c, beta, gamma = 2.0, 0.5, 1.0
    # drops at steps 3 (0.5) and 5 (0.25); S_3(t) = lr_3 + ... + lr_t, G(x) = 1 - (c x + 1)^-beta
    g = lambda x: 1 - (c * x + 1) ** -beta  # noqa: E731
    expected = [0, 0, 0.5 * g(0.5 / 0.5), 0.5 * g(1.0 / 0.5), 0.5 * g(1.25 / 0.5) + 0.25 * g(0.25 / 0.25)]
    np.testing.assert_allclose(multi_power_drop(lrs, np.arange(1, 6), c, beta, gamma), expected, rtol=1e-12)
    # The bonus still to come is never negative and is 0 for a constant schedule.
    _, w = schedule_features("multi_power", _cosine(), np.arange(1, 3001), 1.0)
    assert np.all(w >= 0) and np.all(np.diff(w) <= 1e-12) and w[0] == pytest.approx(1.0, abs=1e-5)
    _, w = schedule_features("multi_power", np.full(50, 1e-3), np.arange(1, 51), 1.0)
    assert np.all(w == 0)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_multi_power_law_recovers_its_parameters_and_stays_above_e(schedule):
    lrs = _cosine(total=2000, warmup=50, peak=1e-2) if schedule == "cosine" else _wsd()
    steps = np.arange(60, 2001, 20)
    s1 = np.cumsum(np.concatenate([[0.0], lrs]))
    z, w = schedule_features("multi_power", lrs, steps, float(s1[steps[-1]]))
    truth = {"E": 1.5, "A": 0.8, "alpha": 0.5, "B": 0.4}
    true = truth["E"] + truth["A"] * z ** -truth["alpha"] + truth["B"] * w
    observed = true * np.exp(np.random.default_rng(3).normal(0, 0.002, steps.size))
    fit = fit_learning_curve(steps, observed, lrs, n_bootstrap=2)
    assert fit.form == "multi_power"
    for name, value in truth.items():
        assert fit.params[name] == pytest.approx(value, rel=0.1), name
    # Fitted on the first 90% (half of the WSD decay seen), the final loss is predicted within 1%.
    seen = steps <= 1800
    early = fit_learning_curve(steps[seen], observed[seen], lrs, n_bootstrap=2)
    assert early.predict(2000) == pytest.approx(true[-1], rel=0.01)
    plain = fit_learning_curve(steps[seen], observed[seen], n_bootstrap=2)  # power law in steps
    assert abs(plain.predict(2000) - true[-1]) > 2 * abs(early.predict(2000) - true[-1])
    everywhere = early.predict(np.arange(1, 2001))
    assert np.all(everywhere >= early.params["E"]) and np.all(everywhere > 0)


def test_predictions_stay_above_e_and_positive_on_a_curve_that_falls_fast():
    # A curve that falls faster than any law with a floor: E is pushed to 0, predictions stay positive.
    lrs = _cosine(total=400, warmup=20, peak=1e-2)
    steps = np.arange(30, 201, 10)
    losses = 3.0 - 0.006 * steps
    for form in ("multi_power", "lr_area"):
        fit = fit_learning_curve(steps, losses, lrs, n_bootstrap=20, form=form)
        predicted = fit.predict(np.arange(1, 401))
        assert np.all(predicted >= fit.params["E"]) and np.all(predicted > 0)
        lo, _ = fit.predict_interval(400, 0.9)
        assert lo > 0


def _ar1(n, phi, sigma, rng):
    noise = np.empty(n)
    noise[0] = rng.normal(0, sigma / np.sqrt(1 - phi**2))
    for i in range(1, n):
        noise[i] = phi * noise[i - 1] + rng.normal(0, sigma)
    return noise


def test_interval_covers_the_final_loss_under_autocorrelated_noise():
    # Power-law curves with AR(1) noise (phi 0.9): consecutive evaluations share most of their error.
    steps = np.arange(20, 2001, 20)
    true = 2.0 + 3.0 * steps**-0.5
    seen = steps <= 800
    calibrated, raw, widths = [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        observed = true * np.exp(_ar1(steps.size, 0.9, 0.004, rng))
        fit = fit_learning_curve(steps[seen], observed[seen], n_bootstrap=10, seed=seed)
        lo, hi = fit.predict_interval(2000, 0.9)
        raw_lo, raw_hi = fit.predict_interval(2000, 0.9, calibrated=False)
        assert lo <= raw_lo and hi >= raw_hi
        calibrated.append(lo <= observed[-1] <= hi)
        raw.append(raw_lo <= observed[-1] <= raw_hi)
        widths.append(np.log(hi / lo))
    # 90% nominal; 40 runs: a standard error of 0.05, so 0.75 is three below. Without the backtest
    # widening the band covers about 55%: the bootstrap alone does not see the drift of a correlated curve.
    assert np.mean(calibrated) >= 0.75, np.mean(calibrated)
    assert np.mean(raw) < 0.75, np.mean(raw)
    assert np.median(widths) < 0.1  # honest, not unbounded: the band is a few percent of the loss
    print(f"coverage calibrated {np.mean(calibrated):.2f}, uncalibrated {np.mean(raw):.2f}")

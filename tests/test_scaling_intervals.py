"""Prediction intervals for new runs (law uncertainty plus residual noise) cover at their nominal rate,
including runs at 3x-30x more compute than any fitted run; the law's own interval does not."""

import warnings

import numpy as np

from transformer_grow.scaling.bootstrap import interval, resample_counts
from transformer_grow.scaling.chinchilla import ChinchillaConfig, fit_chinchilla
from transformer_grow.scaling.curve import fit_learning_curve
from transformer_grow.scaling.predict import noise_draws, prediction_interval, safe_log
from transformer_grow.scaling.synthetic import synthetic_records


def _arrays(records):
    return (np.array([r[k] for r in records]) for k in ("n_params_nonembedding", "tokens", "final_val_loss"))


def test_prediction_intervals_cover_new_and_extrapolated_runs_at_their_level():
    # 12 simulated grids (24 runs at 1e18-3e19 FLOPs, 2% log-normal noise); 12 new runs each at 1e19 (inside),
    # 1e20 and 1e21 FLOPs (extrapolated), with fresh noise. Nominal 90% and 95%.
    hits = {0.9: [], 0.95: []}
    mean_hits = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for sim in range(12):
            n, d, loss = _arrays(synthetic_records(budgets=(1e18, 3e18, 1e19, 3e19), sizes_per_budget=6,
                                                   noise=0.02, seed=sim))
            fit = fit_chinchilla(n, d, loss, ChinchillaConfig.reduced())
            samples = fit.refit(resample_counts(n.size, 60, np.random.default_rng(sim)))
            new_n, new_d, new_loss = _arrays(synthetic_records(budgets=(1e19, 1e20, 1e21), sizes_per_budget=4,
                                                               noise=0.02, seed=1000 + sim))
            mean = samples.column().loss(new_n[None, :], new_d[None, :])
            for level in hits:
                lo, hi = prediction_interval(safe_log(mean), fit.log_residuals, fit.n_free, level, seed=sim)
                hits[level] += list((lo <= new_loss) & (new_loss <= hi))
            lo, hi = (np.array(v) for v in zip(*(interval(mean[:, j], 0.95) for j in range(new_n.size))))
            mean_hits += list((lo <= new_loss) & (new_loss <= hi))
    coverage = {level: float(np.mean(v)) for level, v in hits.items()}
    print("prediction-interval coverage (144 new runs):", coverage, "mean-curve band at 95%:", np.mean(mean_hits))
    # 144 runs, 12 per simulated grid (correlated): about +-5 points of simulation error.
    assert 0.82 <= coverage[0.9] <= 0.98
    assert 0.89 <= coverage[0.95] <= 1.0
    # The 95% bootstrap band of the mean law alone (the old "interval") misses far more new runs.
    assert np.mean(mean_hits) < 0.87


def test_noise_draws_are_centred_and_inflated_for_the_fitted_parameters():
    residuals = np.array([-0.02, -0.01, 0.0, 0.01, 0.03, 0.5])
    draws = noise_draws(residuals, n_free=2)
    assert np.median(draws) == 0.0
    np.testing.assert_allclose(draws, (residuals - 0.005) * np.sqrt(6 / 4))


def test_learning_curve_prediction_interval_covers_a_noisy_power_law():
    steps = np.arange(10, 2001, 10)
    true = 2.0 + 3.0 * steps**-0.5
    inside = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        observed = true * np.exp(rng.normal(0, 0.01, steps.size))
        fit = fit_learning_curve(steps[steps <= 800], observed[steps <= 800], n_bootstrap=60, seed=seed)
        lo, hi = fit.predict_interval(2000, 0.9)
        mean_lo, mean_hi = fit.mean_interval(2000, 0.9)
        assert lo < mean_lo and hi > mean_hi  # measurement noise widens the interval
        inside.append(lo <= observed[-1] <= hi)
    assert np.mean(inside) >= 0.75

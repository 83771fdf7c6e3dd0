"""Chinchilla Approach 3: parameter recovery, the full start grid, robustness, derived quantities,
leave-one-out and bootstrap coverage, on synthetic data from known laws."""

import time

import numpy as np
import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.scaling.bootstrap import interval, leave_one_out, resample_counts
from transformer_grow.scaling.chinchilla import ChinchillaConfig, ChinchillaParams, fit_chinchilla
from transformer_grow.scaling.data import data_from_records
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER as TRUE
from transformer_grow.scaling.synthetic import synthetic_records

# Few starts, spread over the box: enough for data generated from the paper's law.
SMALL_GRID = ChinchillaConfig(
    e_grid=(0.5,),
    a_grid=(5.0, 10.0),
    alpha_grid=(0.3, 0.6),
    b_grid=(5.0, 10.0),
    beta_grid=(0.3, 0.6),
    max_iter=200,
)


def _data(sizes_per_budget=16, noise=0.01, seed=0, budgets=(1e18, 1e19, 1e20, 1e21)):
    records = synthetic_records(
        TRUE, budgets=budgets, sizes_per_budget=sizes_per_budget, noise=noise, seed=seed
    )
    return data_from_records([(r["run_id"], r) for r in records])


def test_fit_recovers_known_parameters():
    data = _data(sizes_per_budget=16, noise=0.01, seed=1)
    fit = fit_chinchilla(data.n_params, data.tokens, data.loss, ChinchillaConfig.reduced())
    p = fit.params
    # Tolerances: 64 points with 1% noise; the E-A-alpha trade-off makes A loose, the exponents tight.
    assert p.E == pytest.approx(TRUE.E, rel=0.05)
    assert p.alpha == pytest.approx(TRUE.alpha, abs=0.04)
    assert p.beta == pytest.approx(TRUE.beta, abs=0.04)
    assert p.a == pytest.approx(TRUE.a, abs=0.03)
    assert np.log(p.A) == pytest.approx(np.log(TRUE.A), abs=0.6)
    assert np.log(p.B) == pytest.approx(np.log(TRUE.B), abs=0.6)
    # Projected search: the 9 exponent pairs of the 72-start grid plus 16 dense exponent starts.
    assert fit.search.grid_starts == 72 and fit.search.projected
    assert 1 <= fit.search.starts_at_best <= fit.search.starts_run == 9 + 16


def test_full_default_grid_on_60_points():
    data = _data(sizes_per_budget=15, noise=0.01, seed=2)
    assert len(data) == 60
    start = time.perf_counter()
    fit = fit_chinchilla(data.n_params, data.tokens, data.loss)
    seconds = time.perf_counter() - start
    print(f"full 4500-start grid, 60 points: {seconds:.2f} s, {fit.search.starts_at_best} starts at the best")
    assert fit.search.grid_starts == 4500 and fit.search.starts_run == 25 + 16
    assert 1 <= fit.search.starts_at_best <= fit.search.starts_run
    assert seconds < 30  # well under 1 s on an idle 2-core machine; the target (250 points < 5 s) is benchmarked
    # Running every one of the 4,500 starts without projection finds the same optimum.
    plain = fit_chinchilla(data.n_params, data.tokens, data.loss, ChinchillaConfig(project=False, max_iter=300))
    assert plain.search.starts_run == 4500
    assert fit.search.objective <= plain.search.objective * (1 + 1e-6)
    np.testing.assert_allclose(fit.params.alpha, plain.params.alpha, atol=2e-3)
    assert fit.params.alpha == pytest.approx(TRUE.alpha, abs=0.05)
    assert fit.params.beta == pytest.approx(TRUE.beta, abs=0.05)
    # The reduced grid finds the same optimum on this data.
    reduced = fit_chinchilla(data.n_params, data.tokens, data.loss, ChinchillaConfig.reduced())
    assert reduced.search.objective == pytest.approx(fit.search.objective, rel=1e-6)


def test_huber_resists_outliers_where_least_squares_does_not():
    data = _data(sizes_per_budget=10, noise=0.005, seed=3)
    loss = data.loss.copy()
    # Four bad runs (30% too high) inside the range of sizes. (At the extreme sizes, outliers have
    # leverage: the law can bend to fit them and no robust loss on residuals protects against that.)
    bad = np.argsort(data.n_params)[[8, 15, 22, 29]]
    loss[bad] *= 1.3
    huber = fit_chinchilla(data.n_params, data.tokens, loss, SMALL_GRID)
    # delta = 10 puts every residual in Huber's quadratic zone: ordinary least squares in log space.
    squares = fit_chinchilla(
        data.n_params, data.tokens, loss, ChinchillaConfig(**{**SMALL_GRID.__dict__, "huber_delta": 10.0})
    )
    huber_error = abs(huber.params.alpha - TRUE.alpha)
    squares_error = abs(squares.params.alpha - TRUE.alpha)
    assert huber_error < 0.03
    assert huber.params.E == pytest.approx(TRUE.E, rel=0.05)
    assert squares_error > 3 * huber_error


def test_compute_optimal_allocation_minimises_the_loss_at_fixed_compute():
    flops = 1e22
    n_opt, d_opt = TRUE.compute_optimal(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-10)
    assert TRUE.a + TRUE.b == pytest.approx(1.0)
    sizes = n_opt * np.geomspace(0.5, 2.0, 2001)
    losses = TRUE.loss(sizes, flops / (6 * sizes))
    assert sizes[np.argmin(losses)] == pytest.approx(n_opt, rel=2e-3)
    # Arrays of parameters (bootstrap samples) give one allocation per sample.
    both = ChinchillaParams(*(np.array([getattr(TRUE, k)] * 2) for k in ("E", "A", "B", "alpha", "beta")))
    np.testing.assert_allclose(both.compute_optimal(flops)[0], [n_opt, n_opt])


def test_leave_one_out_predicts_a_known_law_and_singles_out_a_bad_run():
    data = _data(sizes_per_budget=6, noise=0.002, seed=4)
    loss = data.loss.copy()
    loss[7] *= 1.25
    fit = fit_chinchilla(data.n_params, data.tokens, loss, SMALL_GRID)
    loo = leave_one_out(fit, data.labels)
    others = np.delete(loo.relative_errors, 7)
    assert np.max(others) < 0.02
    assert loo.worst == data.labels[7]
    assert loo.relative_errors[7] > 0.15
    assert loo.rmse_log_loss == pytest.approx(np.sqrt(np.mean(loo.log_errors**2)))


def test_bootstrap_intervals_cover_the_truth_at_about_their_level():
    # 20 simulated data sets (32 runs, 2% noise), 50 resamples each, nominal 90% intervals.
    n_sims, level, covered = 20, 0.9, {"alpha": 0, "beta": 0, "loss": 0}
    for sim in range(n_sims):
        data = _data(sizes_per_budget=8, noise=0.02, seed=100 + sim)
        fit = fit_chinchilla(data.n_params, data.tokens, data.loss, SMALL_GRID)
        samples = fit.refit(resample_counts(len(data), 50, np.random.default_rng(sim)))
        for name, values, truth in (
            ("alpha", samples.alpha, TRUE.alpha),
            ("beta", samples.beta, TRUE.beta),
            ("loss", samples.loss(3e8, 3e10), TRUE.loss(3e8, 3e10)),
        ):
            lo, hi = interval(values, level)
            covered[name] += lo <= truth <= hi
    rates = {name: count / n_sims for name, count in covered.items()}
    print("coverage of nominal 90% intervals:", rates)
    for rate in rates.values():
        assert 0.75 <= rate <= 1.0


def test_bad_fit_settings_are_refused():
    with pytest.raises(ConfigError, match="huber_delta"):
        ChinchillaConfig(huber_delta=0.0)
    with pytest.raises(ConfigError, match="alpha_grid"):
        ChinchillaConfig(alpha_grid=())

"""IsoFLOP profiles (Approach 2) and the single-variable laws."""

import numpy as np
import pytest

from transformer_grow.scaling.isoflop import fit_isoflop, group_budgets
from transformer_grow.scaling.powerlaw import (
    PowerLawConfig,
    compute_frontier,
    fit_power_law,
    fit_single_variable_laws,
    lowest_loss_per_value,
)
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER as TRUE
from transformer_grow.scaling.synthetic import synthetic_records

SMALL = PowerLawConfig(e_grid=(0.0, 0.5), a_grid=(2.0, 8.0), alpha_grid=(0.2, 0.6))


def _arrays(records):
    return tuple(
        np.array([r[k] for r in records])
        for k in ("n_params_nonembedding", "tokens", "flops", "final_val_loss")
    )


def test_isoflop_minima_follow_the_law_exponents():
    budgets = (1e18, 1e19, 1e20, 1e21, 1e22)
    n, d, c, loss = _arrays(synthetic_records(budgets=budgets, sizes_per_budget=9, noise=0.0, size_span=10.0))
    result = fit_isoflop(n, d, c, loss)
    assert len(result.profiles) == 5 and not result.skipped
    for profile in result.profiles:
        n_true, _ = TRUE.compute_optimal(profile.flops)
        assert profile.n_opt == pytest.approx(n_true, rel=0.1)  # a parabola in ln N approximates the law
        assert 6 * profile.n_opt * profile.d_opt == pytest.approx(profile.flops, rel=1e-6)
        assert not profile.extrapolated
    assert result.a == pytest.approx(TRUE.a, abs=0.02)
    assert result.b == pytest.approx(TRUE.b, abs=0.02)
    assert result.a + result.b == pytest.approx(1.0, abs=1e-9)


def test_budgets_group_within_tolerance_and_small_budgets_are_skipped():
    flops = np.array([1.0e20, 1.04e20, 0.98e20, 3e20, 3.1e20, 1e21])
    groups = group_budgets(flops, rtol=0.1)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 2], [3, 4], [5]]
    n = np.array([1e8, 2e8, 4e8, 1e8, 2e8, 1e8])
    loss = np.array([3.0, 2.9, 3.0, 2.8, 2.7, 2.6])
    result = fit_isoflop(n, flops / (6 * n), flops, loss)
    assert len(result.profiles) == 1 and result.a is None
    assert [s["reason"] for s in result.skipped] == ["2 distinct N", "1 distinct N"]


def test_bootstrap_counts_weight_the_parabola():
    n, d, c, loss = _arrays(synthetic_records(budgets=(1e19, 1e20), sizes_per_budget=6, noise=0.01, seed=3))
    counts = np.ones(n.size)
    counts[[0, 6]] = 0  # a resample without these runs
    weighted = fit_isoflop(n, d, c, loss, counts=counts)
    dropped = fit_isoflop(
        np.delete(n, [0, 6]), np.delete(d, [0, 6]), np.delete(c, [0, 6]), np.delete(loss, [0, 6])
    )
    assert weighted.a == pytest.approx(dropped.a, rel=1e-9)


def test_power_law_recovers_a_known_law():
    x = np.geomspace(1e7, 1e10, 12)
    loss = (1.8 + 300.0 / x**0.3) * np.exp(np.random.default_rng(0).normal(0, 0.003, x.size))
    fit = fit_power_law("N", x, loss, np.arange(x.size), SMALL)
    assert fit.params.alpha == pytest.approx(0.3, abs=0.04)
    assert fit.params.E == pytest.approx(1.8, rel=0.05)
    # Projected: the grid's 2 exponents plus the 16 best of the dense exponent grid.
    assert fit.search.grid_starts == 8 and fit.search.starts_run == 2 + 16


def test_points_of_the_single_variable_laws():
    n = np.array([1e8, 1e8, 2e8, 2e8, 4e8])
    loss = np.array([3.0, 2.8, 2.7, 2.9, 2.5])
    assert lowest_loss_per_value(n, loss).tolist() == [1, 2, 4]
    flops = np.array([1.0, 1.0, 2.0, 3.0, 4.0])
    loss_c = np.array([3.0, 2.9, 3.1, 2.8, 2.85])
    assert compute_frontier(flops, loss_c).tolist() == [1, 3]
    fits, skipped = fit_single_variable_laws(n, n * 10, flops, loss, SMALL)
    assert fits == {} and set(skipped) == {"N", "D", "C"}  # fewer than 4 points each

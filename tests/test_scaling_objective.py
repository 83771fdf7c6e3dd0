"""The fitting objective, its analytic gradient, and the batched L-BFGS."""

import numpy as np
import pytest
from scipy.optimize import minimize

from transformer_grow.scaling.lbfgs import minimize_batched
from transformer_grow.scaling.objective import LogHuberObjective, Standardizer, huber


def _problem(n_terms: int, n: int = 40, seed: int = 0, weights_rows: int = 1):
    rng = np.random.default_rng(seed)
    log_x = rng.uniform(15.0, 23.0, size=(n, n_terms))
    log_loss = rng.uniform(0.5, 1.5, size=n)
    weights = rng.integers(0, 3, size=(weights_rows, n)).astype(float) + 0.1
    standardizer = Standardizer.of(log_x)
    return log_x, log_loss, weights, standardizer


def test_huber_is_quadratic_then_linear():
    r = np.array([-0.5, -1e-3, 0.0, 5e-4, 2e-3])
    expected = [1e-3 * (0.5 - 5e-4), 0.5e-6, 0.0, 0.5 * 25e-8, 1e-3 * (2e-3 - 5e-4)]
    np.testing.assert_allclose(huber(r, 1e-3), expected, rtol=1e-12)


@pytest.mark.parametrize("n_terms", [1, 2])
@pytest.mark.parametrize("standardised", [False, True])
def test_analytic_gradient_matches_finite_differences(n_terms, standardised):
    log_x, log_loss, weights, standardizer = _problem(n_terms, weights_rows=3)
    features = standardizer.features(log_x) if standardised else log_x
    # delta 0.05: some residuals in the quadratic zone, some in the linear one.
    objective = LogHuberObjective(features, log_loss, 0.05, weights=weights)
    rng = np.random.default_rng(1)
    raw = np.column_stack(
        [rng.uniform(-0.5, 0.5, 6)]
        + [c for _ in range(n_terms) for c in (rng.uniform(2, 8, 6), rng.uniform(0.1, 0.6, 6))]
    )
    theta = standardizer.to_standard(raw) if standardised else raw
    rows = np.array([0, 1, 2, 0, 1, 2])
    value, grad = objective.value_and_grad(theta, rows)
    residual = objective.log_prediction(theta) - log_loss
    assert np.any(np.abs(residual) < 0.05) and np.any(np.abs(residual) > 0.05)
    step = 1e-6
    for p in range(theta.shape[1]):
        plus, minus = theta.copy(), theta.copy()
        plus[:, p] += step
        minus[:, p] -= step
        numeric = (objective.value_and_grad(plus, rows)[0] - objective.value_and_grad(minus, rows)[0]) / (
            2 * step
        )
        np.testing.assert_allclose(grad[:, p], numeric, rtol=1e-5, atol=1e-10)
    # The value is the weighted mean Huber loss of the row's weights.
    w = weights[rows[0]] / weights[rows[0]].sum()
    assert value[0] == pytest.approx(np.sum(w * huber(residual[0], 0.05)), rel=1e-12)


def test_standardizer_round_trip_preserves_the_model():
    log_x, log_loss, _, standardizer = _problem(2)
    raw = np.array([[0.3, 6.0, 0.34, 6.2, 0.28], [-0.5, 20.0, 1.5, 3.0, 0.1]])
    std = standardizer.to_standard(raw)
    np.testing.assert_allclose(standardizer.to_raw(std), raw, rtol=1e-12)
    raw_model = LogHuberObjective(log_x, log_loss, 1e-3).log_prediction(raw)
    std_model = LogHuberObjective(standardizer.features(log_x), log_loss, 1e-3).log_prediction(std)
    np.testing.assert_allclose(std_model, raw_model, rtol=1e-12)


def test_chunked_evaluation_equals_one_chunk(monkeypatch):
    log_x, log_loss, weights, standardizer = _problem(2, n=50, weights_rows=4)
    objective = LogHuberObjective(standardizer.features(log_x), log_loss, 1e-3, weights=weights)
    theta = np.random.default_rng(2).normal(size=(37, 5))
    rows = np.arange(37) % 4
    value, grad = objective.value_and_grad(theta, rows)
    monkeypatch.setattr(LogHuberObjective, "_CHUNK_ELEMENTS", 50 * 3)  # 3 starts per chunk
    value_small, grad_small = objective.value_and_grad(theta, rows)
    np.testing.assert_allclose(value_small, value, rtol=1e-13)
    np.testing.assert_allclose(grad_small, grad, rtol=1e-12)


def test_batched_lbfgs_finds_each_minimum_of_independent_problems():
    # Rosenbrock functions with different minima (a, a^2), one per start: the problems must not interact.
    targets = np.array([1.0, -0.5, 2.0, 0.3])

    def rosenbrock(x, rows):
        a = targets[rows]
        f = (a - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
        g = np.column_stack(
            [-2 * (a - x[:, 0]) - 400 * x[:, 0] * (x[:, 1] - x[:, 0] ** 2), 200 * (x[:, 1] - x[:, 0] ** 2)]
        )
        return f, g

    result = minimize_batched(rosenbrock, np.tile([-1.2, 1.0], (4, 1)), max_iter=2000, ftol=1e-15, gtol=1e-10)
    np.testing.assert_allclose(result.x[:, 0], targets, atol=1e-5)
    np.testing.assert_allclose(result.x[:, 1], targets**2, atol=1e-4)
    assert result.converged.all()


def test_batched_lbfgs_agrees_with_scipy_on_the_huber_objective():
    log_x, _, _, standardizer = _problem(2, n=60, seed=3)
    features = standardizer.features(log_x)
    truth = np.array([0.5, 0.3, 0.4, -0.2, 0.3])
    noise = np.random.default_rng(0).normal(0, 0.02, 60)
    log_loss = LogHuberObjective(features, np.zeros(60), 0.1).log_prediction(truth)[0] + noise
    objective = LogHuberObjective(features, log_loss, 0.1)
    start = np.zeros(5)
    batched = minimize_batched(objective.value_and_grad, start[None, :], ftol=1e-15, gtol=1e-12)
    reference = minimize(
        objective.value_and_grad_single,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000},
    )
    assert batched.fun[0] == pytest.approx(reference.fun, rel=1e-9)
    np.testing.assert_allclose(batched.x[0], reference.x, atol=1e-5)

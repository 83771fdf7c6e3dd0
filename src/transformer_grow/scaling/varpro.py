"""Variable projection: for fixed exponents the rest of a power-law sum is a non-negative least squares problem.

``L = E + sum_k A_k exp(-alpha_k u_k)`` is linear in ``(E, A_1, ..., A_K)`` once the exponents are fixed
(Golub & Pereyra 1973, "The differentiation of pseudo-inverses and nonlinear least squares problems whose
variables separate"). For every exponent vector of a grid we solve, in closed form,

    min_{c >= 0} sum_i w_i ((X c)_i / L_i - 1)^2,    X = [1, exp(-alpha_1 u_1), ..., exp(-alpha_K u_K)]

(relative residuals, the first-order expansion of the log residual ``log(X c / L)``), then two
iteratively reweighted rounds with Huber weights ``min(1, 1.345 s / |r_i|)`` (``s`` = 1.4826 x the median
absolute residual) so a few outlying runs do not steer the linear part. With at most three unknowns the
NNLS problem is solved exactly by enumerating the supports: the NNLS optimum is the least-squares
solution on one support, and among the supports whose solution is feasible it has the lowest sum of
squares.

The result is a start in the log parameterisation of :mod:`.objective` (``e = log E``, ``a_k = log A_k``),
with a coefficient the projection sets to zero floored at ``FLOOR`` times the smallest loss (the log
parameterisation cannot represent zero, and a tiny floor would leave no gradient to grow it back).
Every start of a grid that shares its exponents projects to the same point, so the Approach-3 grid of
4,500 starts becomes 25 distinct projected starts (its 5 x 5 exponent pairs).
"""

from __future__ import annotations

import itertools

import numpy as np

FLOOR = 1e-3
IRLS_ROUNDS = 2
HUBER_K = 1.345


def _supports(n_coef: int) -> list[tuple[int, ...]]:
    return [s for r in range(1, n_coef + 1) for s in itertools.combinations(range(n_coef), r)]


def _nnls_small(gram: np.ndarray, rhs: np.ndarray, const: np.ndarray) -> np.ndarray:
    """Exact NNLS of batched small problems ``min c'Gc - 2 c'b + const`` over ``c >= 0``: (G, m)."""
    n_grid, m = rhs.shape
    best = np.zeros((n_grid, m))
    best_sse = const.copy()  # c = 0
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None]
    for support in _supports(m):
        idx = np.array(support)
        sub = gram[:, idx[:, None], idx[None, :]] + ridge * np.eye(idx.size)
        coef = np.linalg.solve(sub, rhs[:, idx, None])[..., 0]
        sse = const - np.einsum("gi,gi->g", coef, rhs[:, idx])  # at the LS solution c'Gc = c'b
        better = np.all(coef >= 0, axis=1) & (sse < best_sse)
        best[better] = 0.0
        best[np.ix_(better, idx)] = coef[better]
        best_sse[better] = sse[better]
    return best


def project(features: np.ndarray, loss: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """Standardised starts ``[e, a_1, alpha_1, ...]`` (G, 1+2K) for exponent rows (G, K) of ``features`` (n, K)."""
    features = np.asarray(features, dtype=float).reshape(loss.size, -1)
    exponents = np.atleast_2d(np.asarray(exponents, dtype=float))
    n_grid, n_terms = exponents.shape
    # Design divided by the loss: columns 1/L and exp(-alpha_k u_k)/L, target 1.
    design = np.empty((n_grid, loss.size, n_terms + 1))
    design[:, :, 0] = 1.0 / loss
    for k in range(n_terms):
        exponent = np.clip(-exponents[:, k, None] * features[None, :, k], -700.0, 700.0)
        design[:, :, k + 1] = np.exp(exponent) / loss
    weights = np.ones((n_grid, loss.size))
    coef = np.zeros((n_grid, n_terms + 1))
    for _ in range(IRLS_ROUNDS + 1):
        wd = design * weights[:, :, None]
        gram = np.einsum("gni,gnj->gij", wd, design)
        rhs = wd.sum(axis=1)
        coef = _nnls_small(gram, rhs, weights.sum(axis=1))
        residual = np.einsum("gni,gi->gn", design, coef) - 1.0
        scale = 1.4826 * np.median(np.abs(residual), axis=1, keepdims=True)
        cut = HUBER_K * np.maximum(scale, 1e-12)
        absr = np.abs(residual)
        weights = np.where(absr > cut, cut / np.maximum(absr, 1e-300), 1.0)
    floor = FLOOR * float(loss.min())
    logs = np.log(np.maximum(coef, floor))
    theta = np.empty((n_grid, 1 + 2 * n_terms))
    theta[:, 0] = logs[:, 0]
    theta[:, 1::2] = logs[:, 1:]
    theta[:, 2::2] = exponents
    return theta


def exponent_grid(values: np.ndarray, n_terms: int) -> np.ndarray:
    """Every combination of ``values`` for each of ``n_terms`` exponents: (len(values)^K, K)."""
    return np.array(list(itertools.product(values, repeat=n_terms)), dtype=float)

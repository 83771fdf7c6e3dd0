"""Multi-start fitting of a log-space power-law sum (see :mod:`.objective`), and weighted refits.

:func:`fit_multistart` first projects the start grid (:mod:`.varpro`, the default): every start keeps its
exponents and gets the best linear part ``E, A_k`` for them, so starts that share their exponents become one
start (the 4,500-start Approach-3 grid becomes its 25 exponent pairs); to these it adds the ``n_dense``
best projected points of a dense exponent grid (``DENSE_EXPONENTS`` per axis, ranked by the objective
itself). With ``project=False`` it runs every grid start as given. Either way it runs the batched L-BFGS
(:mod:`.lbfgs`) from every start, polishes
the best optimum with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` (a check by a reference
implementation; at most 20 iterations, as the batched run has already converged), keeps the better of
the two, and counts how many grid starts ended within ``best_rtol`` of the best objective.

:func:`refit_weighted` refits the same law under many weight rows at once (bootstrap resamples,
leave-one-out folds), each from a few warm starts (the best optima of the full fit): a resample is a
small perturbation of the data, so its optimum lies next to one of them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from transformer_grow.scaling.lbfgs import minimize_batched
from transformer_grow.scaling.objective import LogHuberObjective, Standardizer, gradient_scale
from transformer_grow.scaling.varpro import exponent_grid, project

# Stopping tests of the batched L-BFGS: relative objective decrease, largest gradient component
# relative to the Huber delta (the gradient of the mean Huber loss scales with delta), and stalling:
# a start whose objective fell by less than STALL_RTOL (relative) over its last STALL_WINDOW
# iterations is on a plateau (typically one power term switched off, its softmax weight ~1e-9).
# Measured on 250 noisy Chinchilla points, full 4,500-start grid (CPU seconds of the batched run,
# starts at the best): max 300 iterations, no stall test: 2.6 s, 799; max 500 with stall (50, 1e-6):
# 2.1-2.3 s, 807-891 (depending on the line search); max 1000 with stall (50, 1e-7): 2.8 s, 838.
FTOL = 1e-12
GTOL_PER_DELTA = 1e-7
MAX_ITER = 500
STALL_WINDOW = 50
STALL_RTOL = 1e-6
WARM_DISTANCE = 0.05
# Refits (bootstrap, leave-one-out) start next to an optimum: 200 iterations gave the same bootstrap
# parameters (to 1e-12) as 500 on 32- and 100-point data sets, at about half the cost.
REFIT_MAX_ITER = 200
# Dense exponent grid of the projected search (raw exponents), and how many of its best points are run.
DENSE_EXPONENTS = np.linspace(0.05, 2.0, 30)
N_DENSE = 16
INITIAL_LOG_SCALE = float(np.log(0.02))  # Huber likelihood, unprojected starts: s = 2% of the loss


@dataclass(frozen=True)
class MultiStartResult:
    """Best raw parameter vector ``[e, a_1, alpha_1, ...]`` and what the search did to find it."""

    theta: np.ndarray  # raw coordinates
    objective: float  # weighted mean Huber loss (or the ``kind``'s objective) at theta
    starts_run: int  # L-BFGS runs (projected: distinct projected grid starts + dense exponent starts)
    starts_at_best: int  # L-BFGS runs whose final objective is within best_rtol of the best
    starts_converged: int  # grid starts stopped by the ftol/gtol tests (not by max_iter / line search)
    best_rtol: float
    warm_starts: np.ndarray  # (k, P) raw: best distinct optima, used to warm-start refits
    seconds: float
    grid_starts: int = 0  # starts of the configured grid (before projection)
    projected: bool = False
    kind: str = "huber"


def start_grid(axes: list[tuple[float, ...]]) -> np.ndarray:
    """Cartesian product of per-parameter value lists, in parameter order ``[e, a_1, alpha_1, ...]``."""
    return np.array(list(itertools.product(*axes)), dtype=float)


def _distinct_best(theta: np.ndarray, fun: np.ndarray, k: int, min_distance: float) -> np.ndarray:
    """Indices of up to ``k`` lowest-objective rows that are pairwise farther apart than ``min_distance``."""
    order = np.argsort(np.where(np.isfinite(fun), fun, np.inf))
    chosen: list[int] = []
    for i in order:
        if not np.isfinite(fun[i]):
            break
        if all(np.abs(theta[i] - theta[j]).max() > min_distance for j in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return np.array(chosen, dtype=int)


def polish(objective: LogHuberObjective, theta_std: np.ndarray, row: int = 0) -> tuple[np.ndarray, float]:
    """One scipy L-BFGS-B run (analytic gradient) from ``theta_std``; returns (theta_std, objective)."""
    result = minimize(
        objective.value_and_grad_single,
        theta_std,
        args=(row,),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20, "maxfun": 40, "ftol": 1e-15, "gtol": 1e-14},
    )
    value, _ = objective.value_and_grad_single(result.x, row)
    return result.x, value


def _projected_starts(objective: LogHuberObjective, standardizer: Standardizer, starts_raw: np.ndarray,
                      n_dense: int) -> np.ndarray:
    """Standardised starts: the grid's distinct exponent rows projected, plus the best dense-grid points."""
    n_terms = objective.n_terms
    loss = np.exp(objective.log_loss)
    grid_exponents = np.unique(starts_raw[:, 2 : 1 + 2 * n_terms : 2], axis=0) * standardizer.sigma
    starts = project(objective.features, loss, grid_exponents)
    if n_dense > 0:
        dense = project(objective.features, loss, exponent_grid(DENSE_EXPONENTS, n_terms) * standardizer.sigma)
        value, _ = LogHuberObjective(objective.features, objective.log_loss, 1e-3).value_and_grad(dense)
        pick = _distinct_best(dense, value, n_dense, WARM_DISTANCE)
        starts = np.concatenate([starts, dense[pick]])
    return starts


def _with_log_scale(objective: LogHuberObjective, theta_std: np.ndarray) -> np.ndarray:
    """Append ``log s`` (robust scale of each start's residuals) for the Huber likelihood."""
    residual = objective.log_prediction(theta_std) - objective.log_loss
    scale = 1.4826 * np.median(np.abs(residual), axis=1)
    log_scale = np.log(np.maximum(np.where(np.isfinite(scale), scale, 1.0), 1e-6))
    return np.column_stack([theta_std, log_scale])


def fit_multistart(
    log_x: np.ndarray,
    log_loss: np.ndarray,
    starts_raw: np.ndarray,
    *,
    delta: float,
    kind: str = "huber",
    project_starts: bool = True,
    n_dense: int = N_DENSE,
    best_rtol: float = 1e-4,
    n_polish: int = 1,
    n_warm: int = 3,
    max_iter: int = MAX_ITER,
) -> MultiStartResult:
    """Fit ``log L = LSE(e, a_k - alpha_k log x_k)`` to ``log_loss`` from the grid ``starts_raw`` (module docstring)."""
    t0 = time.perf_counter()
    log_x = np.asarray(log_x, dtype=float).reshape(len(log_loss), -1)
    standardizer = Standardizer.of(log_x)
    objective = LogHuberObjective(standardizer.features(log_x), log_loss, delta, kind=kind)
    if project_starts:
        x0 = _projected_starts(objective, standardizer, starts_raw, n_dense)
    else:
        x0 = standardizer.to_standard(starts_raw)
    if objective.scale_param:
        x0 = _with_log_scale(objective, x0) if project_starts else np.column_stack(
            [x0, np.full(x0.shape[0], INITIAL_LOG_SCALE)])
    batched = minimize_batched(
        objective.value_and_grad,
        x0,
        max_iter=max_iter,
        ftol=FTOL,
        gtol=GTOL_PER_DELTA * gradient_scale(kind, delta),
        stall_window=STALL_WINDOW,
        stall_rtol=STALL_RTOL,
    )
    # Best distinct optima (at least WARM_DISTANCE apart in standardised coordinates): the first
    # n_polish are polished with scipy, the first n_warm warm-start every later refit.
    distinct = _distinct_best(batched.x, batched.fun, max(n_polish, n_warm), WARM_DISTANCE)
    candidates = [(batched.x[distinct[0]], float(batched.fun[distinct[0]]))]
    candidates += [polish(objective, batched.x[i]) for i in distinct[:n_polish]]
    best_std, best_value = min(candidates, key=lambda pair: pair[1])
    tolerance = best_rtol * abs(best_value)
    at_best = int(np.sum(batched.fun <= best_value + tolerance))
    warm_std = np.array([best_std] + [batched.x[i] for i in distinct[1:n_warm]])
    return MultiStartResult(
        theta=standardizer.to_raw(best_std),
        objective=float(best_value),
        starts_run=int(x0.shape[0]),
        starts_at_best=at_best,
        starts_converged=int(batched.converged.sum()),
        best_rtol=best_rtol,
        warm_starts=standardizer.to_raw(warm_std),
        seconds=time.perf_counter() - t0,
        grid_starts=int(starts_raw.shape[0]),
        projected=project_starts,
        kind=kind,
    )


def refit_weighted(
    log_x: np.ndarray,
    log_loss: np.ndarray,
    weights: np.ndarray,
    warm_starts_raw: np.ndarray,
    *,
    delta: float,
    kind: str = "huber",
    max_iter: int = REFIT_MAX_ITER,
) -> np.ndarray:
    """Best raw parameters (R, P) for each weight row (R, n), each started from every warm start.

    A row whose every start failed (non-finite objective) comes back as NaN.
    """
    log_x = np.asarray(log_x, dtype=float).reshape(len(log_loss), -1)
    standardizer = Standardizer.of(log_x)
    objective = LogHuberObjective(standardizer.features(log_x), log_loss, delta, weights=weights, kind=kind)
    n_rows, n_warm = objective.weights.shape[0], warm_starts_raw.shape[0]
    x0 = np.tile(standardizer.to_standard(warm_starts_raw), (n_rows, 1))  # row r uses starts r*k .. r*k+k-1
    rows = np.repeat(np.arange(n_rows), n_warm)

    def weighted(theta: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return objective.value_and_grad(theta, rows[starts])

    result = minimize_batched(
        weighted,
        x0,
        max_iter=max_iter,
        ftol=FTOL,
        gtol=GTOL_PER_DELTA * gradient_scale(kind, delta),
        stall_window=STALL_WINDOW,
        stall_rtol=STALL_RTOL,
    )
    fun = np.where(np.isfinite(result.fun), result.fun, np.inf).reshape(n_rows, n_warm)
    best = fun.argmin(axis=1)
    theta_std = result.x.reshape(n_rows, n_warm, -1)[np.arange(n_rows), best]
    theta = standardizer.to_raw(theta_std)
    theta[~np.isfinite(fun.min(axis=1))] = np.nan
    return theta

"""A batched L-BFGS: thousands of independent small minimisations advanced in lock-step with numpy.

Running ``scipy.optimize.minimize`` once per start costs about a millisecond of Python overhead per
iteration, so the 4,500-start Chinchilla grid would take minutes. Here every start keeps its own
curvature history, line search and stopping test (the problems stay independent: nothing is shared
but the numpy calls), and one call of the objective evaluates all starts still running.

Algorithm (Nocedal & Wright, "Numerical Optimization", 2nd ed.): the two-loop recursion
(Algorithm 7.4) with the initial scaling ``gamma = s'y / y'y`` (eq. 7.20), a backtracking Armijo
line search (section 3.5: unit step, then the minimiser of the interpolating quadratic, then
geometric back-off), and curvature pairs kept only when ``s'y > 0`` so the inverse-Hessian estimate
stays positive definite. A start stops when its objective decrease falls below ``ftol`` relative to
the objective, when its largest gradient component falls below ``gtol``, when its line search fails
(no decrease at machine precision), when it stalls (optional: less than ``stall_rtol`` relative
decrease over ``stall_window`` iterations), or at ``max_iter``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# f(theta (S, P), rows (S,)) -> (value (S,), grad (S, P)); rows are the indices of the starts evaluated.
BatchedObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchedResult:
    """Final point, objective, gradient and status of every start."""

    x: np.ndarray  # (S, P)
    fun: np.ndarray  # (S,)
    grad: np.ndarray  # (S, P)
    n_iter: np.ndarray  # (S,) iterations taken
    converged: np.ndarray  # (S,) bool: stopped by ftol or gtol (not by max_iter or a failed line search)
    n_evaluations: int  # batched objective calls


def _two_loop(grad: np.ndarray, s_hist: np.ndarray, y_hist: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Search direction ``-H grad`` for each start; histories (S, m, P) with oldest first, rho 0 if unused."""
    q = grad.copy()
    m = s_hist.shape[1]
    alpha = np.zeros((grad.shape[0], m))
    for j in range(m - 1, -1, -1):
        alpha[:, j] = rho[:, j] * np.einsum("sp,sp->s", s_hist[:, j], q)
        q -= alpha[:, j, None] * y_hist[:, j]
    sy = np.einsum("sp,sp->s", s_hist[:, -1], y_hist[:, -1])
    yy = np.einsum("sp,sp->s", y_hist[:, -1], y_hist[:, -1])
    has_history = rho[:, -1] > 0
    # Without history: a steepest-descent step of length at most 1 in parameter space.
    gamma = np.where(
        has_history, sy / np.where(yy > 0, yy, 1.0), 1.0 / np.maximum(np.abs(grad).max(axis=1), 1e-300)
    )
    r = gamma[:, None] * q
    for j in range(m):
        beta = rho[:, j] * np.einsum("sp,sp->s", y_hist[:, j], r)
        r += s_hist[:, j] * (alpha[:, j] - beta)[:, None]
    return -r


def minimize_batched(
    objective: BatchedObjective,
    x0: np.ndarray,
    *,
    max_iter: int = 1000,
    memory: int = 10,
    ftol: float = 1e-12,
    gtol: float = 1e-12,
    max_backtracks: int = 12,
    stall_window: int = 0,
    stall_rtol: float = 0.0,
) -> BatchedResult:
    """Minimise ``objective`` independently from every row of ``x0`` (S, P)."""
    x = np.array(x0, dtype=float, copy=True)
    n_starts, n_params = x.shape
    all_rows = np.arange(n_starts)
    f, g = objective(x, all_rows)
    n_evaluations = 1
    s_hist = np.zeros((n_starts, memory, n_params))
    y_hist = np.zeros((n_starts, memory, n_params))
    rho = np.zeros((n_starts, memory))
    n_iter = np.zeros(n_starts, dtype=int)
    converged = np.zeros(n_starts, dtype=bool)
    active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    # f of the last stall_window iterations, per start (ring buffer indexed by n_iter % window).
    f_window = np.repeat(f[:, None], max(stall_window, 1), axis=1)

    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        g_act = g[rows]
        direction = _two_loop(g_act, s_hist[rows], y_hist[rows], rho[rows])
        slope = np.einsum("sp,sp->s", g_act, direction)
        uphill = ~(slope < 0)
        if uphill.any():  # history gone bad: restart from steepest descent
            rho[rows[uphill]] = 0.0
            scale = 1.0 / np.maximum(np.abs(g_act[uphill]).max(axis=1), 1e-300)
            direction[uphill] = -g_act[uphill] * scale[:, None]
            slope[uphill] = np.einsum("sp,sp->s", g_act[uphill], direction[uphill])

        step, f_new, g_new, failed, calls = _line_search(
            objective, x[rows], f[rows], direction, slope, rows, max_backtracks
        )
        n_evaluations += calls

        moved = ~failed
        mrows = rows[moved]
        s_vec = step[moved, None] * direction[moved]
        y_vec = g_new[moved] - g_act[moved]
        sy = np.einsum("sp,sp->s", s_vec, y_vec)
        f_old = f[mrows]
        x[mrows] += s_vec
        f[mrows], g[mrows] = f_new[moved], g_new[moved]
        n_iter[rows] += 1
        # Curvature pairs with s'y > 0 (relative to |s||y|, and far from underflow: rho = 1 / s'y).
        keep = (sy > 1e-12 * np.linalg.norm(s_vec, axis=1) * np.linalg.norm(y_vec, axis=1)) & (sy > 1e-200)
        krows = mrows[keep]
        if krows.size:
            s_hist[krows] = np.roll(s_hist[krows], -1, axis=1)
            y_hist[krows] = np.roll(y_hist[krows], -1, axis=1)
            rho[krows] = np.roll(rho[krows], -1, axis=1)
            s_hist[krows, -1], y_hist[krows, -1], rho[krows, -1] = s_vec[keep], y_vec[keep], 1.0 / sy[keep]

        small_decrease = (f_old - f[mrows]) <= ftol * np.maximum(np.abs(f_old), 1e-300)
        small_grad = np.abs(g[mrows]).max(axis=1) <= gtol
        done = small_decrease | small_grad
        if stall_window:
            slot = n_iter[mrows] % stall_window
            f_before = f_window[mrows, slot]  # f stall_window iterations ago
            stalled = (n_iter[mrows] >= stall_window) & (f_before - f[mrows] <= stall_rtol * np.abs(f[mrows]))
            f_window[mrows, slot] = f[mrows]
            active[mrows[stalled & ~done]] = False
        converged[mrows[done]] = True
        active[mrows[done]] = False
        active[rows[failed]] = False
    return BatchedResult(x, f, g, n_iter, converged, n_evaluations)


# Backtracking rounds after the first try LADDER step sizes per start in one batched call when at most
# LADDER_MAX_STARTS starts are still searching: near an optimum of the Huber objective the unit step
# often fails several times in a row, and on small problems the cost is per call, not per start
# (bootstrap of 32 points: 957 -> 554 calls). With many starts it would only add work.
LADDER = np.array([1.0, 0.25, 0.0625])
LADDER_MAX_STARTS = 64
ARMIJO_C1 = 1e-4


def _line_search(objective, x, f, direction, slope, rows, max_rounds):
    """Backtracking Armijo search per start: returns step, f and grad at the new point, failed, calls."""
    n = rows.size
    step = np.ones(n)
    f_new = np.full(n, np.nan)
    g_new = np.zeros_like(x)
    failed = np.zeros(n, dtype=bool)
    f_try, g_try = objective(x + direction, rows)
    calls = 1
    ok = np.isfinite(f_try) & (f_try <= f + ARMIJO_C1 * slope)
    f_new[ok], g_new[ok] = f_try[ok], g_try[ok]
    pending = np.flatnonzero(~ok)
    # First retry: the minimiser of the quadratic through f(0), f'(0), f(1), within [0.1, 0.5].
    curvature = f_try[pending] - f[pending] - slope[pending]
    quad = np.where(np.isfinite(curvature) & (curvature > 0), -slope[pending] / (2 * curvature), 0.5)
    step[pending] = np.clip(quad, 0.1, 0.5)
    for _ in range(max_rounds):
        if pending.size == 0:
            break
        # Give up where the move no longer changes x in floating point: no decrease is possible.
        move = step[pending, None] * np.abs(direction[pending])
        hopeless = np.all(move <= 1e-14 * (1.0 + np.abs(x[pending])), axis=1)
        failed[pending[hopeless]] = True
        pending = pending[~hopeless]
        if pending.size == 0:
            break
        ladder = LADDER if pending.size <= LADDER_MAX_STARTS else LADDER[:1]
        k = ladder.size
        trial_steps = (step[pending, None] * ladder[None, :]).ravel()  # (pending * k,)
        owner = np.repeat(pending, k)
        f_try, g_try = objective(x[owner] + trial_steps[:, None] * direction[owner], rows[owner])
        calls += 1
        ok = (np.isfinite(f_try) & (f_try <= f[owner] + ARMIJO_C1 * trial_steps * slope[owner])).reshape(
            -1, k
        )
        found = ok.any(axis=1)
        first = ok.argmax(axis=1)  # the largest acceptable step of each start
        pick = np.flatnonzero(found) * k + first[found]
        done = pending[found]
        step[done], f_new[done], g_new[done] = trial_steps[pick], f_try[pick], g_try[pick]
        pending = pending[~found]
        step[pending] *= ladder[-1] * 0.25
    failed[pending] = True
    return step, f_new, g_new, failed, calls

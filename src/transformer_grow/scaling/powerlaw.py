"""Single-variable laws ``L(x) = E + A / x^alpha`` for x = N, D or C (Kaplan et al. 2020, eq. 1.1-1.3
with an irreducible term as in Hoffmann et al. 2022), and the points each is fitted to.

They are fitted exactly like the Chinchilla form (one power term instead of two): Huber loss on
log-loss residuals, ``log L = LSE(e, a - alpha log x)``, batched L-BFGS from a start grid.

Which runs a one-variable law describes:

- ``L(N)``: the lowest-loss run of each distinct N (the best-trained model of each size);
- ``L(D)``: the lowest-loss run of each distinct D;
- ``L(C)``: the compute-efficient frontier: runs with lower loss than every run of smaller C
  (Kaplan's ``L(C_min)``, here over final losses only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transformer_grow.scaling.multistart import (
    MAX_ITER,
    MultiStartResult,
    fit_multistart,
    refit_weighted,
    start_grid,
)

MIN_POINTS = 4  # three parameters, and at least one residual degree of freedom


@dataclass(frozen=True)
class PowerLawConfig:
    huber_delta: float = 1e-3
    e_grid: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    a_grid: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    alpha_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    best_rtol: float = 1e-4
    max_iter: int = MAX_ITER
    objective: str = "huber"  # as ChinchillaConfig.objective
    project: bool = True

    def starts(self) -> np.ndarray:
        return start_grid([self.e_grid, self.a_grid, self.alpha_grid])


@dataclass(frozen=True)
class PowerLawParams:
    """``L(x) = E + A / x^alpha``; fields may be floats or equal-shape arrays (bootstrap samples)."""

    E: float | np.ndarray
    A: float | np.ndarray
    alpha: float | np.ndarray

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> PowerLawParams:
        theta = np.asarray(theta, dtype=float)
        with np.errstate(over="ignore"):
            return cls(E=np.exp(theta[..., 0]), A=np.exp(theta[..., 1]), alpha=theta[..., 2])

    def column(self) -> PowerLawParams:
        """Fields reshaped to (R, 1): evaluating at a row of inputs (1, G) then gives (R, G) curves."""
        return PowerLawParams(
            *(np.asarray(getattr(self, k), dtype=float)[:, None] for k in ("E", "A", "alpha"))
        )

    def loss(self, x):
        # A * x^-alpha in log space: a bootstrap resample with an extreme exponent saturates, never overflows
        log = np.log(np.maximum(self.A, 1e-300)) - self.alpha * np.log(x)
        return self.E + np.exp(np.clip(log, -700.0, 700.0))

    def as_dict(self) -> dict[str, float]:
        return {"E": float(self.E), "A": float(self.A), "alpha": float(self.alpha)}


@dataclass(frozen=True)
class PowerLawFit:
    variable: str  # "N", "D" or "C"
    params: PowerLawParams
    search: MultiStartResult
    x: np.ndarray
    loss: np.ndarray
    indices: np.ndarray  # rows of the input data the fit used
    config: PowerLawConfig

    @property
    def log_residuals(self) -> np.ndarray:
        """``log L_i - log L_hat_i`` of the fitted points."""
        return np.log(self.loss) - np.log(self.params.loss(self.x))

    @property
    def n_free(self) -> int:
        return 3

    def refit(self, weights: np.ndarray) -> PowerLawParams:
        """Parameters refitted under each weight row (R, len(x)), warm-started from this fit."""
        theta = refit_weighted(
            np.log(self.x),
            np.log(self.loss),
            weights,
            self.search.warm_starts,
            delta=self.config.huber_delta,
            kind=self.config.objective,
        )
        return PowerLawParams.from_theta(theta)


def lowest_loss_per_value(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the lowest-loss point of each distinct ``x`` (equal to 9 significant digits), sorted by x."""
    keys = np.array([f"{v:.9g}" for v in x])
    best: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in best or loss[i] < loss[best[key]]:
            best[key] = i
    return np.array(sorted(best.values(), key=lambda i: x[i]), dtype=int)


def compute_frontier(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Runs with a lower loss than every other run of less or equal compute, sorted by compute."""
    order = np.lexsort((loss, flops))  # by compute, then loss: of equal-compute runs only the best can enter
    frontier, best = [], np.inf
    for i in order:
        if loss[i] < best:
            frontier.append(int(i))
            best = loss[i]
    return np.array(frontier, dtype=int)


def fit_power_law(
    variable: str, x: np.ndarray, loss: np.ndarray, indices: np.ndarray, config: PowerLawConfig | None = None
) -> PowerLawFit:
    """Fit ``L = E + A / x^alpha`` to ``(x, loss)`` (the points at ``indices`` of the input data)."""
    config = config or PowerLawConfig()
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    search = fit_multistart(
        np.log(x)[:, None],
        np.log(loss),
        config.starts(),
        delta=config.huber_delta,
        kind=config.objective,
        project_starts=config.project,
        best_rtol=config.best_rtol,
        max_iter=config.max_iter,
        n_polish=0,  # the batched L-BFGS result as is: three parameters, 150 starts
    )
    return PowerLawFit(variable, PowerLawParams.from_theta(search.theta), search, x, loss, indices, config)


def fit_single_variable_laws(
    n_params: np.ndarray,
    tokens: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    config: PowerLawConfig | None = None,
    variables: tuple[str, ...] = ("N", "D", "C"),
) -> tuple[dict[str, PowerLawFit], dict[str, str]]:
    """``L(N)``, ``L(D)``, ``L(C)`` (those in ``variables``) on their point sets; a law with fewer than 4
    points is skipped (reason given)."""
    fits: dict[str, PowerLawFit] = {}
    skipped: dict[str, str] = {}
    for variable, x, points in (
        ("N", n_params, lowest_loss_per_value),
        ("D", tokens, lowest_loss_per_value),
        ("C", flops, compute_frontier),
    ):
        if variable not in variables:
            continue
        idx = points(x, loss)
        if idx.size < MIN_POINTS:
            skipped[variable] = f"only {idx.size} points (need {MIN_POINTS})"
            continue
        fits[variable] = fit_power_law(variable, x[idx], loss[idx], idx, config)
    return fits, skipped

"""Chinchilla's parametric loss ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022).

Fitted as in the paper's Approach 3 (section 3.3 and appendix D.2): Huber loss (``delta = 1e-3``) on
residuals of the log loss, the model written as ``LSE(a - alpha log N, b - beta log D, e)`` with
``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, L-BFGS from a grid of initialisations, best optimum
kept. The objective, its analytic gradient and the batched multi-start live in :mod:`.objective`,
:mod:`.lbfgs` and :mod:`.multistart`; by default the start grid is first projected by variable
projection (:mod:`.varpro`: for fixed ``alpha, beta`` the best ``E, A, B >= 0`` solve a small
non-negative least squares problem), which turns the 4,500 starts into their 25 distinct exponent pairs.
``objective`` chooses the loss on log residuals: ``huber`` (the paper's), ``huber-mle`` (Huber likelihood
with its scale fitted, Besiroglu et al. 2024), ``mse`` or ``mae``.

Derived quantities (paper, eq. 4 and appendix D.2), with compute ``C = 6 N D``:
``G = (alpha A / (beta B))^(1 / (alpha + beta))``, ``N_opt(C) = G (C/6)^a``, ``D_opt(C) = G^-1 (C/6)^b``,
``a = beta / (alpha + beta)``, ``b = alpha / (alpha + beta)``.

:class:`ChinchillaParams` works elementwise on numpy arrays too: the bootstrap keeps one array per
parameter and gets the samples of every derived quantity from the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transformer_grow.errors import choice, require
from transformer_grow.scaling.multistart import (
    MAX_ITER,
    MultiStartResult,
    fit_multistart,
    refit_weighted,
    start_grid,
)
from transformer_grow.scaling.objective import OBJECTIVES

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.arange(lo, hi + step / 2, step), 10))


@dataclass(frozen=True)
class ChinchillaConfig:
    """How the Approach-3 fit searches. The default grid is the paper's: 5 x 6 x 5 x 6 x 5 = 4,500 starts."""

    huber_delta: float = 1e-3
    e_grid: tuple[float, ...] = _steps(-1.0, 1.0, 0.5)
    a_grid: tuple[float, ...] = _steps(0.0, 25.0, 5.0)
    alpha_grid: tuple[float, ...] = _steps(0.0, 2.0, 0.5)
    b_grid: tuple[float, ...] = _steps(0.0, 25.0, 5.0)
    beta_grid: tuple[float, ...] = _steps(0.0, 2.0, 0.5)
    best_rtol: float = 1e-4  # a start "reached the best optimum" if its objective is within this of it
    max_iter: int = MAX_ITER  # batched L-BFGS iterations per start
    objective: str = "huber"  # huber, huber-mle, mse or mae (see :mod:`.objective`)
    project: bool = True  # variable projection of the start grid (see :mod:`.varpro`)

    def __post_init__(self) -> None:
        require(self.huber_delta > 0, f"huber_delta={self.huber_delta} must be > 0")
        choice("objective", self.objective, OBJECTIVES)
        require(self.best_rtol >= 0, f"best_rtol={self.best_rtol} must be >= 0")
        require(self.max_iter >= 1, f"max_iter={self.max_iter} must be >= 1")
        for name in ("e_grid", "a_grid", "alpha_grid", "b_grid", "beta_grid"):
            require(len(getattr(self, name)) >= 1, f"{name} must list at least one value")

    @classmethod
    def reduced(cls, **overrides) -> ChinchillaConfig:
        """A 2 x 2 x 3 x 2 x 3 = 72-start grid spanning the same box (tests, quick looks)."""
        grids = {
            "e_grid": (-0.5, 0.5),
            "a_grid": (5.0, 15.0),
            "alpha_grid": (0.25, 0.75, 1.5),
            "b_grid": (5.0, 15.0),
            "beta_grid": (0.25, 0.75, 1.5),
        }
        return cls(**{**grids, **overrides})

    def starts(self) -> np.ndarray:
        """Raw start vectors ``[e, a, alpha, b, beta]``."""
        return start_grid([self.e_grid, self.a_grid, self.alpha_grid, self.b_grid, self.beta_grid])


@dataclass(frozen=True)
class ChinchillaParams:
    """``L(N, D) = E + A / N^alpha + B / D^beta``; fields may be floats or equal-shape arrays."""

    E: float | np.ndarray
    A: float | np.ndarray
    B: float | np.ndarray
    alpha: float | np.ndarray
    beta: float | np.ndarray

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> ChinchillaParams:
        """From raw log-space vectors ``[e, a, alpha, b, beta]`` (last axis)."""
        theta = np.asarray(theta, dtype=float)
        with np.errstate(over="ignore"):
            return cls(
                E=np.exp(theta[..., 0]),
                A=np.exp(theta[..., 1]),
                B=np.exp(theta[..., 3]),
                alpha=theta[..., 2],
                beta=theta[..., 4],
            )

    def column(self) -> ChinchillaParams:
        """Fields reshaped to (R, 1): evaluating at a row of inputs (1, G) then gives (R, G) curves."""
        return ChinchillaParams(
            *(np.asarray(getattr(self, name), dtype=float)[:, None] for name in PARAM_NAMES)
        )

    def loss(self, n_params, tokens):
        """Predicted loss at ``N`` parameters and ``D`` tokens."""
        return self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(tokens, self.beta)

    @property
    def a(self):
        """Exponent of ``N_opt proportional to C^a``."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self):
        """Exponent of ``D_opt proportional to C^b``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.power(self.alpha * self.A / (self.beta * self.B), 1.0 / (self.alpha + self.beta))

    def compute_optimal(self, flops):
        """``(N_opt, D_opt)`` minimising the loss at ``C = 6 N D = flops``."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self.G * np.power(flops / 6.0, self.a), np.power(flops / 6.0, self.b) / self.G

    def optimal_loss(self, flops):
        """Loss of the compute-optimal allocation of ``flops`` (``nan`` for a degenerate fit whose
        allocation is 0 or infinite, like :meth:`compute_optimal`'s)."""
        n_opt, d_opt = self.compute_optimal(flops)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self.loss(n_opt, d_opt)

    def tokens_per_param(self, flops):
        n_opt, d_opt = self.compute_optimal(flops)
        return d_opt / n_opt

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in PARAM_NAMES}


@dataclass(frozen=True)
class ChinchillaFit:
    """The best fit and the data and search that produced it."""

    params: ChinchillaParams
    search: MultiStartResult
    n_params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    config: ChinchillaConfig = field(default_factory=ChinchillaConfig)

    @property
    def log_inputs(self) -> np.ndarray:
        return np.stack([np.log(self.n_params), np.log(self.tokens)], axis=1)

    @property
    def log_residuals(self) -> np.ndarray:
        """``log L_i - log L_hat_i`` of every run (observed minus fitted)."""
        return np.log(self.loss) - np.log(self.params.loss(self.n_params, self.tokens))

    @property
    def n_free(self) -> int:
        return len(PARAM_NAMES)

    def refit(self, weights: np.ndarray) -> ChinchillaParams:
        """Parameters (arrays of length R) refitted under each weight row (R, n), warm-started."""
        theta = refit_weighted(
            self.log_inputs,
            np.log(self.loss),
            weights,
            self.search.warm_starts,
            delta=self.config.huber_delta,
            kind=self.config.objective,
        )
        return ChinchillaParams.from_theta(theta)


def fit_chinchilla(n_params, tokens, loss, config: ChinchillaConfig | None = None) -> ChinchillaFit:
    """Fit ``L(N, D)`` by Approach 3 from every start of ``config``'s grid; see the module docstring."""
    config = config or ChinchillaConfig()
    n_params, tokens, loss = (np.asarray(v, dtype=float) for v in (n_params, tokens, loss))
    log_x = np.stack([np.log(n_params), np.log(tokens)], axis=1)
    search = fit_multistart(
        log_x,
        np.log(loss),
        config.starts(),
        delta=config.huber_delta,
        kind=config.objective,
        project_starts=config.project,
        best_rtol=config.best_rtol,
        max_iter=config.max_iter,
    )
    return ChinchillaFit(ChinchillaParams.from_theta(search.theta), search, n_params, tokens, loss, config)

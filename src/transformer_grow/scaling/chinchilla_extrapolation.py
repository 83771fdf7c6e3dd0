"""Calibrated extrapolation intervals for the Chinchilla law ``L(N, D)`` beyond the fitted compute range.

The runs are grouped by compute budget (:func:`~.isoflop.group_budgets`). Leave-future-out backtests
(:mod:`.extrapolation`): for every ``k`` with at least ``min_fit_budgets`` budgets and ``MIN_POINTS`` runs
below it, the law is fitted (Approach 3, the same search) on the budgets ``<= k``, bootstrapped over
those runs, and every run of the budgets ``> k`` is predicted with the same prediction interval as
``tgrow scaling fit`` (the law's bootstrap samples plus the fit's resampled residuals, :mod:`.predict`).
The errors of these predictions, their uncalibrated spread and their distance beyond the fold's range
give the discrepancy (``var_pred = var_stat + tau^2 h(d)^2``) that widens a prediction of the full fit
beyond its own range.

Compute is measured in the data's own C (its ``flops`` column): a prediction at ``(N, D)`` sits at
``6 N D`` times the runs' median ``C / (6 N D)``, a compute-optimal row at its ``C``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transformer_grow.scaling.bootstrap import resample_counts
from transformer_grow.scaling.chinchilla import ChinchillaConfig, fit_chinchilla
from transformer_grow.scaling.data import MIN_POINTS
from transformer_grow.scaling.extrapolation import (
    INSIDE,
    Backtest,
    Discrepancy,
    coverage_table,
    decades_outside,
    discrepancy_below,
    fixed_draws,
    robust_sd,
    score_backtests,
)
from transformer_grow.scaling.isoflop import DEFAULT_RTOL, group_budgets
from transformer_grow.scaling.predict import predictive_log_samples, safe_log

CALIBRATION_SAMPLES = 2000  # predictive samples kept per held-out run


@dataclass(frozen=True)
class ChinchillaExtrapolation:
    """The fitted range, the backtests within it and the discrepancy they teach."""

    x_lo: float  # log10 C of the smallest and largest fitted budget
    x_hi: float
    flops_per_6nd: float  # median C / (6 N D) of the runs
    level: float
    budgets: int
    backtests: tuple[Backtest, ...]
    discrepancy: Discrepancy | None
    seconds: float
    draws: np.ndarray = field(repr=False)

    def decades(self, flops: float) -> float:
        """Decades of ``flops`` (the data's C) outside the fitted range."""
        return float(decades_outside(math.log10(flops), self.x_lo, self.x_hi))

    def point_flops(self, n_params: float, tokens: float) -> float:
        return 6.0 * n_params * tokens * self.flops_per_6nd

    def calibrated(self, mean_samples, residuals, n_free: int, flops: float, seed: int = 0) -> list[float] | None:
        """Calibrated prediction interval of a new run's loss at compute ``flops`` from the law's bootstrap
        samples there (R,): :func:`.predict.predictive_log_samples` plus the discrepancy; None when no
        interval can be formed or no discrepancy was learnt. Inside the fitted range: the plain interval."""
        samples = predictive_log_samples(safe_log(mean_samples)[:, None], residuals, n_free, seed)
        if samples is None or self.discrepancy is None:
            return None
        lo, hi = self.discrepancy.interval(samples[:, 0], self.decades(flops), self.x_hi - self.x_lo, self.level,
                                           self.draws)
        return [math.exp(lo), math.exp(hi)]

    def leave_future_out(self) -> dict[str, Any]:
        """Honest coverage of the backtests: each fold calibrated only by the budgets at or below its top."""
        rows = score_backtests(self.backtests, self.level, self.draws)
        return {"level": self.level, "rows": len(rows), "coverage": coverage_table(rows)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "leave-future-out backtests (fit the budgets <= k, predict every run above), discrepancy "
                      "var_stat + tau^2 h(d)^2 with h = d (linear) or d (d + w) (curvature), tau integrated over its "
                      "half-Cauchy posterior, shapes weighted by marginal likelihood",
            "fitted_flops": [10.0**self.x_lo, 10.0**self.x_hi], "budgets": self.budgets,
            "flops_per_6nd": self.flops_per_6nd, "folds": len({b.fit_budgets for b in self.backtests}),
            "discrepancy": self.discrepancy.as_dict() if self.discrepancy else None,
            "leave_future_out": self.leave_future_out(), "seconds": self.seconds,
        }


def fit_chinchilla_extrapolation(n_params, tokens, flops, loss, config: ChinchillaConfig | None = None, *,
                                 rtol: float = DEFAULT_RTOL, n_bootstrap: int = 100, level: float = 0.95,
                                 seed: int = 0, min_fit_budgets: int = 2) -> ChinchillaExtrapolation:
    """Backtests of the Chinchilla law over budgets and the discrepancy they give (module docstring)."""
    t0 = time.perf_counter()
    config = config or ChinchillaConfig()
    n_params, tokens, flops, loss = (np.asarray(v, dtype=float) for v in (n_params, tokens, flops, loss))
    x = np.log10(flops)
    groups = group_budgets(flops, rtol)
    draws = fixed_draws([seed, 31], CALIBRATION_SAMPLES)
    rng = np.random.default_rng([seed, 37])
    backtests = []
    for k in range(min_fit_budgets, len(groups)):
        fit_idx = np.concatenate(groups[:k])
        out_idx = np.concatenate(groups[k:])
        if fit_idx.size < MIN_POINTS:
            continue
        fit = fit_chinchilla(n_params[fit_idx], tokens[fit_idx], loss[fit_idx], config)
        boot = fit.refit(resample_counts(fit_idx.size, n_bootstrap, rng)).column()
        log_mean = safe_log(boot.loss(n_params[out_idx][None, :], tokens[out_idx][None, :]))
        samples = predictive_log_samples(log_mean, fit.log_residuals, fit.n_free, seed)
        if samples is None:
            continue
        keep = rng.choice(samples.shape[0], size=min(CALIBRATION_SAMPLES, samples.shape[0]), replace=False)
        samples = samples[keep]
        predicted = np.log(fit.params.loss(n_params[out_idx], tokens[out_idx]))
        lo, hi = float(x[fit_idx].min()), float(x[fit_idx].max())
        sds = robust_sd(samples, axis=0)
        for j, i in enumerate(out_idx):
            if not (np.isfinite(predicted[j]) and np.all(np.isfinite(samples[:, j]))):
                continue
            backtests.append(Backtest(fit_lo=lo, fit_top=hi, fit_budgets=k, x=float(x[i]),
                                      observed=float(np.log(loss[i])), predicted=float(predicted[j]),
                                      sd=float(sds[j]), decades=float(decades_outside(x[i], lo, hi)),
                                      samples=samples[:, j].copy()))
    discrepancy = discrepancy_below(backtests) if backtests else None
    ratio = float(np.median(flops / (6.0 * n_params * tokens)))
    return ChinchillaExtrapolation(float(x.min()), float(x.max()), ratio, level, len(groups), tuple(backtests),
                                   discrepancy, time.perf_counter() - t0, draws)


def needs_calibration(flops, n_params, tokens, points, budgets) -> bool:
    """Whether a requested prediction (``points``: (N, D) pairs; ``budgets``: compute-optimal rows' C) lies
    beyond the runs' compute range."""
    flops, n_params, tokens = (np.asarray(v, dtype=float) for v in (flops, n_params, tokens))
    lo, hi = float(np.log10(flops.min())), float(np.log10(flops.max()))
    ratio = float(np.median(flops / (6.0 * n_params * tokens)))
    where = [6.0 * n * d * ratio for n, d in points] + list(budgets)
    return any(decades_outside(math.log10(c), lo, hi) > INSIDE for c in where)

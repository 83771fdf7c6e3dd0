"""Uncertainty of the fits: the bootstrap over runs, and leave-one-out validation.

Bootstrap (Efron & Tibshirani 1993, percentile intervals): ``R`` resamples of the runs with
replacement, drawn from a seeded generator, are represented as multiplicity weights, so every
resample is refitted by the same weighted objective, all at once (:func:`.multistart.refit_weighted`),
each from the best distinct optima of the full fit (not from the full start grid). The samples of every
parameter and every derived quantity come from the same resamples; an interval is the pair of
``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the finite samples.

The Chinchilla fit and the IsoFLOP analysis are resampled over runs (the same resamples); each
single-variable law is resampled over its own points (the best run per N or D, or the frontier).
Only the fits that were requested are refitted, and the time each took is kept (``seconds_by_fit``).
Prediction intervals for new runs add the residual noise to these samples (:mod:`.predict`).

Leave-one-out: every run is predicted by the Chinchilla law fitted to all the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from transformer_grow.scaling.chinchilla import ChinchillaFit, ChinchillaParams
from transformer_grow.scaling.data import ScalingData
from transformer_grow.scaling.isoflop import DEFAULT_RTOL, fit_isoflop, group_budgets
from transformer_grow.scaling.powerlaw import PowerLawFit, PowerLawParams


def interval(samples, level: float) -> list[float] | None:
    """Percentile interval of the finite ``samples``; None when fewer than two are finite."""
    samples = np.asarray(samples, dtype=float).ravel()
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    lo, hi = np.percentile(samples, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return [float(lo), float(hi)]


def resample_counts(n_items: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) multiplicities of ``n_items`` drawn ``n_items`` times with replacement, per resample."""
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_resamples).astype(float)


@dataclass(frozen=True)
class BootstrapResult:
    n_resamples: int
    level: float
    seed: int
    chinchilla: ChinchillaParams | None  # arrays of length R; NaN where a refit failed; None: not requested
    single: dict[str, PowerLawParams]  # arrays of length R
    isoflop: dict[str, np.ndarray] | None  # "a", "k_n", "b", "k_d": (R,), NaN where < 2 budgets survived
    seconds_by_fit: dict[str, float]
    seconds: float

    @property
    def chinchilla_seconds(self) -> float:
        return self.seconds_by_fit.get("chinchilla", 0.0)

    @property
    def seconds_per_resample(self) -> float:
        """Chinchilla refit time per resample (the dominant cost)."""
        return self.chinchilla_seconds / max(self.n_resamples, 1)

    @property
    def n_failed(self) -> int:
        if self.chinchilla is None:
            return 0
        return int(np.sum(~np.isfinite(np.asarray(self.chinchilla.E))))

    def interval(self, samples) -> list[float] | None:
        return interval(samples, self.level)


def run_bootstrap(
    data: ScalingData,
    chinchilla: ChinchillaFit | None,
    single: dict[str, PowerLawFit],
    *,
    n_resamples: int,
    level: float = 0.95,
    seed: int = 0,
    isoflop: bool = True,
    isoflop_rtol: float = DEFAULT_RTOL,
) -> BootstrapResult:
    """Bootstrap the given fits ``n_resamples`` times (see the module docstring); ``None`` / ``{}`` /
    ``isoflop=False`` leave a fit out."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    counts = resample_counts(len(data), n_resamples, rng)
    seconds: dict[str, float] = {}
    chin_samples = None
    if chinchilla is not None:
        t = time.perf_counter()
        chin_samples = chinchilla.refit(counts)
        seconds["chinchilla"] = time.perf_counter() - t

    single_samples = {}
    for variable, fit in single.items():
        t = time.perf_counter()
        single_samples[variable] = fit.refit(resample_counts(fit.x.size, n_resamples, rng))
        seconds[f"L({variable})"] = time.perf_counter() - t

    iso_samples = None
    if isoflop:
        t = time.perf_counter()
        groups = group_budgets(data.flops, isoflop_rtol)
        iso_samples = {name: np.full(n_resamples, np.nan) for name in ("a", "k_n", "b", "k_d")}
        for r in range(n_resamples):
            result = fit_isoflop(
                data.n_params, data.tokens, data.flops, data.loss, counts=counts[r], groups=groups
            )
            if result.a is not None:
                for name in iso_samples:
                    iso_samples[name][r] = getattr(result, name)
        seconds["isoflop"] = time.perf_counter() - t
    return BootstrapResult(
        n_resamples=n_resamples,
        level=level,
        seed=seed,
        chinchilla=chin_samples,
        single=single_samples,
        isoflop=iso_samples,
        seconds_by_fit=seconds,
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class LeaveOneOut:
    """Every run predicted by the law fitted to the others."""

    predicted: np.ndarray
    observed: np.ndarray
    labels: list[str]
    seconds: float

    @property
    def log_errors(self) -> np.ndarray:
        return np.log(self.predicted) - np.log(self.observed)

    @property
    def relative_errors(self) -> np.ndarray:
        return np.abs(self.predicted - self.observed) / self.observed

    @property
    def rmse_log_loss(self) -> float:
        return float(np.sqrt(np.mean(self.log_errors**2)))

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean(self.relative_errors))

    @property
    def max_rel_error(self) -> float:
        return float(np.max(self.relative_errors))

    @property
    def worst(self) -> str:
        return self.labels[int(np.argmax(self.relative_errors))]

    def as_dict(self) -> dict:
        return {
            "rmse_log_loss": self.rmse_log_loss,
            "mean_rel_error": self.mean_rel_error,
            "max_rel_error": self.max_rel_error,
            "worst_run": self.worst,
            "seconds": self.seconds,
            "points": [
                {"run": label, "observed": float(o), "predicted": float(p)}
                for label, o, p in zip(self.labels, self.observed, self.predicted)
            ],
        }


def leave_one_out(fit: ChinchillaFit, labels: list[str]) -> LeaveOneOut:
    """Refit without each run in turn (warm-started, all folds at once) and predict it."""
    t0 = time.perf_counter()
    n = fit.loss.size
    params = fit.refit(1.0 - np.eye(n))
    predicted = np.asarray(params.loss(fit.n_params, fit.tokens), dtype=float)
    return LeaveOneOut(predicted, fit.loss.copy(), list(labels), time.perf_counter() - t0)

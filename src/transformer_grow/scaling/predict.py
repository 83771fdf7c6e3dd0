"""Prediction intervals for new runs: parameter uncertainty plus the runs' own noise.

A bootstrap band of the fitted curve says where the *mean* loss may lie; a new run also scatters
around that mean as much as the fitted runs did. For a new run at ``x`` we therefore sample

    log L_new = log L_hat_r(x) + eps,

with ``L_hat_r`` the law refitted on bootstrap resample ``r`` (pairs bootstrap, :mod:`.bootstrap`) and
``eps`` drawn from the fit's log residuals, centred on their median and inflated by ``sqrt(n / (n - p))``
for the ``p`` fitted parameters (the residuals of a fit are smaller than the noise; Davison & Hinkley
1997, "Bootstrap Methods and their Application", section 6.3.3, prediction from a bootstrap of pairs
combined with resampled residuals). The interval is the pair of percentiles of these samples. Drawing
the residuals from the data, not from a normal law, keeps heavy tails and outliers in the interval.

:func:`standard_error` is the standard deviation of bootstrap samples (Efron & Tibshirani 1993, eq. 6.6).
"""

from __future__ import annotations

import numpy as np

MAX_SAMPLES = 20_000  # predictive samples per point: bootstrap samples x residual draws


def noise_draws(residuals: np.ndarray, n_free: int) -> np.ndarray:
    """Centred, degrees-of-freedom-inflated residuals to add to predictions (module docstring)."""
    residuals = np.asarray(residuals, dtype=float)
    residuals = residuals[np.isfinite(residuals)]
    n = residuals.size
    if n == 0:
        return np.zeros(1)
    inflation = np.sqrt(n / (n - n_free)) if n > n_free else 1.0
    return (residuals - np.median(residuals)) * inflation


def predictive_log_samples(log_mean_samples, residuals, n_free: int, seed: int = 0) -> np.ndarray | None:
    """(S, G) samples of a new observation's log loss at each of G points: every usable bootstrap row of
    ``log_mean_samples`` (R, G) plus residual draws (module docstring); None with fewer than two usable rows."""
    log_mean = np.atleast_2d(np.asarray(log_mean_samples, dtype=float))
    log_mean = log_mean[np.all(np.isfinite(log_mean), axis=1)]
    n_points = log_mean.shape[1]
    if log_mean.shape[0] < 2:
        return None
    eps = noise_draws(residuals, n_free)
    rng = np.random.default_rng(seed)
    per_sample = max(1, min(eps.size, MAX_SAMPLES // log_mean.shape[0]))
    draws = eps if per_sample == eps.size else rng.choice(eps, size=(log_mean.shape[0], per_sample))
    draws = np.broadcast_to(draws, (log_mean.shape[0], per_sample))
    return (log_mean[:, None, :] + draws[:, :, None]).reshape(-1, n_points)


def prediction_interval(log_mean_samples, residuals, n_free: int, level: float, seed: int = 0):
    """Percentile interval ``(lo, hi)`` of a new observation's loss at each point.

    ``log_mean_samples`` (R, G): log of the law's prediction under each bootstrap sample (R) at each
    point (G); rows with a non-finite value are ignored. Returns arrays of length G (NaN when fewer than
    two samples are usable).
    """
    samples = predictive_log_samples(log_mean_samples, residuals, n_free, seed)
    if samples is None:
        nan = np.full(np.atleast_2d(np.asarray(log_mean_samples)).shape[1], np.nan)
        return nan, nan.copy()
    lo, hi = np.percentile(samples, [50.0 * (1.0 - level), 50.0 * (1.0 + level)], axis=0)
    return np.exp(lo), np.exp(hi)


def safe_log(values) -> np.ndarray:
    """``log`` of positive finite values, NaN elsewhere (no RuntimeWarning for a degenerate sample)."""
    values = np.asarray(values, dtype=float)
    good = np.isfinite(values) & (values > 0)
    return np.log(np.where(good, values, 1.0)) + np.where(good, 0.0, np.nan)


def standard_error(samples) -> float | None:
    """Standard deviation of the finite bootstrap samples; None with fewer than two."""
    samples = np.asarray(samples, dtype=float).ravel()
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    scale = float(np.max(np.abs(samples)))
    if scale == 0.0:
        return 0.0
    return scale * float(np.std(samples / scale, ddof=1))  # scaled: saturated samples (~1e304) do not overflow

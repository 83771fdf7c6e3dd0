"""Extrapolation intervals calibrated by leave-future-out backtests.

A law fitted on compute budgets up to ``C_max`` has a statistical interval (bootstrap and residual
noise) that is right only if the law's *form* is right. Beyond the fitted range a wrong form shows up
as an error that grows with the distance, and no resampling of the fitted runs sees it. We add a
discrepancy term (Kennedy & O'Hagan 2001, "Bayesian calibration of computer models") whose scale grows
with the distance beyond the fitted range:

    var_pred(x) = var_stat(x) + tau^2 h(d(x))^2,

``x = log10 C``, ``d(x)`` the decades outside the fitted range (0 inside it), ``w`` the fitted range's
width in decades and ``var_stat`` the law's own (uncalibrated) predictive variance. Two shapes of ``h``:

- ``linear``: ``h = d``, an error in the fitted slope that persists;
- ``curvature``: ``h = d (d + w)``, an unmodelled constant curvature in ``log C``: a straight line
  fitted over a range of width ``w`` misses ``kappa (x - x_c)^2`` by ``kappa (d^2 + w d + w^2 / 6)`` at ``d``
  beyond the range's top (continuous uniform design); the ``w^2 / 6`` part is already a misfit inside the
  range, which the law's own residual noise carries.

``tau`` is learnt from *leave-future-out* backtests (evaluation on a rolling forecasting origin,
Tashman 2000, "Out-of-sample tests of forecasting accuracy"): fit on the budgets ``<= k``, predict
every budget ``> k``, for every ``k`` with enough budgets below it. Each backtest gives an error ``e``
(observed minus predicted, log scale), the uncalibrated predictive standard deviation ``s`` of that
prediction, its distance ``d`` and its fold's width ``w``; the likelihood is

    e ~ N(0, s^2 + tau^2 h(d, w)^2),

errors that share a fold or a target treated as independent (a composite likelihood; Varin, Reid &
Firth 2011, "An overview of composite likelihood methods"). A handful of backtests pin ``tau`` down
poorly, and plugging in its maximum-likelihood value (often 0) gives intervals that under-cover, so
``tau`` is integrated over its posterior under a half-Cauchy prior of scale ``TAU_SCALE`` (Gelman 2006,
"Prior distributions for variance parameters in hierarchical models"), on a grid, and the two shapes
are averaged with weights proportional to their marginal likelihoods (Bayesian model averaging;
Hoeting, Madigan, Raftery & Volinsky 1999). The maximum-likelihood ``tau`` of each shape is reported
alongside (:func:`fit_tau`).

A calibrated interval adds ``tau_r h_r(d, w) z_r`` to the law's ``R`` predictive samples (``tau_r`` and
the shape drawn from the posterior by fixed uniforms, ``z_r`` standard normal and fixed, so bands are
smooth in ``x``) and takes the same percentiles (:meth:`Discrepancy.interval`). Inside the fitted range
it is the uncalibrated interval.

*Honest* coverage: the ``tau`` used for a held-out budget comes only from budgets below it: a fold that
fits budgets ``<= k`` is calibrated by the backtests whose fits *and* targets lie at or below ``k``
(:func:`discrepancy_below`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INSIDE = 1e-9  # distances below this (decades) are inside the fitted range (floating-point slack of log10)
DISTANCE_BINS = (0.5, 1.0, 2.0)  # decades beyond the fitted range reported in coverage tables
TAU_SCALE = 0.5  # half-Cauchy prior scale of tau (log units per decade, or per decade^2 for the curvature shape)
SHAPES = ("linear", "curvature")
_GRID = np.concatenate([[0.0], np.geomspace(1e-5, 50.0, 600)])
_GRID_STEP = np.gradient(_GRID)  # quadrature weights of the uneven grid


def decades_outside(x, lo: float, hi: float) -> np.ndarray:
    """Decades (``x`` in log10 units) outside ``[lo, hi]``: ``x - hi`` above, ``lo - x`` below, else 0."""
    x = np.asarray(x, dtype=float)
    d = np.maximum(x - hi, 0.0) + np.maximum(lo - x, 0.0)
    return np.where(d > INSIDE, d, 0.0)


def shape_value(shape: str, decades, width) -> np.ndarray:
    """``h(d, w)`` of a discrepancy shape (module docstring)."""
    d = np.asarray(decades, dtype=float)
    return d if shape == "linear" else d * (d + np.asarray(width, dtype=float))


def robust_sd(samples, axis: int = -1) -> np.ndarray:
    """Half the width of the central 68.27% interval of ``samples`` (the sd of a normal; robust to tails)."""
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [15.865, 84.135], axis=axis)
    return 0.5 * (hi - lo)


def _log_likelihood(tau: np.ndarray, errors: np.ndarray, var: np.ndarray, h: np.ndarray) -> np.ndarray:
    total = var[None, :] + (tau**2)[:, None] * (h**2)[None, :]
    return -0.5 * np.sum(np.log(2.0 * np.pi * total) + errors[None, :] ** 2 / total, axis=1)


def _clean(errors, sds, h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    errors, sds, h = (np.asarray(v, dtype=float).ravel() for v in (errors, sds, h))
    keep = np.isfinite(errors) & np.isfinite(sds) & np.isfinite(h)
    return errors[keep], np.maximum(sds[keep] ** 2, 1e-12), h[keep]


def fit_tau(errors, sds, h) -> float | None:
    """Maximum-likelihood ``tau`` of ``e ~ N(0, s^2 + tau^2 h^2)``; None without any backtest beyond its
    fitted range. A grid over ``tau`` (0 included), then golden-section refinement."""
    errors, var, h = _clean(errors, sds, h)
    if not np.any(h > INSIDE):
        return None
    ll = _log_likelihood(_GRID, errors, var, h)
    best = int(np.argmax(ll))
    if best == 0:
        return 0.0
    lo, hi = _GRID[best - 1], _GRID[min(best + 1, _GRID.size - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = _log_likelihood(np.array([a, b]), errors, var, h)
        lo, hi = (lo, b) if fa > fb else (a, hi)
    return float(0.5 * (lo + hi))


@dataclass(frozen=True)
class Backtest:
    """One held-out prediction of a leave-future-out backtest (log scale)."""

    fit_lo: float  # log10 C of the fold's smallest fitted budget
    fit_top: float  # ... and of its largest
    fit_budgets: int  # budgets in the fold's fit
    x: float  # log10 C of the held-out point
    observed: float
    predicted: float  # the fold's point prediction
    sd: float  # uncalibrated predictive standard deviation of the prediction
    decades: float  # decades beyond the fold's fitted range
    samples: np.ndarray  # (R,) uncalibrated predictive samples (log scale)

    @property
    def error(self) -> float:
        return self.observed - self.predicted

    @property
    def width(self) -> float:
        return self.fit_top - self.fit_lo


@dataclass(frozen=True)
class Discrepancy:
    """The posterior of ``tau`` for both shapes and their weights, learnt from backtests (module docstring)."""

    n_backtests: int
    n_beyond: int  # backtests beyond their fold's range (the ones that inform tau)
    weights: dict[str, float]  # posterior probability of each shape
    posterior: dict[str, np.ndarray]  # posterior probabilities of tau on _GRID, per shape
    tau_ml: dict[str, float]

    @classmethod
    def from_backtests(cls, backtests: Iterable[Backtest], scale: float | None = None) -> Discrepancy | None:
        """None when no backtest lies beyond its fold's fitted range."""
        chosen = list(backtests)
        errors = np.array([b.error for b in chosen])
        sds = np.array([b.sd for b in chosen])
        d = np.array([b.decades for b in chosen])
        w = np.array([b.width for b in chosen])
        if not np.any(d > INSIDE):
            return None
        import os
        if scale is None:
            f = os.environ.get("TAUS")
            scale = TAU_SCALE if f is None else float(f) * float(np.median(sds))
        log_prior = np.log(2.0 / (np.pi * scale)) - np.log1p((_GRID / scale) ** 2)
        evidence, posterior, tau_ml = {}, {}, {}
        for shape in SHAPES:
            e, var, h = _clean(errors, sds, shape_value(shape, d, w))
            log_post = _log_likelihood(_GRID, e, var, h) + log_prior
            top = float(log_post.max())
            mass = np.exp(log_post - top) * _GRID_STEP
            evidence[shape] = top + float(np.log(mass.sum()))
            posterior[shape] = mass / mass.sum()
            tau_ml[shape] = fit_tau(e, np.sqrt(var), h) or 0.0
        top = max(evidence.values())
        raw = {s: float(np.exp(v - top)) for s, v in evidence.items()}
        weights = {s: v / sum(raw.values()) for s, v in raw.items()}
        return cls(len(chosen), int(np.sum(d > INSIDE)), weights, posterior, tau_ml)

    def tau_quantile(self, shape: str, q: float) -> float:
        cdf = np.cumsum(self.posterior[shape])
        return float(_GRID[min(int(np.searchsorted(cdf, q)), _GRID.size - 1)])

    def extra(self, decades: float, width: float, draws: np.ndarray) -> np.ndarray:
        """(R,) discrepancy deviations ``tau_r h_r(d, w) z_r``; ``draws`` (3, R): uniforms for tau and for the
        shape, and standard normals (fixed by the caller)."""
        u_tau, u_shape, z = draws
        use_linear = u_shape < self.weights["linear"]
        tau = {s: _GRID[np.minimum(np.searchsorted(np.cumsum(self.posterior[s]), u_tau), _GRID.size - 1)]
               for s in SHAPES}
        scale = np.where(use_linear, tau["linear"] * shape_value("linear", decades, width),
                         tau["curvature"] * shape_value("curvature", decades, width))
        return scale * z

    def interval(self, samples, decades: float, width: float, level: float, draws) -> tuple[float, float]:
        """Percentile interval of the calibrated samples (the plain one inside the fitted range)."""
        samples = np.asarray(samples, dtype=float)
        if decades > INSIDE:
            samples = samples + np.resize(self.extra(decades, width, draws), samples.size)
        lo, hi = np.percentile(samples, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
        return float(lo), float(hi)

    def as_dict(self) -> dict[str, Any]:
        return {"backtests": self.n_backtests, "beyond_range": self.n_beyond,
                "shape_weights": dict(self.weights), "tau_ml": dict(self.tau_ml),
                "tau_median": {s: self.tau_quantile(s, 0.5) for s in SHAPES},
                "tau_90": {s: self.tau_quantile(s, 0.9) for s in SHAPES}}

    def describe(self) -> str:
        m = {s: self.tau_quantile(s, 0.5) for s in SHAPES}
        return (f"tau (posterior median, ML) linear {m['linear']:.3g}, {self.tau_ml['linear']:.3g} per decade, "
                f"weight {self.weights['linear']:.2f}; curvature {m['curvature']:.3g}, {self.tau_ml['curvature']:.3g} "
                f"per decade^2, weight {self.weights['curvature']:.2f}; from {self.n_beyond} backtests")


def fixed_draws(seed, n: int) -> np.ndarray:
    """(3, n): uniforms for tau and the shape, standard normals; the same for every point of a law."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(size=n), rng.uniform(size=n), rng.standard_normal(n)])


def discrepancy_below(backtests: Sequence[Backtest], top: float | None = None) -> Discrepancy | None:
    """The discrepancy learnt from the backtests whose targets lie at or below ``top`` (all when None)."""
    return Discrepancy.from_backtests([b for b in backtests if top is None or b.x <= top + INSIDE])


def interval_of(samples, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def score_backtests(backtests: Sequence[Backtest], level: float, draws: np.ndarray) -> list[dict[str, Any]]:
    """Every backtest with its uncalibrated interval and, honestly, its calibrated one: the discrepancy of a
    fold comes from the backtests at or below the fold's top budget (log scale; ``held`` flags)."""
    rows = []
    cache: dict[float, Discrepancy | None] = {}
    for b in backtests:
        if b.fit_top not in cache:
            cache[b.fit_top] = discrepancy_below(backtests, b.fit_top)
        disc = cache[b.fit_top]
        lo, hi = interval_of(b.samples, level)
        row: dict[str, Any] = {"fit_budgets": b.fit_budgets, "fit_top": b.fit_top, "x": b.x, "decades": b.decades,
                               "observed": b.observed, "predicted": b.predicted, "low_uncalibrated": lo,
                               "high_uncalibrated": hi, "held": bool(lo <= b.observed <= hi), "low": None,
                               "high": None, "held_calibrated": None}
        if disc is not None:
            clo, chi = disc.interval(b.samples, b.decades, b.width, level, draws)
            row.update(low=clo, high=chi, held_calibrated=bool(clo <= b.observed <= chi))
        rows.append(row)
    return rows


def coverage_table(rows: Sequence[dict], bins: Sequence[float] = DISTANCE_BINS) -> list[dict]:
    """Coverage of held-out predictions by distance beyond the fitted range.

    ``rows``: dicts with ``decades``, ``held`` (uncalibrated) and ``held_calibrated`` (None where no
    discrepancy could be learnt). One entry per bin ``(previous edge, edge]`` plus ``inside`` (d = 0),
    beyond the last edge, and ``all beyond``; each with ``n``, ``uncalibrated``, ``n_calibrated`` and
    ``calibrated`` (shares of intervals that held).
    """
    edges = [0.0, *bins, np.inf]
    groups = [("inside", [r for r in rows if r["decades"] <= INSIDE])]
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f"({lo:g}, {hi:g}] decades" if np.isfinite(hi) else f"> {lo:g} decades"
        groups.append((label, [r for r in rows if max(lo, INSIDE) < r["decades"] <= hi]))
    groups.append(("all beyond", [r for r in rows if r["decades"] > INSIDE]))
    table = []
    for label, chosen in groups:
        calibrated = [r["held_calibrated"] for r in chosen if r.get("held_calibrated") is not None]
        table.append({"range": label, "n": len(chosen),
                      "uncalibrated": float(np.mean([r["held"] for r in chosen])) if chosen else None,
                      "n_calibrated": len(calibrated),
                      "calibrated": float(np.mean(calibrated)) if calibrated else None})
    return table

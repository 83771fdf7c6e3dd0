"""Coverage of extrapolation intervals on synthetic data from misspecified laws (tests and the benchmark).

Multiplier law: a synthetic ladder (``LADDER_BUDGETS``: six rungs half a decade apart, as ``tgrow scaling
ladder``'s default) whose true log multiplier is *not* linear in ``log10 C``:

- ``curved``: ``a + b (x - x_c) + c (x - x_c)^2``, ``c ~ N(0, 0.06^2)`` (curves in log C);
- ``saturating``: ``a + s (1 - exp(-(x - x_c) / L))`` (a gain that levels off or a loss that deepens);
- ``kink``: the slope changes by ``N(0, 0.15^2)`` at a random compute within or beyond the rungs;
- ``linear``: the fitted form is right (control).

Each rung adds a rung-level deviation ``N(0, rung_sd^2)`` and every seed ``N(0, seed_sd^2)``. The law is
fitted to all rungs and predicts a new rung's true multiplier ``d`` decades beyond the top one.

Chinchilla law: runs drawn from ``L = E + A/N^alpha + B/D^beta + F (C / C_0)^-gamma`` (the Chinchilla
form plus a slowly vanishing term, ``F`` and ``gamma`` random), fitted with the plain form; the new run
lies ``d`` decades beyond the largest budget at the plain law's compute-optimal allocation.

Coverage is the share of datasets whose interval holds the truth; nominal 90%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from transformer_grow.scaling.chinchilla import ChinchillaConfig, fit_chinchilla
from transformer_grow.scaling.chinchilla_extrapolation import fit_chinchilla_extrapolation
from transformer_grow.scaling.bootstrap import resample_counts
from transformer_grow.scaling.extrapolation import DISTANCE_BINS
from transformer_grow.scaling.multiplier import MultiplierOptions, Rung, fit_multiplier_law
from transformer_grow.scaling.predict import prediction_interval, safe_log
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER

LADDER_BUDGETS = (5e9, 1.58e10, 5e10, 1.58e11, 5e11, 1.58e12)  # tgrow scaling ladder's default rungs
KINDS = ("curved", "saturating", "kink", "linear")


def synthetic_ladder(rng: np.random.Generator, kind: str = "curved", *, budgets: Sequence[float] = LADDER_BUDGETS,
                     seeds: int = 3, seed_sd: float = 0.08, rung_sd: float = 0.03, tokens_per_param=None,
                     ) -> tuple[list[Rung], Callable[[float], float]]:
    """Rungs of one synthetic ladder and its true mean log multiplier as a function of ``log10 C``."""
    x = np.log10(np.asarray(budgets, dtype=float))
    xc = float(x.mean())
    a, b = rng.normal(0.2, 0.2), rng.normal(0.0, 0.1)
    if kind == "curved":
        c = rng.normal(0.0, 0.06)

        def truth(v):
            return a + b * (v - xc) + c * (v - xc) ** 2
    elif kind == "saturating":
        s, scale = rng.normal(0.0, 0.4), rng.uniform(1.0, 3.0)

        def truth(v):
            return a + s * (1.0 - np.exp(-(v - xc) / scale))
    elif kind == "kink":
        at, change = rng.uniform(x[1], x[-1] + 1.0), rng.normal(0.0, 0.15)

        def truth(v):
            return a + b * (v - xc) + change * max(v - at, 0.0)
    elif kind == "linear":
        def truth(v):
            return a + b * (v - xc)
    else:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    rungs = []
    for i, (flops, xi) in enumerate(zip(budgets, x)):
        logs = truth(xi) + rng.normal(0.0, rung_sd) + rng.normal(0.0, seed_sd, seeds)
        tpp = None if tokens_per_param is None else float(tokens_per_param[i])
        rungs.append(Rung.from_multipliers(flops, np.exp(logs), tpp))
    return rungs, truth


def multiplier_coverage(n_datasets: int, kind: str = "curved", *, distances: Sequence[float] = DISTANCE_BINS,
                        options: MultiplierOptions | None = None, seed: int = 0, rung_sd: float = 0.03,
                        seed_sd: float = 0.08) -> dict[float, dict[str, float]]:
    """Per distance beyond the top rung: the share of ``n_datasets`` synthetic ladders whose uncalibrated
    and calibrated intervals hold a new rung's true multiplier (module docstring)."""
    options = options or MultiplierOptions(n_bootstrap=400)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    held = {d: {"uncalibrated": [], "calibrated": []} for d in distances}
    for _ in range(n_datasets):
        rungs, truth = synthetic_ladder(rng, kind, rung_sd=rung_sd, seed_sd=seed_sd)
        law = fit_multiplier_law("synthetic", rungs, options)
        top = math.log10(law.measured_range[1])
        for d in distances:
            p = law.predict(10.0 ** (top + d))
            m = math.exp(truth(top + d) + rng.normal(0.0, rung_sd))
            held[d]["uncalibrated"].append(p["low_uncalibrated"] <= m <= p["high_uncalibrated"])
            held[d]["calibrated"].append(p["low"] <= m <= p["high"])
    return {d: {k: float(np.mean(v)) for k, v in h.items()} for d, h in held.items()}


def _chinchilla_runs(rng: np.random.Generator, budgets: Sequence[float], sizes: int, noise: float, extra: float,
                     gamma: float, c0: float):
    p = CHINCHILLA_PAPER
    n, d, c, loss = [], [], [], []
    for flops in budgets:
        center = float(p.compute_optimal(flops)[0])
        for size in center * np.geomspace(1 / 4, 4, sizes):
            tokens = flops / (6.0 * size)
            value = float(p.loss(size, tokens)) + extra * (flops / c0) ** -gamma
            n.append(size), d.append(tokens), c.append(flops), loss.append(value * math.exp(rng.normal(0, noise)))
    return np.array(n), np.array(d), np.array(c), np.array(loss)


def chinchilla_coverage(n_datasets: int, *, distances: Sequence[float] = DISTANCE_BINS, level: float = 0.9,
                        budgets: Sequence[float] = tuple(np.geomspace(1e17, 1e20, 7)), sizes: int = 5,
                        noise: float = 0.01, n_bootstrap: int = 60, seed: int = 0,
                        config: ChinchillaConfig | None = None) -> dict[float, dict[str, float]]:
    """Per distance beyond the largest budget: the share of synthetic grids (Chinchilla plus a slowly vanishing
    term, fitted with the plain form) whose ``pi`` and calibrated ``pi`` hold a new run's loss."""
    config = config or ChinchillaConfig.reduced()
    rng = np.random.default_rng([seed, 99])
    held = {d: {"uncalibrated": [], "calibrated": []} for d in distances}
    top = max(budgets)
    for _ in range(n_datasets):
        extra, gamma = rng.uniform(0.1, 0.6), rng.uniform(0.05, 0.2)
        n, d, c, loss = _chinchilla_runs(rng, budgets, sizes, noise, extra, gamma, top)
        fit = fit_chinchilla(n, d, loss, config)
        boot = fit.refit(resample_counts(loss.size, n_bootstrap, rng)).column()
        calibration = fit_chinchilla_extrapolation(n, d, c, loss, config, n_bootstrap=n_bootstrap, level=level,
                                                   seed=int(rng.integers(1 << 30)))
        for dist in distances:
            flops = top * 10.0**dist
            n_new, d_new = (float(v) for v in CHINCHILLA_PAPER.compute_optimal(flops))
            truth = (float(CHINCHILLA_PAPER.loss(n_new, d_new)) + extra * (flops / top) ** -gamma) \
                * math.exp(rng.normal(0, noise))
            mean_samples = boot.loss(np.array([[n_new]]), np.array([[d_new]]))[:, 0]
            lo, hi = prediction_interval(safe_log(mean_samples)[:, None], fit.log_residuals, fit.n_free, level)
            held[dist]["uncalibrated"].append(bool(lo[0] <= truth <= hi[0]))
            pi = calibration.calibrated(mean_samples, fit.log_residuals, fit.n_free, flops)
            held[dist]["calibrated"].append(bool(pi is not None and pi[0] <= truth <= pi[1]))
    return {dd: {k: float(np.mean(v)) for k, v in h.items()} for dd, h in held.items()}

"""``fit.json`` of a :class:`~.analysis.ScalingAnalysis`, and :func:`write_report` (JSON, markdown, plots).

Uncertainty, all from the same bootstrap resamples (null when the bootstrap is off):

- ``ci``: percentile *confidence* interval at ``level`` of a parameter or of the mean law at a point;
- ``se``: bootstrap standard error (standard deviation of the samples);
- ``pi``: *prediction* interval of a new run's loss: the law's samples plus the fitted runs' residual
  noise (:mod:`.predict`). A 95% ``pi`` should contain about 95% of new runs; a ``ci`` is much narrower.
- ``pi_calibrated`` (Approach 3 rows and predictions beyond the runs' compute range, ``decades_beyond`` > 0):
  the ``pi`` widened by the discrepancy learnt from leave-future-out backtests over the compute budgets
  (:mod:`.chinchilla_extrapolation`); a ``pi`` alone under-covers there when the law's form is not exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transformer_grow.io import atomic_write_json, atomic_write_text
from transformer_grow.scaling.analysis import ScalingAnalysis
from transformer_grow.scaling.bootstrap import interval
from transformer_grow.scaling.chinchilla import PARAM_NAMES
from transformer_grow.scaling.extrapolation import decades_outside
from transformer_grow.scaling.isoflop import power_value
from transformer_grow.scaling.predict import prediction_interval, safe_log, standard_error
from transformer_grow.scaling.report_text import fit_markdown, short_summary

COMPUTE_OPTIMAL_FORMULA = (
    "C = 6 N D; G = (alpha A / (beta B))^(1/(alpha+beta)); N_opt = G (C/6)^a; D_opt = (C/6)^b / G; "
    "a = beta/(alpha+beta); b = alpha/(alpha+beta) (Hoffmann et al. 2022, Approach 3)"
)
__all__ = ["fit_markdown", "fit_summary", "short_summary", "write_report"]


class _Uncertainty:
    """Intervals and standard errors of one analysis (all None without a bootstrap)."""

    def __init__(self, analysis: ScalingAnalysis) -> None:
        self.boot = analysis.bootstrap
        self.level = analysis.options.level
        self.seed = analysis.options.seed
        self.extrapolation = analysis.extrapolation
        self.flops = analysis.data.flops
        data = analysis.data
        self.flops_per_6nd = float(np.median(data.flops / (6.0 * data.n_params * data.tokens)))

    def ci(self, samples) -> list[float] | None:
        return None if self.boot is None or samples is None else interval(samples, self.level)

    def se(self, samples) -> float | None:
        return None if self.boot is None or samples is None else standard_error(samples)

    def pi(self, mean_samples, fit) -> list[float] | None:
        """Prediction interval of a new run given the law's samples at one point and the fit's residuals."""
        if self.boot is None or mean_samples is None:
            return None
        lo, hi = prediction_interval(safe_log(mean_samples)[:, None], fit.log_residuals, fit.n_free, self.level,
                                     self.seed)
        return None if not np.isfinite(lo[0]) else [float(lo[0]), float(hi[0])]

    def pi_calibrated(self, mean_samples, fit, flops: float) -> list[float] | None:
        """The prediction interval widened by the learnt discrepancy at compute ``flops`` (None inside the
        fitted range, or without a bootstrap or calibration)."""
        if self.boot is None or mean_samples is None or self.extrapolation is None:
            return None
        if self.extrapolation.decades(flops) <= 0:
            return None
        return self.extrapolation.calibrated(mean_samples, fit.log_residuals, fit.n_free, flops, self.seed)

    def decades(self, flops: float) -> float:
        lo, hi = np.log10(self.flops.min()), np.log10(self.flops.max())
        return float(decades_outside(np.log10(flops), lo, hi))


def _approach3_row(analysis: ScalingAnalysis, u: _Uncertainty, flops: float) -> dict[str, Any]:
    fit = analysis.chinchilla
    params, samples = fit.params, (u.boot.chinchilla if u.boot else None)
    n_opt, d_opt = params.compute_optimal(flops)
    row = {"C": flops, "N_opt": float(n_opt), "D_opt": float(d_opt), "tokens_per_param": float(d_opt / n_opt),
           "loss": float(params.optimal_loss(flops)), "ci": {}, "se": {}, "pi": None}
    if samples is not None:
        s_n, s_d = samples.compute_optimal(flops)
        s_loss = samples.optimal_loss(flops)
        for name, s in (("N_opt", s_n), ("D_opt", s_d), ("tokens_per_param", s_d / s_n), ("loss", s_loss)):
            row["ci"][name], row["se"][name] = u.ci(s), u.se(s)
        row["pi"] = u.pi(s_loss, fit)
    row["decades_beyond"] = u.decades(flops)
    row["pi_calibrated"] = u.pi_calibrated(s_loss, fit, flops) if samples is not None else None
    return row


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top / bottom`` of positive, saturated power-law values, in log space (no overflow)."""
    return np.exp(np.clip(np.log(top) - np.log(bottom), -700.0, 700.0))


def _approach2_row(analysis: ScalingAnalysis, u: _Uncertainty, flops: float) -> dict[str, Any] | None:
    iso = analysis.isoflop
    if iso is None or iso.a is None:
        return None
    n_opt, d_opt = float(iso.n_opt(flops)), float(iso.d_opt(flops))
    row = {"C": flops, "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt, "ci": {}, "se": {},
           "extrapolated": bool(flops > max(p.flops for p in iso.profiles) * 1.5)}
    samples = u.boot.isoflop if u.boot else None
    if samples is not None:
        s_n = power_value(samples["k_n"], samples["a"], flops)
        s_d = power_value(samples["k_d"], samples["b"], flops)
        ratio = _ratio(s_d, s_n)  # D_opt / N_opt
        for name, s in (("N_opt", s_n), ("D_opt", s_d), ("tokens_per_param", ratio)):
            row["ci"][name], row["se"][name] = u.ci(s), u.se(s)
    return row


def _loss_c_row(analysis: ScalingAnalysis, u: _Uncertainty, flops: float) -> dict[str, Any] | None:
    law = analysis.single.get("C")
    if law is None:
        return None
    samples = u.boot.single.get("C") if u.boot else None
    s_loss = samples.loss(flops) if samples is not None else None
    return {"C": flops, "loss": float(law.params.loss(flops)), "ci": u.ci(s_loss), "se": u.se(s_loss),
            "pi": u.pi(s_loss, law) if s_loss is not None else None}


def _compute_optimal(analysis: ScalingAnalysis, u: _Uncertainty) -> dict[str, Any]:
    """Compute-optimal allocation at each reported budget: Approach 3, Approach 2 and the L(C) law."""
    result: dict[str, Any] = {"formula": COMPUTE_OPTIMAL_FORMULA, "at": []}
    if analysis.chinchilla is not None:
        params = analysis.chinchilla.params
        samples = u.boot.chinchilla if u.boot else None
        result.update({name: float(getattr(params, name)) for name in ("a", "b", "G")})
        result["ci"] = {name: u.ci(getattr(samples, name) if samples else None) for name in ("a", "b", "G")}
        result["se"] = {name: u.se(getattr(samples, name) if samples else None) for name in ("a", "b", "G")}
    for flops in analysis.report_flops:
        row = _approach3_row(analysis, u, flops) if analysis.chinchilla is not None else {"C": flops}
        row["approach2"] = _approach2_row(analysis, u, flops)
        row["loss_c_law"] = _loss_c_row(analysis, u, flops)
        result["at"].append(row)
    return result


def _single_variable(analysis: ScalingAnalysis, u: _Uncertainty) -> dict[str, Any]:
    data = analysis.data
    single: dict[str, Any] = {"skipped": dict(analysis.single_skipped)}
    for variable, law in analysis.single.items():
        law_samples = u.boot.single.get(variable) if u.boot else None
        entry = law.params.as_dict()
        entry.update(
            n_points=int(law.x.size),
            points="lowest loss per value" if variable != "C" else "compute-efficient frontier",
            objective=law.search.objective,
            starts_run=law.search.starts_run,
            starts_at_best=law.search.starts_at_best,
            ci={k: u.ci(getattr(law_samples, k) if law_samples else None) for k in ("E", "A", "alpha")},
            se={k: u.se(getattr(law_samples, k) if law_samples else None) for k in ("E", "A", "alpha")},
        )
        if variable != "C" and law.x.size == len(data):
            other = data.tokens if variable == "N" else data.n_params
            if np.unique(other).size > 1:
                entry["note"] = (
                    f"every {variable} has a single run, so this law mixes runs of different "
                    f"{'D' if variable == 'N' else 'N'}; prefer L(N, D)"
                )
        single[variable] = entry
    return single


def _isoflop(analysis: ScalingAnalysis, u: _Uncertainty) -> dict[str, Any] | None:
    iso = analysis.isoflop
    if iso is None:
        return None
    samples = u.boot.isoflop if u.boot else None
    return {
        "rtol": analysis.options.isoflop_rtol,
        "budgets": [
            {"C": p.flops, "n_runs": int(p.indices.size), "N_opt": p.n_opt, "D_opt": p.d_opt,
             "loss_opt": p.loss_opt, "extrapolated": p.extrapolated, "parabola_ln_N": list(p.coeffs)}
            for p in iso.profiles
        ],
        "skipped": iso.skipped,
        "a": iso.a, "k_n": iso.k_n, "b": iso.b, "k_d": iso.k_d,
        "ci": {k: u.ci(samples[k] if samples else None) for k in ("a", "b")},
        "se": {k: u.se(samples[k] if samples else None) for k in ("a", "b")},
    }  # fmt: skip


def _chinchilla(analysis: ScalingAnalysis, u: _Uncertainty) -> dict[str, Any]:
    fit = analysis.chinchilla
    samples = u.boot.chinchilla if u.boot else None
    entry: dict[str, Any] = fit.params.as_dict()
    entry["objective"] = fit.search.objective
    entry["ci"] = {name: u.ci(getattr(samples, name) if samples else None) for name in PARAM_NAMES}
    entry["se"] = {name: u.se(getattr(samples, name) if samples else None) for name in PARAM_NAMES}
    if fit.config.objective == "huber-mle":
        entry["noise_scale"] = float(np.exp(fit.search.theta[-1]))
    residuals = fit.log_residuals
    entry["residual_scale"] = float(1.4826 * np.median(np.abs(residuals - np.median(residuals))))
    return entry


def fit_summary(analysis: ScalingAnalysis) -> dict[str, Any]:
    """The content of ``fit.json``."""
    data, fit, boot = analysis.data, analysis.chinchilla, analysis.bootstrap
    u = _Uncertainty(analysis)
    predictions = []
    if fit is not None:
        samples = boot.chinchilla if boot else None
        for n_params, tokens in analysis.options.predict_points:
            s_loss = samples.loss(n_params, tokens) if samples is not None else None
            flops = 6.0 * n_params * tokens * u.flops_per_6nd
            predictions.append({"N": n_params, "D": tokens, "loss": float(fit.params.loss(n_params, tokens)),
                                "ci": u.ci(s_loss), "se": u.se(s_loss),
                                "pi": u.pi(s_loss, fit) if s_loss is not None else None,
                                "C": flops, "decades_beyond": u.decades(flops),
                                "pi_calibrated": u.pi_calibrated(s_loss, fit, flops) if s_loss is not None else None})
    search = fit.search if fit is not None else None
    bootstrap = None
    if boot is not None:
        bootstrap = {
            "resamples": boot.n_resamples, "level": boot.level, "seed": boot.seed, "failed": boot.n_failed,
            "seconds": boot.seconds, "seconds_by_fit": boot.seconds_by_fit,
            "seconds_per_resample": boot.seconds_per_resample,
            "method": "percentile intervals (ci) and standard errors (se) from resamples of runs with replacement, "
            "each refitted by batched L-BFGS from the best distinct optima of the full fit; prediction intervals "
            "(pi) add the fit's residuals, resampled",
        }  # fmt: skip
    return {
        "source": data.source,
        "columns": data.columns,
        "n_points": len(data),
        "dropped": data.dropped,
        "filters": list(data.filters),
        "fits": list(analysis.options.fits or ("all",)),
        "notes": list(analysis.notes),
        "objective": analysis.options.chinchilla.objective,
        "huber_delta": analysis.options.chinchilla.huber_delta,
        "grid_starts": search.grid_starts if search else None,
        "projected": search.projected if search else None,
        "starts_run": search.starts_run if search else None,
        "starts_at_best": search.starts_at_best if search else None,
        "starts_converged": search.starts_converged if search else None,
        "best_rtol": search.best_rtol if search else None,
        "fit_seconds": search.seconds if search else None,
        "level": analysis.options.level,
        "chinchilla": _chinchilla(analysis, u) if fit is not None else None,
        "compute_optimal": _compute_optimal(analysis, u),
        "predictions": predictions,
        "loo": analysis.loo.as_dict() if analysis.loo else None,
        "bootstrap": bootstrap,
        "single_variable": _single_variable(analysis, u),
        "isoflop": _isoflop(analysis, u),
        "extrapolation": analysis.extrapolation.as_dict() if analysis.extrapolation is not None else None,
        "seconds": analysis.seconds,
    }


def write_report(analysis: ScalingAnalysis, out_dir: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Write ``fit.json``, ``fit.md`` and (unless ``plots`` is False) the PNGs into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    summary = fit_summary(analysis)
    plot_names: list[str] = []
    if plots:
        from transformer_grow.scaling.plots import write_plots

        plot_names = [path.name for path in write_plots(analysis, out_dir)]
    summary["plots"] = plot_names
    atomic_write_json(out_dir / "fit.json", finite(summary))
    atomic_write_text(out_dir / "fit.md", fit_markdown(summary, plot_names))
    return summary


def finite(obj: Any) -> Any:
    """Replace NaN / infinity by None so ``fit.json`` is strict JSON."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

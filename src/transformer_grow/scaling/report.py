"""``fit.json``, ``fit.md`` and the stdout summary of a :class:`~.analysis.ScalingAnalysis`.

Every interval is a bootstrap percentile interval at ``level`` (null when the bootstrap is off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transformer_grow.io import atomic_write_json, atomic_write_text
from transformer_grow.scaling.analysis import ScalingAnalysis
from transformer_grow.scaling.chinchilla import PARAM_NAMES

COMPUTE_OPTIMAL_FORMULA = (
    "C = 6 N D; G = (alpha A / (beta B))^(1/(alpha+beta)); N_opt = G (C/6)^a; D_opt = (C/6)^b / G; "
    "a = beta/(alpha+beta); b = alpha/(alpha+beta) (Hoffmann et al. 2022, Approach 3)"
)


def _ci(analysis: ScalingAnalysis, samples) -> list[float] | None:
    boot = analysis.bootstrap
    return None if boot is None or samples is None else boot.interval(samples)


def _compute_optimal(analysis: ScalingAnalysis) -> dict[str, Any]:
    params = analysis.chinchilla.params
    samples = analysis.bootstrap.chinchilla if analysis.bootstrap else None
    table = []
    for flops in analysis.report_flops:
        n_opt, d_opt = params.compute_optimal(flops)
        row = {
            "C": flops,
            "N_opt": float(n_opt),
            "D_opt": float(d_opt),
            "tokens_per_param": float(d_opt / n_opt),
            "loss": float(params.optimal_loss(flops)),
            "ci": {},
        }
        if samples is not None:
            s_n, s_d = samples.compute_optimal(flops)
            row["ci"] = {
                "N_opt": _ci(analysis, s_n),
                "D_opt": _ci(analysis, s_d),
                "tokens_per_param": _ci(analysis, s_d / s_n),
                "loss": _ci(analysis, samples.optimal_loss(flops)),
            }
        table.append(row)
    return {
        "a": float(params.a),
        "b": float(params.b),
        "G": float(params.G),
        "ci": {name: _ci(analysis, getattr(samples, name) if samples else None) for name in ("a", "b", "G")},
        "formula": COMPUTE_OPTIMAL_FORMULA,
        "at": table,
    }


def fit_summary(analysis: ScalingAnalysis) -> dict[str, Any]:
    """The content of ``fit.json``."""
    data, fit, boot = analysis.data, analysis.chinchilla, analysis.bootstrap
    search = fit.search
    samples = boot.chinchilla if boot else None
    chinchilla = fit.params.as_dict()
    chinchilla["objective"] = search.objective
    chinchilla["ci"] = {
        name: _ci(analysis, getattr(samples, name) if samples else None) for name in PARAM_NAMES
    }

    predictions = []
    for n_params, tokens in analysis.options.predict_points:
        predictions.append(
            {
                "N": n_params,
                "D": tokens,
                "loss": float(fit.params.loss(n_params, tokens)),
                "ci": _ci(analysis, samples.loss(n_params, tokens) if samples else None),
            }
        )

    single: dict[str, Any] = {"skipped": dict(analysis.single_skipped)}
    for variable, law in analysis.single.items():
        law_samples = boot.single.get(variable) if boot else None
        entry = law.params.as_dict()
        entry.update(
            n_points=int(law.x.size),
            points="lowest loss per value" if variable != "C" else "compute-efficient frontier",
            objective=law.search.objective,
            starts_run=law.search.starts_run,
            starts_at_best=law.search.starts_at_best,
            ci={
                k: _ci(analysis, getattr(law_samples, k) if law_samples else None)
                for k in ("E", "A", "alpha")
            },
        )
        if variable != "C" and law.x.size == len(data):
            other = data.tokens if variable == "N" else data.n_params
            if np.unique(other).size > 1:
                entry["note"] = (
                    f"every {variable} has a single run, so this law mixes runs of different "
                    f"{'D' if variable == 'N' else 'N'}; prefer L(N, D)"
                )
        single[variable] = entry

    iso = analysis.isoflop
    isoflop = {
        "rtol": analysis.options.isoflop_rtol,
        "budgets": [
            {
                "C": p.flops,
                "n_runs": int(p.indices.size),
                "N_opt": p.n_opt,
                "D_opt": p.d_opt,
                "loss_opt": p.loss_opt,
                "extrapolated": p.extrapolated,
                "parabola_ln_N": list(p.coeffs),
            }
            for p in iso.profiles
        ],
        "skipped": iso.skipped,
        "a": iso.a,
        "k_n": iso.k_n,
        "b": iso.b,
        "k_d": iso.k_d,
        "ci": {
            "a": _ci(analysis, boot.isoflop_a if boot else None),
            "b": _ci(analysis, boot.isoflop_b if boot else None),
        },
    }

    bootstrap = None
    if boot is not None:
        bootstrap = {
            "resamples": boot.n_resamples,
            "level": boot.level,
            "seed": boot.seed,
            "failed": boot.n_failed,
            "seconds": boot.seconds,
            "seconds_per_resample": boot.seconds_per_resample,
            "method": "percentile intervals; resamples of runs with replacement, each refitted by batched "
            "L-BFGS from the best distinct optima of the full fit",
        }
    return {
        "source": data.source,
        "columns": data.columns,
        "n_points": len(data),
        "dropped": data.dropped,
        "huber_delta": fit.config.huber_delta,
        "starts_run": search.starts_run,
        "starts_at_best": search.starts_at_best,
        "starts_converged": search.starts_converged,
        "best_rtol": search.best_rtol,
        "fit_seconds": search.seconds,
        "level": analysis.options.level,
        "chinchilla": chinchilla,
        "compute_optimal": _compute_optimal(analysis),
        "predictions": predictions,
        "loo": analysis.loo.as_dict() if analysis.loo else None,
        "bootstrap": bootstrap,
        "single_variable": single,
        "isoflop": isoflop,
        "seconds": analysis.seconds,
    }


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _range(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def fit_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """``fit.md``: the summary as tables."""
    chin, opt, level = summary["chinchilla"], summary["compute_optimal"], summary["level"]
    lines = [
        "# Scaling-law fit",
        "",
        f"Data: `{summary['source']}`, {summary['n_points']} runs (columns: "
        + ", ".join(f"{k} = `{v}`" for k, v in summary["columns"].items())
        + ")."
        + (f" {len(summary['dropped'])} invalid runs left out." if summary["dropped"] else ""),
        "",
        "## L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3)",
        "",
        (
            f"Huber delta {summary['huber_delta']:g} on log-loss residuals; {summary['starts_at_best']} of "
            f"{summary['starts_run']} L-BFGS starts reached the best objective (within a relative "
            f"{summary['best_rtol']:g}); fit took {summary['fit_seconds']:.2f} s."
        ),
        "",
        f"| parameter | value | {level:.0%} interval |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {chin[name]:.4g} | {_range(chin['ci'][name])} |" for name in PARAM_NAMES]
    lines += [
        "",
        "## Compute-optimal allocation",
        "",
        f"`{opt['formula']}`",
        "",
        f"a = {opt['a']:.3f} {_range(opt['ci']['a'])}, b = {opt['b']:.3f} {_range(opt['ci']['b'])}",
        "",
        "| C (FLOPs) | N_opt | D_opt | tokens / parameter | loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in opt["at"]:
        ci = row["ci"]
        lines.append(
            f"| {row['C']:.3g} | {row['N_opt']:.3g} {_range(ci.get('N_opt'))} | {row['D_opt']:.3g} "
            f"{_range(ci.get('D_opt'))} | {row['tokens_per_param']:.3g} {_range(ci.get('tokens_per_param'))} | "
            f"{row['loss']:.4g} {_range(ci.get('loss'))} |"
        )
    if summary["predictions"]:
        lines += ["", "## Predictions", "", "| N | D | loss | interval |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {p['N']:.3g} | {p['D']:.3g} | {p['loss']:.4g} | {_range(p['ci'])} |"
            for p in summary["predictions"]
        ]
    loo = summary["loo"]
    if loo:
        lines += [
            "",
            "## Leave-one-out",
            "",
            (
                f"RMSE of log-loss {loo['rmse_log_loss']:.4f}; relative error mean {loo['mean_rel_error']:.2%}, "
                f"max {loo['max_rel_error']:.2%} (run `{loo['worst_run']}`)."
            ),
        ]
    lines += ["", "## Single-variable laws L(x) = E + A / x^alpha", "", "| x | points | E | A | alpha |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for variable in ("N", "D", "C"):
        law = summary["single_variable"].get(variable)
        if law is None:
            reason = summary["single_variable"]["skipped"].get(variable, "")
            lines.append(f"| {variable} | skipped: {reason} | - | - | - |")
            continue
        ci = law["ci"]
        if law.get("note"):
            notes.append(f"- L({variable}): {law['note']}.")
        lines.append(
            f"| {variable} | {law['n_points']} ({law['points']}) | {law['E']:.4g} {_range(ci['E'])} | "
            f"{law['A']:.4g} {_range(ci['A'])} | {law['alpha']:.4g} {_range(ci['alpha'])} |"
        )
    if notes:
        lines += [""] + notes
    iso = summary["isoflop"]
    lines += ["", "## IsoFLOP profiles (Approach 2)", ""]
    if iso["budgets"]:
        lines += [
            "| C | runs | N_opt | D_opt | loss at N_opt | vertex outside the runs |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {b['C']:.3g} | {b['n_runs']} | {b['N_opt']:.3g} | {b['D_opt']:.3g} | {b['loss_opt']:.4g} | "
            f"{'yes' if b['extrapolated'] else 'no'} |"
            for b in iso["budgets"]
        ]
    else:
        lines.append("No budget has enough distinct model sizes (3 needed).")
    if iso["a"] is not None:
        lines += [
            "",
            (
                f"N_opt proportional to C^{iso['a']:.3f} {_range(iso['ci']['a'])}, "
                f"D_opt proportional to C^{iso['b']:.3f} {_range(iso['ci']['b'])}."
            ),
        ]
    boot = summary["bootstrap"]
    lines += ["", "## Uncertainty", ""]
    if boot:
        lines.append(
            f"{boot['resamples']} bootstrap resamples (seed {boot['seed']}, {boot['failed']} failed), "
            f"{boot['seconds']:.2f} s in all, {boot['seconds_per_resample'] * 1e3:.2f} ms per Chinchilla refit; "
            f"{boot['method']}."
        )
    else:
        lines.append("Bootstrap off: no intervals.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def short_summary(summary: dict[str, Any]) -> str:
    """A few lines for stdout."""
    chin, opt = summary["chinchilla"], summary["compute_optimal"]
    ci = chin["ci"]
    params = ", ".join(f"{name}={chin[name]:.4g} {_range(ci[name])}" for name in PARAM_NAMES)
    lines = [
        f"{summary['n_points']} runs from {summary['source']}",
        f"L(N,D) = E + A/N^alpha + B/D^beta: {params}",
        (
            f"  {summary['starts_at_best']}/{summary['starts_run']} starts reached the best objective; "
            f"fit {summary['fit_seconds']:.2f} s"
        ),
        f"compute-optimal: N_opt ~ C^{opt['a']:.3f}, D_opt ~ C^{opt['b']:.3f}",
    ]
    for row in opt["at"]:
        lines.append(
            f"  C={row['C']:.3g}: N_opt={row['N_opt']:.3g}, D_opt={row['D_opt']:.3g} "
            f"({row['tokens_per_param']:.3g} tokens/param), loss {row['loss']:.4g} {_range(row['ci'].get('loss'))}"
        )
    for p in summary["predictions"]:
        lines.append(f"  L(N={p['N']:.3g}, D={p['D']:.3g}) = {p['loss']:.4g} {_range(p['ci'])}")
    if summary["loo"]:
        loo = summary["loo"]
        lines.append(
            f"leave-one-out: rmse(log L) {loo['rmse_log_loss']:.4f}, mean rel err {loo['mean_rel_error']:.2%}, "
            f"max {loo['max_rel_error']:.2%}"
        )
    iso = summary["isoflop"]
    if iso["a"] is not None:
        lines.append(
            f"IsoFLOP ({len(iso['budgets'])} budgets): N_opt ~ C^{iso['a']:.3f}, D_opt ~ C^{iso['b']:.3f}"
        )
    if summary["bootstrap"]:
        boot = summary["bootstrap"]
        lines.append(
            f"bootstrap: {boot['resamples']} resamples, {boot['seconds_per_resample'] * 1e3:.2f} ms per refit "
            f"({boot['level']:.0%} percentile intervals)"
        )
    return "\n".join(lines)


def write_report(analysis: ScalingAnalysis, out_dir: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Write ``fit.json``, ``fit.md`` and (unless ``plots`` is False) the PNGs into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    summary = fit_summary(analysis)
    plot_names: list[str] = []
    if plots:
        from transformer_grow.scaling.plots import write_plots

        plot_names = [path.name for path in write_plots(analysis, out_dir)]
    summary["plots"] = plot_names
    atomic_write_json(out_dir / "fit.json", _finite(summary))
    atomic_write_text(out_dir / "fit.md", fit_markdown(summary, plot_names))
    return summary


def _finite(obj: Any) -> Any:
    """Replace NaN / infinity by None so ``fit.json`` is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

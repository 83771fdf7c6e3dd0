"""PNG plots of a :class:`~.analysis.ScalingAnalysis` (matplotlib, Agg backend; written atomically).

- ``loss_vs_N.png``, ``loss_vs_D.png``: every run, the points of the single-variable law, its curve
  and its bootstrap band;
- ``loss_vs_C.png``: the same for ``L(C)`` on the compute frontier, plus the Chinchilla law's
  compute-optimal loss ``L(N_opt(C), D_opt(C))`` with its band;
- ``isoflop.png``: loss against N per budget with the fitted parabolas and their minima, and the
  minima ``N_opt(C)`` with the Approach-2 power law and the Approach-3 prediction;
- ``curve.png`` (``tgrow scaling curve``): a learning curve, the fitted laws and their prediction bands.

Bands are *prediction* bands (a new run's loss: the law's bootstrap samples plus the residual noise,
:mod:`.predict`). Loss axes are logarithmic with plain tick labels ("3.6", not "3.6x10^0"); with many
budgets the IsoFLOP plot colours them by a colour bar instead of a legend entry each.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from transformer_grow.io import atomic_write_bytes
from transformer_grow.scaling.analysis import ScalingAnalysis
from transformer_grow.scaling.isoflop import power_value
from transformer_grow.scaling.predict import prediction_interval, safe_log

MAX_LEGEND_BUDGETS = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(values: np.ndarray, pad: float = 1.5, points: int = 120) -> np.ndarray:
    return np.geomspace(values.min() / pad, values.max() * pad, points)


def _band(curves: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise percentile band of curves (R, G) from the samples finite at every point."""
    curves = curves[np.all(np.isfinite(curves), axis=1)]
    if curves.shape[0] < 2:
        return None
    lo, hi = np.percentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


def _prediction_band(curves: np.ndarray, fit, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Prediction band of a new run's loss: law samples (R, G) plus the fit's residual noise."""
    lo, hi = prediction_interval(safe_log(curves), fit.log_residuals, fit.n_free, level)
    return None if not np.all(np.isfinite(lo)) else (lo, hi)


def _plain_log_axis(axis) -> None:
    """Log scale with plain number tick labels ("3.6", "4") instead of "3.6x10^0"."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    lo, hi = axis.get_view_interval()
    decades = float(np.log10(hi / lo)) if 0 < lo < hi else 3.0
    # 1-2-3-5 ticks on a short range; one per decade on a long one, where 1-2-3-5 would crowd the axis.
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0) if decades <= 2.5 else (1.0,)))
    axis.set_minor_locator(LogLocator(subs=np.arange(1.0, 10.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


def _single_variable_plot(plt, analysis: ScalingAnalysis, variable: str, x_all: np.ndarray, label: str):
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    data, level = analysis.data, analysis.options.level
    chin = analysis.chinchilla.params if analysis.chinchilla is not None else None
    # Colour every run by the other variable: at fixed N the loss still depends on D, and vice versa.
    other_name, other = ("D", data.tokens) if variable == "N" else ("N", data.n_params)
    points = ax.scatter(x_all, data.loss, s=16, c=np.log10(other), cmap="viridis", label="runs", zorder=3)
    fig.colorbar(points, ax=ax, label=f"log10 {other_name}")
    law = analysis.single.get(variable)
    xs = _grid(x_all)
    if law is not None:
        ax.scatter(
            law.x, law.loss, s=60, facecolors="none", edgecolors="C3", label="points of the fit", zorder=4
        )
        p = law.params
        ax.plot(xs, p.loss(xs), color="C3", label=f"E + A/{variable}^alpha: alpha={p.alpha:.3f}, E={p.E:.3g}")
        if analysis.bootstrap is not None and variable in analysis.bootstrap.single:
            band = _prediction_band(analysis.bootstrap.single[variable].column().loss(xs[None, :]), law, level)
            if band:
                ax.fill_between(xs, *band, color="C3", alpha=0.15, label=f"{level:.0%} prediction band")
    else:
        ax.set_title(f"L({variable}) skipped: {analysis.single_skipped.get(variable, '')}")
    if chin is None:
        pass
    elif variable in ("N", "D"):
        # Chinchilla L(N, D) along this axis at the smallest, median and largest value of the other.
        for value in np.quantile(other, [0.0, 0.5, 1.0]):
            curve = chin.loss(xs, value) if variable == "N" else chin.loss(value, xs)
            ax.plot(xs, curve, color="0.4", ls=":", lw=1)
            ax.annotate(f"{other_name}={value:.2g}", (xs[-1], curve[-1]), fontsize=6, color="0.3")
        ax.plot([], [], color="0.4", ls=":", label=f"Chinchilla L(N, D) at fixed {other_name}")
    else:
        ax.plot(
            xs, chin.optimal_loss(xs), color="C0", ls="--", label="Chinchilla compute-optimal loss (C = 6ND)"
        )
        if analysis.bootstrap is not None:
            curves = analysis.bootstrap.chinchilla.column().optimal_loss(xs[None, :])
            band = _prediction_band(curves, analysis.chinchilla, level)
            if band:
                ax.fill_between(xs, *band, color="C0", alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(label)
    ax.set_ylabel("final validation loss")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _isoflop_plot(plt, analysis: ScalingAnalysis):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    data, iso = analysis.data, analysis.isoflop
    if not iso.profiles:
        left.text(0.5, 0.5, "no budget with 3 distinct model sizes", ha="center", transform=left.transAxes)
    many = len(iso.profiles) > MAX_LEGEND_BUDGETS
    budgets_log = np.log10([p.flops for p in iso.profiles]) if iso.profiles else np.zeros(1)
    norm = plt.Normalize(budgets_log.min(), max(budgets_log.max(), budgets_log.min() + 1e-9))
    cmap = plt.cm.viridis
    for profile in iso.profiles:
        color = cmap(norm(np.log10(profile.flops)))
        n = data.n_params[profile.indices]
        left.scatter(n, data.loss[profile.indices], color=color, s=12 if many else 16)
        ns = np.geomspace(n.min() / 1.3, n.max() * 1.3, 80)
        left.plot(ns, profile.loss_at(ns), color=color, lw=1 if many else 1.5,
                  label=None if many else f"C={profile.flops:.2g}")
        left.scatter([profile.n_opt], [profile.loss_opt], color=color, marker="*", s=60 if many else 90, edgecolor="k",
                     zorder=4)
    left.set_xscale("log")
    left.set_yscale("log")
    _plain_log_axis(left.yaxis)
    left.set_xlabel("parameters N")
    left.set_ylabel("final validation loss")
    left.set_title(f"IsoFLOP profiles (Approach 2), {len(iso.profiles)} budgets")
    if many:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(mappable, ax=left, label="log10 compute C (FLOPs)")
    elif iso.profiles:
        left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    budgets = np.array([p.flops for p in iso.profiles] + list(data.flops))
    cs = _grid(budgets, pad=2.0)
    if iso.profiles:
        right.scatter(
            [p.flops for p in iso.profiles], [p.n_opt for p in iso.profiles], color="C0", label="vertices"
        )
    if iso.a is not None:
        right.plot(cs, iso.n_opt(cs), color="C0", label=f"Approach 2: N_opt ~ C^{iso.a:.3f}")
        boot = analysis.bootstrap
        if boot is not None and boot.isoflop is not None:
            curves = power_value(boot.isoflop["k_n"][:, None], boot.isoflop["a"][:, None], cs[None, :])
            # a degenerate resample can saturate near 1e304: keep the band within 100x of the fitted line
            line = np.asarray(iso.n_opt(cs), dtype=float)
            curves = np.clip(curves, line.min() / 100.0, line.max() * 100.0)
            band = _band(curves, analysis.options.level)
            if band:
                right.fill_between(cs, *band, color="C0", alpha=0.15)
    if analysis.chinchilla is not None:
        chin = analysis.chinchilla.params
        right.plot(
            cs, chin.compute_optimal(cs)[0], color="C3", ls="--", label=f"Approach 3: N_opt ~ C^{chin.a:.3f}"
        )
        if analysis.bootstrap is not None:
            band = _band(
                analysis.bootstrap.chinchilla.column().compute_optimal(cs[None, :])[0], analysis.options.level
            )
            if band:
                right.fill_between(cs, *band, color="C3", alpha=0.15)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("compute C (FLOPs)")
    right.set_ylabel("N_opt")
    right.legend(fontsize=7)
    right.grid(True, which="both", alpha=0.3)
    return fig


def write_curve_plot(curve, fits: dict, seen: np.ndarray, level: float, path: str | Path) -> Path:
    """``curve.png``: the measured curve (fitted and held-out points), each fitted law and its prediction band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    ax.scatter(curve.x[seen], curve.loss[seen], s=10, color="0.2", label="fitted points", zorder=3)
    if (~seen).any():
        ax.scatter(curve.x[~seen], curve.loss[~seen], s=10, color="0.6", label="held-out points", zorder=3)
    end_step = curve.lrs.size if curve.lrs is not None else float(curve.steps[-1])
    steps = np.unique(np.geomspace(max(1.0, float(curve.steps[0])), end_step, 80).round())
    labels = {"power": "power law in steps", "lr_area": "LR-annealing law (Tissue et al. 2024)",
              "multi_power": "multi-power law (Luo et al. 2025)",
              "multi_power+prior": "multi-power law, annealing prior from completed runs"}
    colors = ("C0", "C3", "C2", "C1", "C4", "C5")
    for i, (name, fit) in enumerate(fits.items()):
        label, color = labels.get(name, name), colors[i % len(colors)]
        ax.plot(steps * curve.unit, fit.predict(steps), color=color, label=label)
        bands = np.array([fit.predict_interval(t, level) for t in steps[:: max(1, steps.size // 25)]])
        ax.fill_between(steps[:: max(1, steps.size // 25)] * curve.unit, bands[:, 0], bands[:, 1], color=color,
                        alpha=0.12, label=f"{level:.0%} prediction band")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(curve.columns["x"])
    ax.set_ylabel(curve.columns["loss"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    written = _save(fig, Path(path))
    plt.close(fig)
    return written


def write_plots(analysis: ScalingAnalysis, out_dir: str | Path) -> list[Path]:
    """Write the four PNGs into ``out_dir``; returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    data = analysis.data
    written = []
    for variable, x_all, label, name in (
        ("N", data.n_params, f"parameters N ({data.columns.get('N')})", "loss_vs_N.png"),
        ("D", data.tokens, f"tokens D ({data.columns.get('D')})", "loss_vs_D.png"),
        ("C", data.flops, f"compute C ({data.columns.get('C')})", "loss_vs_C.png"),
    ):
        fig = _single_variable_plot(plt, analysis, variable, x_all, label)
        written.append(_save(fig, out_dir / name))
        plt.close(fig)
    if analysis.isoflop is not None:
        fig = _isoflop_plot(plt, analysis)
        written.append(_save(fig, out_dir / "isoflop.png"))
        plt.close(fig)
    return written

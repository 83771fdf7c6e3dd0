"""PNG plots of a :class:`~.analysis.ScalingAnalysis` (matplotlib, Agg backend; written atomically).

- ``loss_vs_N.png``, ``loss_vs_D.png``: every run, the points of the single-variable law, its curve
  and its bootstrap band;
- ``loss_vs_C.png``: the same for ``L(C)`` on the compute frontier, plus the Chinchilla law's
  compute-optimal loss ``L(N_opt(C), D_opt(C))`` with its band;
- ``isoflop.png``: loss against N per budget with the fitted parabolas and their minima, and the
  minima ``N_opt(C)`` with the Approach-2 power law and the Approach-3 prediction.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from transformer_grow.io import atomic_write_bytes
from transformer_grow.scaling.analysis import ScalingAnalysis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(values: np.ndarray, pad: float = 1.5, points: int = 120) -> np.ndarray:
    return np.geomspace(values.min() / pad, values.max() * pad, points)


def _band(curves: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise percentile band of curves (R, G), ignoring non-finite samples."""
    curves = np.where(np.isfinite(curves), curves, np.nan)
    if np.sum(np.all(np.isfinite(curves), axis=1)) < 2:
        return None
    lo, hi = np.nanpercentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


def _single_variable_plot(plt, analysis: ScalingAnalysis, variable: str, x_all: np.ndarray, label: str):
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    data, level = analysis.data, analysis.options.level
    chin = analysis.chinchilla.params
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
            band = _band(analysis.bootstrap.single[variable].column().loss(xs[None, :]), level)
            if band:
                ax.fill_between(xs, *band, color="C3", alpha=0.15, label=f"{level:.0%} bootstrap band")
    else:
        ax.set_title(f"L({variable}) skipped: {analysis.single_skipped.get(variable, '')}")
    if variable in ("N", "D"):
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
            band = _band(analysis.bootstrap.chinchilla.column().optimal_loss(xs[None, :]), level)
            if band:
                ax.fill_between(xs, *band, color="C0", alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("final validation loss")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _isoflop_plot(plt, analysis: ScalingAnalysis):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    data, iso = analysis.data, analysis.isoflop
    if not iso.profiles:
        left.text(0.5, 0.5, "no budget with 3 distinct model sizes", ha="center", transform=left.transAxes)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(iso.profiles), 1)))
    for profile, color in zip(iso.profiles, colors):
        n = data.n_params[profile.indices]
        left.scatter(n, data.loss[profile.indices], color=color, s=16)
        ns = np.geomspace(n.min() / 1.3, n.max() * 1.3, 80)
        left.plot(ns, profile.loss_at(ns), color=color, label=f"C={profile.flops:.2g}")
        left.scatter([profile.n_opt], [profile.loss_opt], color=color, marker="*", s=90, edgecolor="k")
    left.set_xscale("log")
    left.set_xlabel("parameters N")
    left.set_ylabel("final validation loss")
    left.set_title("IsoFLOP profiles (Approach 2)")
    if iso.profiles:
        left.legend(fontsize=7)
    budgets = np.array([p.flops for p in iso.profiles] + list(data.flops))
    cs = _grid(budgets, pad=2.0)
    if iso.profiles:
        right.scatter(
            [p.flops for p in iso.profiles], [p.n_opt for p in iso.profiles], color="C0", label="vertices"
        )
    if iso.a is not None:
        right.plot(cs, iso.n_opt(cs), color="C0", label=f"Approach 2: N_opt ~ C^{iso.a:.3f}")
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
    fig = _isoflop_plot(plt, analysis)
    written.append(_save(fig, out_dir / "isoflop.png"))
    plt.close(fig)
    return written

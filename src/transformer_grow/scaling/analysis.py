"""One call that runs every fit on a dataset: what ``tgrow scaling fit`` does before it reports.

``analyse(data, FitOptions(...))`` fits the Chinchilla form (Approach 3), the single-variable laws,
the IsoFLOP profiles (Approach 2), bootstraps them, runs leave-one-out, and evaluates the requested
predictions. :mod:`.report` turns the result into ``fit.json`` / ``fit.md``, :mod:`.plots` into PNGs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from transformer_grow.errors import require
from transformer_grow.scaling.bootstrap import BootstrapResult, LeaveOneOut, leave_one_out, run_bootstrap
from transformer_grow.scaling.chinchilla import ChinchillaConfig, ChinchillaFit, fit_chinchilla
from transformer_grow.scaling.data import ScalingData
from transformer_grow.scaling.isoflop import DEFAULT_RTOL, IsoFlopResult, fit_isoflop
from transformer_grow.scaling.powerlaw import PowerLawConfig, PowerLawFit, fit_single_variable_laws


@dataclass(frozen=True)
class FitOptions:
    """Everything ``tgrow scaling fit`` can change; validated on construction."""

    chinchilla: ChinchillaConfig = field(default_factory=ChinchillaConfig)
    power_law: PowerLawConfig = field(default_factory=PowerLawConfig)
    n_bootstrap: int = 200  # 0 turns the bootstrap (and every interval) off
    level: float = 0.95
    seed: int = 0
    isoflop_rtol: float = DEFAULT_RTOL
    leave_one_out: bool = True
    predict_points: tuple[tuple[float, float], ...] = ()  # (N, D) pairs
    predict_flops: tuple[float, ...] = ()  # compute budgets for compute-optimal predictions

    def __post_init__(self) -> None:
        require(self.n_bootstrap >= 0, f"bootstrap={self.n_bootstrap} must be >= 0 (0 turns it off)")
        require(0.0 < self.level < 1.0, f"level={self.level} must be between 0 and 1 (e.g. 0.95)")
        require(self.isoflop_rtol >= 0, f"isoflop_rtol={self.isoflop_rtol} must be >= 0")
        for n_params, tokens in self.predict_points:
            require(n_params > 0 and np.isfinite(n_params), f"predict N={n_params} must be a positive number")
            require(tokens > 0 and np.isfinite(tokens), f"predict D={tokens} must be a positive number")
        for flops in self.predict_flops:
            require(flops > 0 and np.isfinite(flops), f"predict C={flops} must be a positive number")


@dataclass(frozen=True)
class ScalingAnalysis:
    data: ScalingData
    options: FitOptions
    chinchilla: ChinchillaFit
    single: dict[str, PowerLawFit]
    single_skipped: dict[str, str]
    isoflop: IsoFlopResult
    bootstrap: BootstrapResult | None
    loo: LeaveOneOut | None
    seconds: dict[str, float]

    @property
    def report_flops(self) -> list[float]:
        """Budgets for the compute-optimal table: the requested ones, else the largest run's compute."""
        return list(self.options.predict_flops) or [float(self.data.flops.max())]


def analyse(data: ScalingData, options: FitOptions | None = None) -> ScalingAnalysis:
    """Run every fit on ``data``; see the module docstring."""
    options = options or FitOptions()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    chinchilla = fit_chinchilla(data.n_params, data.tokens, data.loss, options.chinchilla)
    seconds["chinchilla_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    single, skipped = fit_single_variable_laws(
        data.n_params, data.tokens, data.flops, data.loss, options.power_law
    )
    isoflop = fit_isoflop(data.n_params, data.tokens, data.flops, data.loss, rtol=options.isoflop_rtol)
    seconds["single_variable_and_isoflop"] = time.perf_counter() - t

    bootstrap = None
    if options.n_bootstrap > 0:
        bootstrap = run_bootstrap(
            data,
            chinchilla,
            single,
            n_resamples=options.n_bootstrap,
            level=options.level,
            seed=options.seed,
            isoflop_rtol=options.isoflop_rtol,
        )
        seconds["bootstrap"] = bootstrap.seconds
    loo = None
    if options.leave_one_out:
        loo = leave_one_out(chinchilla, data.labels)
        seconds["leave_one_out"] = loo.seconds
    return ScalingAnalysis(data, options, chinchilla, single, skipped, isoflop, bootstrap, loo, seconds)

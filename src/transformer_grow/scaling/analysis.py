"""One call that runs the requested fits on a dataset: what ``tgrow scaling fit`` does before it reports.

``analyse(data, FitOptions(...))`` fits the Chinchilla form (Approach 3), the single-variable laws,
the IsoFLOP profiles (Approach 2) -- those named in ``fits``, all by default -- bootstraps them, runs
leave-one-out, and evaluates the requested predictions. By default Approach 2 is skipped, with a note,
when the runs do not sit on a few compute budgets; asked for by name on such data it is refused.
:mod:`.report` turns the result into ``fit.json`` / ``fit.md``, :mod:`.plots` into PNGs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from transformer_grow.errors import ConfigError, require
from transformer_grow.scaling.bootstrap import BootstrapResult, LeaveOneOut, leave_one_out, run_bootstrap
from transformer_grow.scaling.chinchilla import ChinchillaConfig, ChinchillaFit, fit_chinchilla
from transformer_grow.scaling.chinchilla_extrapolation import (
    ChinchillaExtrapolation,
    fit_chinchilla_extrapolation,
    needs_calibration,
)
from transformer_grow.scaling.data import ScalingData
from transformer_grow.scaling.isoflop import DEFAULT_RTOL, IsoFlopResult, budget_layout_problem, fit_isoflop
from transformer_grow.scaling.powerlaw import PowerLawConfig, PowerLawFit, fit_single_variable_laws

# Fits by name: Approach 3, Approach 2, and the single-variable laws L(N), L(D), L(C).
FITS = ("chinchilla", "isoflop", "loss-n", "loss-d", "loss-c")
FIT_ALIASES = {"all": FITS, "single": ("loss-n", "loss-d", "loss-c")}
SINGLE_VARIABLE = {"loss-n": "N", "loss-d": "D", "loss-c": "C"}


def parse_fits(text: str) -> tuple[str, ...]:
    """``"chinchilla,isoflop"`` -> names in FITS order; aliases ``all`` and ``single``; bad names refused."""
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item not in FITS and item not in FIT_ALIASES:
            allowed = ", ".join([*FITS, *FIT_ALIASES])
            raise ConfigError(f"--fits {item!r} is not a fit; choose from {allowed}")
        names += FIT_ALIASES.get(item, (item,))
    require(names, f"--fits {text!r} names no fit; choose from {', '.join(FITS)}")
    return tuple(name for name in FITS if name in names)


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
    fits: tuple[str, ...] | None = None  # None: all, Approach 2 only when the runs sit on budgets
    calibrate_extrapolation: bool = True  # backtests over budgets when a prediction lies beyond the runs' compute

    def __post_init__(self) -> None:
        for name in self.fits or ():
            require(name in FITS, f"fit {name!r} is not allowed; choose from {', '.join(FITS)}")
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
    chinchilla: ChinchillaFit | None  # None: not requested
    single: dict[str, PowerLawFit]
    single_skipped: dict[str, str]
    isoflop: IsoFlopResult | None  # None: not requested, or skipped (see notes)
    bootstrap: BootstrapResult | None
    loo: LeaveOneOut | None
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    extrapolation: ChinchillaExtrapolation | None = None  # calibration of L(N, D) beyond the fitted compute

    @property
    def report_flops(self) -> list[float]:
        """Budgets for the compute-optimal table: the requested ones, else the largest run's compute."""
        return list(self.options.predict_flops) or [float(self.data.flops.max())]


def analyse(data: ScalingData, options: FitOptions | None = None) -> ScalingAnalysis:
    """Run every fit on ``data``; see the module docstring."""
    options = options or FitOptions()
    fits = options.fits or FITS
    seconds: dict[str, float] = {}
    notes: list[str] = []
    chinchilla = None
    if "chinchilla" in fits:
        t = time.perf_counter()
        chinchilla = fit_chinchilla(data.n_params, data.tokens, data.loss, options.chinchilla)
        seconds["chinchilla_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    variables = tuple(SINGLE_VARIABLE[name] for name in fits if name in SINGLE_VARIABLE)
    single, skipped = fit_single_variable_laws(
        data.n_params, data.tokens, data.flops, data.loss, options.power_law, variables=variables
    )
    if variables:
        seconds["single_variable"] = time.perf_counter() - t

    isoflop = None
    if "isoflop" in fits:
        problem = budget_layout_problem(data.flops, data.n_params, options.isoflop_rtol)
        if problem is not None and options.fits is not None:
            raise ConfigError(f"IsoFLOP profiles (Approach 2) need runs on a few compute budgets: {problem}; "
                              "leave isoflop out of --fits or change --isoflop-rtol")
        if problem is not None:
            notes.append(f"IsoFLOP profiles (Approach 2) skipped: {problem}")
        else:
            t = time.perf_counter()
            isoflop = fit_isoflop(data.n_params, data.tokens, data.flops, data.loss, rtol=options.isoflop_rtol)
            seconds["isoflop"] = time.perf_counter() - t

    bootstrap = None
    if options.n_bootstrap > 0:
        bootstrap = run_bootstrap(
            data,
            chinchilla,
            single,
            n_resamples=options.n_bootstrap,
            level=options.level,
            seed=options.seed,
            isoflop=isoflop is not None,
            isoflop_rtol=options.isoflop_rtol,
        )
        seconds["bootstrap"] = bootstrap.seconds
    loo = None
    if options.leave_one_out and chinchilla is not None:
        loo = leave_one_out(chinchilla, data.labels)
        seconds["leave_one_out"] = loo.seconds
    extrapolation = None
    if (options.calibrate_extrapolation and chinchilla is not None and bootstrap is not None
            and needs_calibration(data.flops, data.n_params, data.tokens, options.predict_points,
                                  options.predict_flops)):
        extrapolation = fit_chinchilla_extrapolation(
            data.n_params, data.tokens, data.flops, data.loss, options.chinchilla, rtol=options.isoflop_rtol,
            n_bootstrap=options.n_bootstrap, level=options.level, seed=options.seed)
        seconds["extrapolation_backtests"] = extrapolation.seconds
        if extrapolation.discrepancy is None:
            notes.append("predictions beyond the runs' compute are not calibrated: no leave-future-out backtest "
                         f"(the runs form {extrapolation.budgets} compute budget(s); at least 3 are needed)")
    return ScalingAnalysis(data, options, chinchilla, single, skipped, isoflop, bootstrap, loo, seconds, notes,
                           extrapolation)

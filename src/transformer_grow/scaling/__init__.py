"""Scaling laws: fit laws to runs and extrapolate learning curves (numpy and scipy only, no torch).

- :func:`load_scaling_data` / :func:`data_from_records`: results JSONL or CSV -> :class:`ScalingData`;
- :func:`fit_chinchilla`: ``L(N, D) = E + A/N^alpha + B/D^beta`` (Hoffmann et al. 2022, Approach 3);
- :func:`fit_single_variable_laws`, :func:`fit_isoflop` (Approach 2);
- :func:`analyse`: every fit plus bootstrap intervals and leave-one-out; :func:`write_report`;
- :func:`fit_learning_curve`, :func:`should_stop_early`, :func:`local_slope`: learning curves;
  :func:`fit_anneal_prior` / :class:`AnnealPrior`: the annealing bonus pooled over completed runs;
- :func:`growth_speedup_vs_scale`: growth's FLOP speedup as a function of model size.

Plots (matplotlib) are imported only by :func:`write_report`. Training the runs of a grid is
:mod:`transformer_grow.lab`.
"""

from transformer_grow.scaling.analysis import FitOptions, ScalingAnalysis, analyse
from transformer_grow.scaling.anneal_prior import AnnealPrior, fit_anneal_prior
from transformer_grow.scaling.bootstrap import BootstrapResult, LeaveOneOut, leave_one_out, run_bootstrap
from transformer_grow.scaling.chinchilla import (
    ChinchillaConfig,
    ChinchillaFit,
    ChinchillaParams,
    fit_chinchilla,
)
from transformer_grow.scaling.curve import CurveFit, fit_learning_curve, local_slope, should_stop_early
from transformer_grow.scaling.data import ScalingData, data_from_records, load_scaling_data
from transformer_grow.scaling.growth import GrowthSpeedup, growth_speedup_vs_scale
from transformer_grow.scaling.isoflop import IsoFlopResult, fit_isoflop
from transformer_grow.scaling.powerlaw import (
    PowerLawFit,
    PowerLawParams,
    fit_power_law,
    fit_single_variable_laws,
)
from transformer_grow.scaling.report import fit_summary, write_report

__all__ = [
    "AnnealPrior",
    "BootstrapResult",
    "ChinchillaConfig",
    "ChinchillaFit",
    "ChinchillaParams",
    "CurveFit",
    "FitOptions",
    "GrowthSpeedup",
    "IsoFlopResult",
    "LeaveOneOut",
    "PowerLawFit",
    "PowerLawParams",
    "ScalingAnalysis",
    "ScalingData",
    "analyse",
    "data_from_records",
    "fit_anneal_prior",
    "fit_chinchilla",
    "fit_isoflop",
    "fit_learning_curve",
    "fit_power_law",
    "fit_single_variable_laws",
    "fit_summary",
    "growth_speedup_vs_scale",
    "leave_one_out",
    "load_scaling_data",
    "local_slope",
    "run_bootstrap",
    "should_stop_early",
    "write_report",
]

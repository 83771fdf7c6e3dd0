"""Growth-aware scaling: does the FLOP saving of growth hold as models get bigger?

Both sets of runs (from-scratch and grown, each a list of results records) are fitted with the
Chinchilla form in *effective tokens* ``D_eff = C / (6 N)``: ``C`` is the run's total compute (for a
grown run, the small model's FLOPs included) and ``N`` the final model's size. A grown run that
reached its loss with fewer FLOPs thus looks like a scratch run with fewer tokens.

For each target size ``N`` the reference loss is what the scratch law reaches at
``D = tokens_per_param * N`` (default 20, Chinchilla's ratio). The compute each law needs to reach a
loss ``L`` at size ``N`` solves ``E + A/N^alpha + B/D^beta = L``:
``D(N, L) = (B / (L - E - A/N^alpha))^(1/beta)``, ``C = 6 N D`` (infinite when ``L`` is at or below the
law's floor at that N). The speedup is ``C_scratch / C_growth``; its interval comes from bootstrapping
both sets of runs independently. Sizes beyond the fitted runs are extrapolations and are marked so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from transformer_grow.errors import ConfigError, require
from transformer_grow.scaling.bootstrap import resample_counts
from transformer_grow.scaling.chinchilla import (
    ChinchillaConfig,
    ChinchillaFit,
    ChinchillaParams,
    fit_chinchilla,
)
from transformer_grow.scaling.data import data_from_records


def flops_to_reach(params: ChinchillaParams, n_params, loss):
    """Compute ``6 N D`` the law needs for loss ``loss`` at size ``n_params`` (inf where unreachable)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gap = loss - params.E - params.A / np.power(n_params, params.alpha)
        tokens = np.where(
            gap > 0, np.power(params.B / np.where(gap > 0, gap, 1.0), 1.0 / params.beta), np.inf
        )
    return 6.0 * n_params * tokens


@dataclass(frozen=True)
class GrowthSpeedup:
    n_params: np.ndarray
    target_loss: np.ndarray  # scratch law at D = tokens_per_param * N
    speedup: np.ndarray  # scratch FLOPs / growth FLOPs to reach target_loss
    ci_low: np.ndarray  # NaN without bootstrap
    ci_high: np.ndarray
    extrapolated: np.ndarray  # N outside the range of sizes both sets of runs cover
    scratch: ChinchillaFit
    growth: ChinchillaFit
    tokens_per_param: float
    level: float

    def as_dict(self) -> dict:
        return {
            "tokens_per_param": self.tokens_per_param,
            "level": self.level,
            "scratch": self.scratch.params.as_dict(),
            "growth": self.growth.params.as_dict(),
            "by_size": [
                {
                    "N": float(n),
                    "target_loss": float(t),
                    "speedup": float(s),
                    "ci": [float(lo), float(hi)] if np.isfinite(lo) else None,
                    "extrapolated": bool(x),
                }
                for n, t, s, lo, hi, x in zip(
                    self.n_params,
                    self.target_loss,
                    self.speedup,
                    self.ci_low,
                    self.ci_high,
                    self.extrapolated,
                )
            ],
        }


def _speedup(scratch: ChinchillaParams, growth: ChinchillaParams, n_params, tokens_per_param: float):
    target = scratch.loss(n_params, tokens_per_param * n_params)
    with np.errstate(divide="ignore", invalid="ignore"):
        return target, flops_to_reach(scratch, n_params, target) / flops_to_reach(growth, n_params, target)


def growth_speedup_vs_scale(
    scratch_records: list[dict],
    growth_records: list[dict],
    *,
    n_values=None,
    tokens_per_param: float = 20.0,
    n_bootstrap: int = 100,
    level: float = 0.95,
    seed: int = 0,
    config: ChinchillaConfig | None = None,
) -> GrowthSpeedup:
    """FLOP speedup of growth over training from scratch as a function of model size (module docstring).

    Records need ``n_params_nonembedding``, ``flops`` and ``final_val_loss``. ``n_values`` defaults to
    25 sizes from the smallest run to 100x the largest.
    """
    require(tokens_per_param > 0, f"tokens_per_param={tokens_per_param} must be > 0")
    require(n_bootstrap >= 0, f"n_bootstrap={n_bootstrap} must be >= 0")
    require(0.0 < level < 1.0, f"level={level} must be between 0 and 1")
    datasets = []
    for name, records in (("scratch", scratch_records), ("growth", growth_records)):
        rows = [(f"{name} run {i}", record) for i, record in enumerate(records)]
        datasets.append(data_from_records(rows, source=f"{name} records", c_col="flops"))
    scratch_data, growth_data = datasets
    fits = [fit_chinchilla(d.n_params, d.tokens, d.loss, config) for d in datasets]
    lo_n = max(scratch_data.n_params.min(), growth_data.n_params.min())
    hi_n = min(scratch_data.n_params.max(), growth_data.n_params.max())
    if n_values is None:
        n_values = np.geomspace(min(scratch_data.n_params.min(), growth_data.n_params.min()), 100 * hi_n, 25)
    n_values = np.asarray(n_values, dtype=float)
    require(np.all(n_values > 0), "n_values must be positive")
    target, speedup = _speedup(fits[0].params, fits[1].params, n_values, tokens_per_param)

    ci_low = np.full(n_values.shape, np.nan)
    ci_high = np.full(n_values.shape, np.nan)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = [
            fit.refit(resample_counts(len(d), n_bootstrap, rng)).column() for fit, d in zip(fits, datasets)
        ]
        _, curves = _speedup(samples[0], samples[1], n_values[None, :], tokens_per_param)
        curves = np.where(np.isfinite(curves), curves, np.nan)
        with warnings.catch_warnings():  # a size where no resample reaches the target: NaN interval
            warnings.simplefilter("ignore", RuntimeWarning)
            ci_low, ci_high = np.nanpercentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
    extrapolated = (n_values < lo_n) | (n_values > hi_n)
    return GrowthSpeedup(
        n_values,
        np.asarray(target),
        np.asarray(speedup),
        ci_low,
        ci_high,
        extrapolated,
        fits[0],
        fits[1],
        tokens_per_param,
        level,
    )


def _saving(speedup: float) -> float:
    """Share of the scratch FLOPs growth saves: ``1 - 1/speedup`` (negative: growth costs more)."""
    return 1.0 - 1.0 / speedup if speedup > 0 else -np.inf


def savings_lines(result: GrowthSpeedup, plan: str = "growth") -> list[str]:
    """One line per size: "at N = ..., <plan> saves X% of FLOPs (CI ...)", extrapolations marked."""
    level = f"{result.level:.0%}"
    lines = [
        (
            f"reference: the scratch law's loss at D = {result.tokens_per_param:g} N; saving = 1 - growth FLOPs / "
            "scratch FLOPs to reach it (fits in effective tokens C / 6N)"
        )
    ]
    for n, target, speedup, lo, hi, extrapolated in zip(
        result.n_params, result.target_loss, result.speedup, result.ci_low, result.ci_high, result.extrapolated
    ):
        where = f"at N = {n:.3g} (target loss {target:.4g})"
        if not np.isfinite(speedup) or speedup <= 0:
            reason = "never reaches it (its fitted floor is higher)" if speedup == 0 else "not defined"
            lines.append(f"{where}: {plan} {reason}" + (" [extrapolated]" if extrapolated else ""))
            continue
        ci = "no interval (bootstrap off or no resample reached the target)"
        if np.isfinite(lo) and np.isfinite(hi):
            ci = f"{level} CI {_saving(lo):.0%} to {_saving(hi):.0%}"
        lines.append(f"{where}: {plan} saves {_saving(speedup):.0%} of FLOPs ({ci}), speedup {speedup:.2f}x"
                     + (" [extrapolated]" if extrapolated else ""))
    return lines


def growth_plan_of(records: list[dict], plan: str | None, baseline: str = "scratch") -> str:
    """The growth plan to compare with ``baseline``: ``plan``, or the only other plan the records hold."""
    plans = sorted({r["plan"] for r in records if isinstance(r.get("plan"), str)})
    if plan is None:
        others = [p for p in plans if p != baseline]
        if len(others) != 1:
            raise ConfigError(f"the results hold plans {plans or '(none recorded)'}; name the growth plan with --plan")
        plan = others[0]
    require(plan != baseline, f"plan={plan!r} is the baseline; name a growth plan")
    for name in (baseline, plan):
        require(name in plans, f"plan={name!r}: no runs of that plan in the results (plans present: {plans})")
    return plan


def report_sizes(records: list[dict]) -> list[float]:
    """Sizes to report: the runs' smallest and largest N and each power of 10 above, up to 1000x the largest."""
    sizes = [float(r["n_params_nonembedding"]) for r in records]
    lo, hi = min(sizes), max(sizes)
    decades = [10.0**k for k in range(math.floor(math.log10(hi)) + 1, math.floor(math.log10(1000 * hi)) + 1)]
    return sorted({lo, hi, *decades})

"""A prior on the annealing bonus of a learning curve, pooled over runs that completed their decay.

The schedule-aware laws (:mod:`.curve`) write the loss as ``E + A z^-alpha + B w``, ``w`` the annealing
still to come. ``B`` is identified only by a curve that has seen its learning rate fall: before a
warmup-stable-decay schedule starts its decay, nothing in the curve says what the decay will pay, and
25% into a cosine schedule very little does. Luo et al. 2025 ("A Multi-Power Law for Loss Curve
Prediction Across Learning Rate Schedules", ICLR 2025, sec. 4) fit their law on a few runs (a constant
and a cosine one) and predict other schedules with it; this module carries the one parameter a partial
curve cannot see, ``B``, from completed runs to a partial one.

On each completed reference run, the law is fitted to the whole curve and the *bonus ratio*
``r = B / L_hat(T)`` is read off (``L_hat(T)`` the fitted loss at the end of its schedule): the share of the
final loss that a decay of the whole peak rate pays, dimensionless, so that runs of other sizes, lengths
and peak rates can be pooled. The prior is log-normal: ``log r ~ N(mean, sd^2 (1 + 1/n))`` over ``n``
reference runs (the predictive law of one new run; Student t with ``n - 1`` degrees of freedom in the
bootstrap draws when ``n >= 3``). A partial curve is then fitted with a Gaussian penalty on ``B`` around
``r L_hat(T)``, its own fitted final loss, weighted as one more observation (:func:`penalty`). On
micro-scale runs of our trainer ``r`` ranged 0.11-0.30 over seeds, peak rates and schedules
(``benchmarks/learning_curves.py``), a log-sd of about 0.3.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from transformer_grow.errors import ConfigError, require
from transformer_grow.scaling.schedule_laws import SCHEDULE_FORMS, lr_drops

MIN_LOG_SD = 0.1  # never trust the pooled ratio to better than ~10%
FEW_RUNS_LOG_SD = 0.5  # the spread assumed with fewer than three reference runs (no usable sample sd)


@dataclass(frozen=True)
class AnnealPrior:
    """Log-normal prior on the bonus ratio ``r = B / L_hat(T)`` (module docstring).

    Attributes:
        ratio: geometric mean of ``r`` over the reference runs.
        log_sd: spread of ``log r`` used for a new run (sample sd, at least ``MIN_LOG_SD``; ``FEW_RUNS_LOG_SD``
            with fewer than three runs).
        n_runs: number of reference runs pooled.
        form: the law the ratios were read from (``multi_power`` or ``lr_area``); ``B`` means different
            things in the two.
        ratios: the per-run ratios, for the report.
    """

    ratio: float
    log_sd: float
    n_runs: int
    form: str = "multi_power"
    ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        require(self.form in SCHEDULE_FORMS, f"anneal prior form={self.form!r}; allowed: {', '.join(SCHEDULE_FORMS)}")
        require(math.isfinite(self.ratio) and self.ratio > 0, f"anneal prior ratio={self.ratio} must be > 0")
        require(math.isfinite(self.log_sd) and self.log_sd > 0, f"anneal prior log_sd={self.log_sd} must be > 0")
        require(self.n_runs >= 1, f"anneal prior n_runs={self.n_runs} must be >= 1")

    @property
    def predictive_log_sd(self) -> float:
        """Spread of ``log r`` for one new run: the runs' spread plus the uncertainty of their mean."""
        return self.log_sd * math.sqrt(1.0 + 1.0 / self.n_runs)

    def draw_log_offsets(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Draws of ``log r - log ratio`` for a new run (Student t with ``n - 1`` df when ``n >= 3``)."""
        if self.n_runs >= 3:
            return rng.standard_t(self.n_runs - 1, size=size) * self.predictive_log_sd
        return rng.standard_normal(size) * self.predictive_log_sd

    def describe(self) -> str:
        spread = math.exp(self.predictive_log_sd)
        return (f"annealing bonus B = {self.ratio:.3f} x the final loss (x/ {spread:.2f} for a new run), "
                f"pooled over {self.n_runs} completed run(s) ({self.form})")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, data: dict) -> AnnealPrior:
        require(isinstance(data, dict), "an anneal prior must be a JSON object")
        known = {"ratio", "log_sd", "n_runs", "form", "ratios"}
        unknown = sorted(set(data) - known)
        require(not unknown,
                f"anneal prior: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        missing = sorted({"ratio", "log_sd", "n_runs"} - set(data))
        require(not missing, f"anneal prior: missing field(s) {', '.join(missing)}")
        try:
            values = (float(data["ratio"]), float(data["log_sd"]), int(data["n_runs"]),
                      str(data.get("form", "multi_power")), tuple(float(r) for r in data.get("ratios", ())))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"anneal prior: a field is not a number ({exc})") from None
        return cls(*values)

    @classmethod
    def load(cls, path: str | Path) -> AnnealPrior:
        """Read a prior written by :meth:`to_dict` (``tgrow scaling curve --save-prior``); plain JSON."""
        path = Path(path)
        require(path.is_file(), f"anneal prior file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"anneal prior file {str(path)!r} is not JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:  # every refusal names the file
            raise ConfigError(f"anneal prior file {str(path)!r}: {exc}") from None


def penalty(prior: AnnealPrior, final_loss: float, noise: float) -> tuple[float, float]:
    """``(weight, centre)`` of the penalty residual ``weight (B - centre)`` in a log-loss least squares.

    ``centre = ratio x final_loss``; a Gaussian prior of sd ``centre x predictive_log_sd`` on ``B`` adds
    ``(B - centre)^2 / sd^2`` to ``sum r_i^2 / noise^2``, i.e. one residual ``noise (B - centre) / sd``.
    """
    centre = prior.ratio * final_loss
    return noise / (centre * prior.predictive_log_sd), centre


def has_decay(lrs) -> bool:
    """Whether the schedule lowers its rate anywhere after the warmup (otherwise ``B`` plays no part)."""
    lrs = np.asarray(lrs, dtype=float)
    return bool(lrs.size > 1 and np.sum(lr_drops(lrs)) > 1e-9 * max(float(np.max(lrs)), 1e-300))


def reference_problem(steps, lrs) -> str | None:
    """Why a run cannot serve as a reference (``None`` if it can): its schedule must decay, and its curve
    must reach the end of the schedule (within one evaluation interval) to show what the decay paid."""
    steps, lrs = np.asarray(steps, dtype=float), np.asarray(lrs, dtype=float)
    if lrs.ndim != 1 or lrs.size < 2:
        return "the schedule (lrs) must have 2+ steps"
    if not has_decay(lrs):
        return ("its schedule never lowers the learning rate, so it says nothing about annealing; pass runs with "
                "a cosine, linear or WSD decay")
    gap = float(np.max(np.diff(steps))) if steps.size > 1 else 0.0
    if steps.size == 0 or steps[-1] < lrs.size - gap:
        return (f"its curve ends at step {steps[-1] if steps.size else 0:g}, before the end of its schedule "
                f"({lrs.size}); only completed runs show what the decay paid")
    return None


def fit_anneal_prior(curves, form: str = "multi_power") -> AnnealPrior:
    """Pool the bonus ratio over completed runs: ``curves`` is an iterable of ``(steps, losses, lrs)``.

    Each run must have reached the end of its schedule (its last point at ``len(lrs)``, within one
    evaluation interval) and its schedule must decay; others are refused with one line.
    """
    from transformer_grow.scaling.curve import fit_learning_curve

    ratios = []
    for number, (steps, losses, lrs) in enumerate(curves, start=1):
        problem = reference_problem(steps, lrs)
        require(problem is None, f"reference run {number}: {problem}")
        fit = fit_learning_curve(steps, losses, lrs, form=form, n_bootstrap=2)
        final = fit.predict(float(len(lrs)))
        ratios.append(max(fit.params["B"], 1e-6 * final) / final)
    require(ratios, "fit_anneal_prior needs at least one completed reference run")
    logs = np.log(ratios)
    if len(ratios) >= 3:
        log_sd = max(float(np.std(logs, ddof=1)), MIN_LOG_SD)
    else:
        log_sd = FEW_RUNS_LOG_SD
    return AnnealPrior(float(np.exp(np.mean(logs))), log_sd, len(ratios), form, tuple(float(r) for r in ratios))

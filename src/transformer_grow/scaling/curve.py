"""Learning-curve extrapolation: fit a partial training curve, predict its loss at a later step.

Forms (``t`` = optimizer steps done when the loss was measured, ``t >= 1``), all ``E + A z^-alpha + B w``:

- ``power``: ``L(t) = E + A (t / t_ref)^-alpha`` (a saturating power law in steps; ``B = 0``);
- ``multi_power`` (the default when the caller passes the learning rate of every step): the multi-power
  law of Luo et al. 2025 (ICLR 2025, eq. 2) in the forward area ``S1`` of the schedule, with the annealing
  bonus still to come ``B w(t)`` (:mod:`.schedule_laws`);
- ``lr_area``: the LR-annealing law of Tissue et al. 2024 (eq. 1), the annealing bonus from the momentum
  area ``S2`` (:mod:`.schedule_laws`).

Both schedule forms are written with the irreducible loss as their floor: ``w >= 0`` is what annealing
has still to pay, so every prediction inside the schedule is at least ``E >= 0`` and none is negative
(the papers' ``L0 - LD(t)`` and ``L0 - C S2(t)`` can fall below any floor when the fit overrates annealing).
``multi_power`` is the default because its bonus pays off as fast as the forward area grows and is bounded
by the size of the decrease; ``lr_area``'s momentum (``lambda = 0.999``, ~1000 steps) keeps adding bonus long
after a decrease, and overshot cosine curves at micro scale (``benchmarks/learning_curves.py``).

Fitting: points during the LR warmup (before the schedule first reaches its peak) are left out when the
schedule is known and enough points remain (the early transient follows no power law; leaving it out
cut the errors of both forms by half or more on micro-scale curves). ``scipy.optimize.least_squares``
with Huber loss on log-loss residuals (``huber_scale``, default 0.01 = 1% of the loss), a weak prior
``B / (B_PRIOR min L)`` (``B_PRIOR`` below), bounds ``0 <= E <= min(L)``, ``A, B >= 0``, ``0 <= alpha <= 5``,
analytic Jacobian, a few starts, best kept. ``t_ref`` (or ``S1_ref``) is the last observed point, so ``A``
is the reducible loss there and the problem is well scaled. ``B`` is fitted only when the observed part
saw some annealing: before a WSD decay begins, no single curve says how much the decay will pay. A prior
pooled over completed runs (``prior=``, :mod:`.anneal_prior`) supplies it: ``B`` is then fitted with a
Gaussian penalty around the pooled bonus ratio times the curve's own fitted final loss (weighed against
the points as if they had their autocorrelation-adjusted noise, :func:`_effective_noise`), and every
bootstrap refit draws its own ratio from the prior, so the interval carries the spread between runs.

Intervals: a prediction interval for the loss that will be *measured*, in three parts. (1) The law's
uncertainty: a moving-block bootstrap of the log residuals (training-curve noise is autocorrelated;
independent resampling made 90% intervals cover 62% on AR(1) noise in the tests), refit from the fitted
parameters. (2) The noise of one new measurement (:mod:`.predict`). (3) The form's own error far ahead,
which neither sees: a rolling-origin backtest on the observed curve (:meth:`CurveFit.drift_rate`) measures
how fast the log error of the law grows with the log extrapolation distance, and the band is widened by
``z_level * rate * log(clock_target / clock_last)``, in quadrature. ``calibrated=False`` leaves (3) out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import norm

from transformer_grow.errors import choice, require
from transformer_grow.scaling.anneal_prior import AnnealPrior, has_decay
from transformer_grow.scaling.anneal_prior import penalty as anneal_penalty
from transformer_grow.scaling.predict import prediction_interval
from transformer_grow.scaling.schedule_laws import ANNEAL_DECAY, SCHEDULE_FORMS, lr_areas, schedule_features

DEFAULT_SCHEDULE_FORM = "multi_power"
MIN_POINTS = 5
BACKTEST_RATIOS = (1.25, 1.5, 2.0)  # refit up to the last point's clock over these (CurveFit.drift_rate)
PARAMS = ("E", "A", "alpha", "B")
# Prior scale of the annealing bonus: a weak ridge (one extra residual) pulls B towards 0 unless the
# observed curve shows annealing. Without it B trades off against E when the observed part has seen little
# decay (25% into a cosine schedule) and the bonus still to come is overestimated (final losses
# underestimated by up to 95% on micro-scale cosine curves); 0.3 of the loss was the best of 0.02-0.3 there.
B_PRIOR = 0.3


@dataclass
class CurveFit:
    """A fitted learning curve; ``params`` holds ``E``, ``A``, ``alpha`` (and ``B`` for the schedule forms)."""

    form: str  # "power", "multi_power" or "lr_area"
    params: dict[str, float]
    steps: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray | None
    x_ref: float
    huber_scale: float
    n_bootstrap: int = 200
    seed: int = 0
    anneal_decay: float = ANNEAL_DECAY
    prior: AnnealPrior | None = None  # the pooled prior on B the fit used (module .anneal_prior)
    penalty: tuple[float, float] | None = None  # (weight, centre) of B's penalty residual; None: B fixed at 0
    _boot: np.ndarray | None = field(default=None, repr=False)  # (R, 4) bootstrap parameter samples
    _drift: float | None = field(default=None, repr=False)  # backtest drift rate

    def features(self, t) -> tuple[np.ndarray, np.ndarray]:
        """``(z, w)`` at step(s) ``t``: scaled step or forward area, and the annealing still to come."""
        t = np.asarray(t, dtype=float)
        if self.lrs is None:
            require(np.all(t >= 1), f"step {t.min()} must be >= 1")
            return t / self.x_ref, np.zeros_like(t)
        require(
            np.all(t >= 1) and np.all(t <= self.lrs.size),
            f"step(s) {t} outside the learning-rate schedule passed to the fit (steps 1..{self.lrs.size})",
        )
        return schedule_features(self.form, self.lrs, np.round(t).astype(int), self.x_ref, self.anneal_decay)

    @property
    def vector(self) -> np.ndarray:
        p = self.params
        return np.array([p["E"], p["A"], p["alpha"], p.get("B", 0.0)])

    @property
    def log_residuals(self) -> np.ndarray:
        return np.log(self.losses) - np.log(self.predict(self.steps))

    def predict(self, t):
        """Predicted loss at step(s) ``t`` (float for a scalar); never below the fitted ``E``."""
        z, w = self.features(t)
        value = _model(self.vector, z, w)
        return float(value) if np.ndim(value) == 0 else value

    def mean_interval(self, t, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the law at step ``t`` (residual bootstrap; no measurement noise)."""
        require(0.0 < level < 1.0, f"level={level} must be between 0 and 1")
        samples = self._samples_at(t)
        lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)

    def predict_interval(self, t, level: float = 0.95, calibrated: bool = True) -> tuple[float, float]:
        """Prediction interval of the loss measured at step ``t`` (module docstring, "Intervals").

        Law samples (block bootstrap) plus residual noise; ``calibrated`` widens it by the drift that
        backtests on the observed curve measured, grown with the extrapolation distance.
        """
        require(0.0 < level < 1.0, f"level={level} must be between 0 and 1")
        samples = self._samples_at(t)
        n_free = 3 if self.form == "power" else 4
        lo, hi = prediction_interval(np.log(samples)[:, None], self.log_residuals, n_free, level, self.seed)
        lo, hi = float(lo[0]), float(hi[0])
        distance = float(np.log(self.features(float(t))[0]))  # log of the clock ratio to the last point
        if not calibrated or distance <= 0 or self.drift_rate() == 0:
            return lo, hi
        centre = np.log(self.predict(float(t)))
        drift = float(norm.ppf(0.5 + level / 2)) * self.drift_rate() * distance
        return (float(np.exp(centre - np.hypot(centre - np.log(lo), drift))),
                float(np.exp(centre + np.hypot(np.log(hi) - centre, drift))))

    def drift_rate(self) -> float:
        """Systematic log error per unit of log extrapolation distance, from backtests (computed once, kept).

        A rolling-origin backtest (Tashman 2000, "Out-of-sample tests of forecasting accuracy"): refit on the
        points up to ``1/1.25``, ``1/1.5`` and ``1/2`` of the last point's clock (steps, or forward area) and
        predict the points of the last 10% of the clock: ``e_j`` the mean log error there, ``u_j`` the log
        distance from the cut. The noise of that mean (``s^2 / k``, ``s^2`` the mean squared residual of the
        fit, ``k`` points) is taken out: ``rate^2 = mean_j max(e_j^2 - s^2 / k, 0) / u_j^2``. 0 when too few
        points precede the cuts. The early fits' own parameter noise stays in: the band errs wide.
        """
        if self._drift is None:
            self._drift = _backtest_drift(self)
        return self._drift

    def _samples_at(self, t) -> np.ndarray:
        z, w = self.features(float(t))
        samples = _model(self.bootstrap_params().T, z, w)
        return samples[np.isfinite(samples) & (samples > 0)]

    def bootstrap_params(self) -> np.ndarray:
        """(R, 4) parameter samples ``[E, A, alpha, B]``, computed on first use and kept."""
        if self._boot is None:
            self._boot = _residual_bootstrap(self)
        return self._boot

    def as_dict(self) -> dict:
        out = {"form": self.form, "params": dict(self.params), "x_ref": self.x_ref, "n_points": int(self.steps.size)}
        if self.prior is not None:
            out["anneal_prior"] = self.prior.to_dict()
        return out


def _model(theta, z, w):
    E, A, alpha, B = theta[0], theta[1], theta[2], theta[3]
    return E + A * np.power(z, -alpha) + B * w


def _jacobian(theta, z, w):
    A, alpha = theta[1], theta[2]
    zpow = np.power(z, -alpha)
    return np.stack([np.ones_like(z), zpow, -A * zpow * np.log(z), w], axis=1)


def _fit(log_losses, z, w, x0, upper_e, penalty, huber_scale) -> tuple[np.ndarray, float]:
    """Least squares of the log loss; ``penalty``: ``None`` fixes ``B = 0``, else ``(weight, centre)`` adds
    the residual ``weight (B - centre)`` (the weak ridge, or the pooled prior of :mod:`.anneal_prior`)."""
    fit_b = penalty is not None
    n_free = 4 if fit_b else 3
    weight, centre = penalty if fit_b else (0.0, 0.0)

    def full(p):
        return p if fit_b else np.append(p, 0.0)

    def residual(p):
        r = np.log(np.maximum(_model(full(p), z, w), 1e-12)) - log_losses
        return np.append(r, weight * (p[3] - centre)) if fit_b else r

    def jac(p):
        model = np.maximum(_model(full(p), z, w), 1e-12)
        j = _jacobian(full(p), z, w)[:, :n_free] / model[:, None]
        return np.vstack([j, [0.0, 0.0, 0.0, weight]]) if fit_b else j

    lower = [0.0, 0.0, 0.0, 0.0][:n_free]
    upper = [upper_e, np.inf, 5.0, np.inf][:n_free]
    result = least_squares(
        residual,
        np.clip(x0[:n_free], lower, upper),
        jac=jac,
        bounds=(lower, upper),
        loss="huber",
        f_scale=huber_scale,
    )
    return full(result.x), float(result.cost)


def _ridge(w, upper_e, huber_scale) -> tuple[float, float] | None:
    """The weak ridge on ``B`` (``B_PRIOR``) when ``w`` varies over the points, else ``None`` (B = 0)."""
    if not np.ptp(w) > 1e-9 * max(float(np.max(w)), 1e-300):
        return None
    return huber_scale / (B_PRIOR * upper_e), 0.0


def _best_fit(log_losses, z, w, upper_e, penalty, huber_scale, extra_starts=()) -> np.ndarray:
    """A few starts (floor at 0, half and 0.9 of the lowest loss; alpha 0.3 and 1), the best kept."""
    losses_last = float(np.exp(log_losses[-1]))
    b0 = 0.0 if penalty is None else penalty[1]
    starts = list(extra_starts)
    for e_frac in (0.0, 0.5, 0.9):
        for alpha in (0.3, 1.0):
            e0 = e_frac * upper_e
            starts.append(np.array([e0, max(losses_last - e0, 1e-6), alpha, b0]))
    return min((_fit(log_losses, z, w, x0, upper_e, penalty, huber_scale) for x0 in starts),
               key=lambda fitted: fitted[1])[0]


def fit_learning_curve(
    steps,
    losses,
    lrs=None,
    *,
    huber_scale: float = 0.01,
    anneal_decay: float = ANNEAL_DECAY,
    n_bootstrap: int = 200,
    seed: int = 0,
    form: str | None = None,
    prior: AnnealPrior | None = None,
) -> CurveFit:
    """Fit a partial learning curve (see the module docstring); ``lrs[i]`` is the LR of step ``i + 1``.

    ``prior``: a pooled prior on the annealing bonus from completed runs (:func:`fit_anneal_prior`), used
    by the schedule forms when the schedule decays; ``lrs`` must then run to the end of the schedule.
    """
    steps = np.asarray(steps, dtype=float)
    losses = np.asarray(losses, dtype=float)
    require(
        steps.ndim == 1 and steps.shape == losses.shape, "steps and losses must be 1-D and of equal length"
    )
    require(steps.size >= MIN_POINTS, f"{steps.size} curve points; need at least {MIN_POINTS}")
    require(np.all(np.isfinite(losses)) and np.all(losses > 0), "every loss must be a positive finite number")
    require(np.all(steps >= 1), f"steps must be >= 1 (first is {steps.min():g})")
    require(np.all(np.diff(steps) > 0), "steps must be strictly increasing")
    require(huber_scale > 0, f"huber_scale={huber_scale} must be > 0")
    require(n_bootstrap >= 2, f"n_bootstrap={n_bootstrap} must be >= 2")
    log_losses = np.log(losses)
    if form is None:
        form = "power" if lrs is None else DEFAULT_SCHEDULE_FORM
    choice("form", form, ("power", *SCHEDULE_FORMS))
    require(form == "power" or lrs is not None, f"form={form!r} needs the learning rate of every step (lrs)")
    if form == "power":
        lrs, x_ref = None, float(steps[-1])
        z, w = steps / x_ref, np.zeros_like(steps)
    else:
        lrs = np.asarray(lrs, dtype=float)
        require(
            lrs.ndim == 1 and np.all(np.isfinite(lrs)) and np.all(lrs >= 0), "lrs must be finite and >= 0"
        )
        require(lrs.size >= steps[-1], f"lrs has {lrs.size} entries but the curve reaches step {steps[-1]:g}")
        require(0.0 < anneal_decay < 1.0, f"anneal_decay={anneal_decay} must be in (0, 1)")
        s1, _ = lr_areas(lrs, anneal_decay)
        idx = np.round(steps).astype(int)
        require(s1[idx[0]] > 0, "the learning rate is zero up to the first curve point")
        warmup_end = int(np.argmax(lrs >= lrs.max())) + 1  # first step at the peak rate
        after = steps > warmup_end
        if after.sum() >= MIN_POINTS and not after.all():
            steps, losses, log_losses, idx = steps[after], losses[after], log_losses[after], idx[after]
        x_ref = float(s1[idx[-1]])
        z, w = schedule_features(form, lrs, idx, x_ref, anneal_decay)
    upper_e = float(losses.min())
    # B is identified only when the observed part of the curve saw some annealing (w varies).
    penalty = _ridge(w, upper_e, huber_scale) if form != "power" else None
    best = _best_fit(log_losses, z, w, upper_e, penalty, huber_scale)
    if prior is not None and form != "power" and has_decay(lrs):
        choice("prior form", prior.form, (form,))
        # The pooled prior (module .anneal_prior): centred on ratio x the curve's own fitted final loss,
        # which depends on the fit; two passes settle it.
        z_end, w_end = schedule_features(form, lrs, np.array([lrs.size]), x_ref, anneal_decay)
        noise = _effective_noise(log_losses - np.log(np.maximum(_model(best, z, w), 1e-12)))
        for _ in range(2):
            penalty = anneal_penalty(prior, float(_model(best, z_end, w_end)[0]), noise)
            best = _best_fit(log_losses, z, w, upper_e, penalty, huber_scale, extra_starts=(best,))
    else:
        prior = None
    params = {name: float(value) for name, value in zip(PARAMS, best)}
    if form == "power":
        del params["B"]
    return CurveFit(form, params, steps, losses, lrs, x_ref, huber_scale, n_bootstrap, seed, anneal_decay,
                    prior=prior, penalty=penalty)


def _effective_noise(residuals: np.ndarray) -> float:
    """Robust residual scale, inflated for autocorrelation: the sd that independent points would need.

    ``n`` residuals with lag-1 autocorrelation ``rho`` carry the information of ``n (1 - rho) / (1 + rho)``
    independent ones (the AR(1) effective sample size), so weighing the prior against them as if they
    were independent would let a few correlated wiggles override it.
    """
    scale = max(1.4826 * float(np.median(np.abs(residuals - np.median(residuals)))), 1e-4)
    centred = residuals - residuals.mean()
    denominator = float(np.dot(centred, centred))
    rho = float(np.dot(centred[1:], centred[:-1]) / denominator) if denominator > 0 else 0.0
    rho = min(max(rho, 0.0), 0.9)
    return scale * math.sqrt((1.0 + rho) / (1.0 - rho))


def _residual_bootstrap(curve: CurveFit) -> np.ndarray:
    """Refits on block-resampled residuals; with a prior, each refit also draws its own bonus ratio."""
    z, w = curve.features(curve.steps)
    theta = curve.vector
    fitted = np.log(np.maximum(_model(theta, z, w), 1e-12))
    residuals = np.log(curve.losses) - fitted
    rng = np.random.default_rng(curve.seed)
    offsets = (curve.prior.draw_log_offsets(curve.n_bootstrap, rng) if curve.prior is not None
               else np.zeros(curve.n_bootstrap))
    samples = np.empty((curve.n_bootstrap, 4))
    for r in range(curve.n_bootstrap):
        resampled = fitted + _block_resample(residuals, rng)
        penalty = curve.penalty
        if curve.prior is not None:  # the same weight in units of B's relative error, a new centre
            weight, centre = curve.penalty
            penalty = (weight * np.exp(-offsets[r]), centre * np.exp(offsets[r]))
        samples[r], _ = _fit(resampled, z, w, theta, float(curve.losses.min()), penalty, curve.huber_scale)
    return samples


def _block_resample(residuals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A moving-block bootstrap series (Kuensch 1989): blocks of ``ceil(n^(1/3))`` consecutive residuals.

    Training-curve noise is autocorrelated (one lucky batch order lowers several evaluations in a
    row); resampling single residuals would treat it as independent and make the band too narrow.
    ``n^(1/3)`` is the order of the optimal block length (Hall, Horowitz & Jing 1995).
    """
    n = residuals.size
    length = max(1, math.ceil(n ** (1 / 3)))
    starts = rng.integers(0, n - length + 1, size=math.ceil(n / length))
    return np.concatenate([residuals[s:s + length] for s in starts])[:n]


def _backtest_drift(curve: CurveFit) -> float:
    z, w = curve.features(curve.steps)
    log_losses = np.log(curve.losses)
    noise = float(np.mean(curve.log_residuals**2))
    last = z >= z[-1] / 1.1
    rates = []
    for ratio in BACKTEST_RATIOS:
        cut = int(np.searchsorted(z, z[-1] / ratio, side="right"))  # points with z <= z_last / ratio
        if cut < MIN_POINTS + 2 or cut >= z.size:
            continue
        # Refit the early points from the full fit and from a floor at 0 (two starts), the best kept.
        upper_e = float(curve.losses[:cut].min())
        penalty = None
        if curve.prior is not None:
            penalty = curve.penalty
        elif curve.form != "power":
            penalty = _ridge(w[:cut], upper_e, curve.huber_scale)
        starts = (curve.vector, np.array([0.0, curve.params["A"] + curve.params["E"], 0.3, 0.0]))
        theta = min((_fit(log_losses[:cut], z[:cut], w[:cut], x0, upper_e, penalty, curve.huber_scale)
                     for x0 in starts), key=lambda fitted: fitted[1])[0]
        # The error on the last 10% of the clock, averaged: less of one evaluation's noise in it.
        error = float(np.mean(log_losses[last] - np.log(np.maximum(_model(theta, z[last], w[last]), 1e-12))))
        distance = float(np.log(z[-1] / z[cut - 1]))
        rates.append(max(error**2 - noise / last.sum(), 0.0) / distance**2)
    return float(np.sqrt(np.mean(rates))) if rates else 0.0


def should_stop_early(
    curve_fit: CurveFit, target_t, best_known_loss: float, margin: float = 0.0, level: float = 0.95
) -> bool:
    """True when even the optimistic end of the interval at ``target_t`` is worse than ``best_known_loss + margin``.

    For grid early stopping: a run whose curve cannot plausibly beat the best run seen so far.
    """
    require(margin >= 0, f"margin={margin} must be >= 0")
    lo, _ = curve_fit.predict_interval(target_t, level)
    return lo > best_known_loss + margin


def local_slope(steps, losses, window: int) -> float:
    """``d log L / d log t`` over the last ``window`` points (least-squares slope in log-log space).

    Negative while the loss still falls as a power of the step; near 0 when the curve has flattened
    (e.g. -0.05 means 10x more steps would cut the loss by about 11%).
    """
    steps = np.asarray(steps, dtype=float)
    losses = np.asarray(losses, dtype=float)
    require(
        steps.shape == losses.shape and steps.ndim == 1, "steps and losses must be 1-D and of equal length"
    )
    require(window >= 2, f"window={window} must be >= 2")
    require(steps.size >= window, f"window={window} is longer than the curve ({steps.size} points)")
    t, loss = steps[-window:], losses[-window:]
    require(np.all(t > 0) and np.all(loss > 0), "steps and losses in the window must be positive")
    require(np.ptp(t) > 0, "the window's steps must not all be equal")
    slope, _ = np.polyfit(np.log(t), np.log(loss), 1)
    return float(slope)

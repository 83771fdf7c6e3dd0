"""Learning-curve extrapolation: fit a partial training curve, predict its loss at a later step.

Forms (``t`` = optimizer steps done when the loss was measured, ``t >= 1``):

- ``power``: ``L(t) = E + A (t / t_ref)^-alpha`` (a saturating power law in steps);
- ``lr_area`` (when the caller passes the learning rate of every step of the schedule): the LR-annealing
  law of Tissue et al. 2024, "Scaling Law with Learning Rate Annealing" (eq. 1),
  ``L(t) = L0 + A S1(t)^-alpha - C S2(t)``, with the forward area ``S1(t) = sum of the learning rates of
  steps 1..t`` and the annealing area ``S2(t) = sum_{i<=t} m_i``, ``m_i = lambda m_{i-1} +
  max(lr_{i-1} - lr_i, 0)`` (momentum of LR decreases, ``lambda = 0.999`` as in the paper).
  We write it with the irreducible loss as its floor: ``S2`` never decreases, so with ``S2_end`` its
  value at the schedule's last step, ``L0 = E + C S2_end`` and

      L(t) = E + A (S1 / S1_ref)^-alpha + B (S2_end - S2(t)) / S2_scale,    E, A, B >= 0,

  (``B = C S2_scale``, ``S2_scale = lr_max / (1 - lambda)``, the annealing area of a full decay). It is the
  paper's law, but every prediction inside the schedule is at least ``E >= 0``: the annealing bonus still
  to come can no longer exceed what the fit says is left, and no loss prediction is negative.

Fitting: points during the LR warmup (before the schedule first reaches its peak) are left out when the
schedule is known and enough points remain (the early transient follows no power law; leaving it out
cut the errors of both forms by half or more on micro-scale curves). ``scipy.optimize.least_squares``
with Huber loss on log-loss residuals (``huber_scale``, default 0.01 = 1% of the loss), a weak prior
``B / (B_PRIOR min L)`` (``B_PRIOR`` below), bounds ``0 <= E <= min(L)``, ``A, B >= 0``, ``0 <= alpha <= 5``,
analytic Jacobian, a few starts, best kept. ``t_ref`` (or ``S1_ref``) is the last observed point, so ``A``
is the reducible loss there and the problem is well scaled.

Intervals: residual bootstrap (resample the log-space residuals, refit from the fitted parameters) for
the law, plus the residual noise of a new measurement (:mod:`.predict`): a prediction interval for the
loss that will be *measured*. Training-curve noise is autocorrelated and the form may be wrong far
ahead, so treat the interval as a lower bound on the real uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from transformer_grow.errors import require
from transformer_grow.scaling.predict import prediction_interval

ANNEAL_DECAY = 0.999
MIN_POINTS = 5
PARAMS = ("E", "A", "alpha", "B")
# Prior scale of the annealing bonus: a weak ridge (one extra residual) pulls B towards 0 unless the
# observed curve shows annealing. Without it B trades off against E when the observed part has seen little
# decay (25% into a cosine schedule) and the bonus still to come is overestimated (final losses
# underestimated by up to 95% on micro-scale cosine curves); 0.3 of the loss was the best of 0.02-0.3 there.
B_PRIOR = 0.3


def lr_areas(lrs: np.ndarray, decay: float = ANNEAL_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """``S1[t]``, ``S2[t]`` for ``t = 0..len(lrs)`` (index t = after t steps; ``lrs[i]`` is the LR of step i+1)."""
    lrs = np.asarray(lrs, dtype=float)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    drops = np.maximum(np.concatenate([[0.0], lrs[:-1] - lrs[1:]]), 0.0)
    momentum = np.empty_like(lrs)
    m = 0.0
    for i, drop in enumerate(drops):
        m = decay * m + drop
        momentum[i] = m
    s2 = np.concatenate([[0.0], np.cumsum(momentum)])
    return s1, s2


@dataclass
class CurveFit:
    """A fitted learning curve; ``params`` holds ``E``, ``A``, ``alpha`` (and ``B`` for ``lr_area``)."""

    form: str  # "power" or "lr_area"
    params: dict[str, float]
    steps: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray | None
    x_ref: float
    huber_scale: float
    n_bootstrap: int = 200
    seed: int = 0
    anneal_decay: float = ANNEAL_DECAY
    _boot: np.ndarray | None = field(default=None, repr=False)  # (R, 4) bootstrap parameter samples

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
        return _lr_features(self.lrs, np.round(t).astype(int), self.x_ref, self.anneal_decay)

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

    def predict_interval(self, t, level: float = 0.95) -> tuple[float, float]:
        """Prediction interval of the loss measured at step ``t``: law samples plus residual noise."""
        require(0.0 < level < 1.0, f"level={level} must be between 0 and 1")
        samples = self._samples_at(t)
        n_free = 4 if self.form == "lr_area" else 3
        lo, hi = prediction_interval(np.log(samples)[:, None], self.log_residuals, n_free, level, self.seed)
        return float(lo[0]), float(hi[0])

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
        return {"form": self.form, "params": dict(self.params), "x_ref": self.x_ref, "n_points": int(self.steps.size)}


def _lr_features(lrs: np.ndarray, idx: np.ndarray, s1_ref: float, decay: float) -> tuple[np.ndarray, np.ndarray]:
    s1, s2 = lr_areas(lrs, decay)
    scale = float(np.max(lrs)) / (1.0 - decay) if np.max(lrs) > 0 else 1.0
    return s1[idx] / s1_ref, (s2[-1] - s2[idx]) / scale


def _model(theta, z, w):
    E, A, alpha, B = theta[0], theta[1], theta[2], theta[3]
    return E + A * np.power(z, -alpha) + B * w


def _jacobian(theta, z, w):
    A, alpha = theta[1], theta[2]
    zpow = np.power(z, -alpha)
    return np.stack([np.ones_like(z), zpow, -A * zpow * np.log(z), w], axis=1)


def _fit(log_losses, z, w, x0, upper_e, fit_b, huber_scale) -> tuple[np.ndarray, float]:
    n_free = 4 if fit_b else 3
    # Prior on the annealing bonus (one extra residual, B / (B_PRIOR upper_e) in units of huber_scale).
    prior = huber_scale / (B_PRIOR * upper_e) if fit_b else 0.0

    def full(p):
        return p if fit_b else np.append(p, 0.0)

    def residual(p):
        r = np.log(np.maximum(_model(full(p), z, w), 1e-12)) - log_losses
        return np.append(r, prior * p[3]) if fit_b else r

    def jac(p):
        model = np.maximum(_model(full(p), z, w), 1e-12)
        j = _jacobian(full(p), z, w)[:, :n_free] / model[:, None]
        return np.vstack([j, [0.0, 0.0, 0.0, prior]]) if fit_b else j

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


def fit_learning_curve(
    steps,
    losses,
    lrs=None,
    *,
    huber_scale: float = 0.01,
    anneal_decay: float = ANNEAL_DECAY,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> CurveFit:
    """Fit a partial learning curve (see the module docstring); ``lrs[i]`` is the LR of step ``i + 1``."""
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
    if lrs is None:
        form, x_ref = "power", float(steps[-1])
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
        form, x_ref = "lr_area", float(s1[idx[-1]])
        z, w = _lr_features(lrs, idx, x_ref, anneal_decay)
    # B is identified only when the observed part of the curve saw some annealing (w varies).
    fit_b = form == "lr_area" and bool(np.ptp(w) > 1e-9 * max(float(np.max(w)), 1e-300))
    upper_e = float(losses.min())
    best, best_cost = None, np.inf
    for e_frac in (0.0, 0.5, 0.9):
        for alpha in (0.3, 1.0):
            e0 = e_frac * upper_e
            x0 = np.array([e0, max(losses[-1] - e0, 1e-6), alpha, 0.0])
            theta, cost = _fit(log_losses, z, w, x0, upper_e, fit_b, huber_scale)
            if cost < best_cost:
                best, best_cost = theta, cost
    params = {name: float(value) for name, value in zip(PARAMS, best)}
    if form == "power":
        del params["B"]
    return CurveFit(form, params, steps, losses, lrs, x_ref, huber_scale, n_bootstrap, seed, anneal_decay)


def _residual_bootstrap(curve: CurveFit) -> np.ndarray:
    z, w = curve.features(curve.steps)
    theta = curve.vector
    fitted = np.log(np.maximum(_model(theta, z, w), 1e-12))
    residuals = np.log(curve.losses) - fitted
    fit_b = curve.form == "lr_area" and bool(np.ptp(w) > 1e-9 * max(float(np.max(w)), 1e-300))
    rng = np.random.default_rng(curve.seed)
    samples = np.empty((curve.n_bootstrap, 4))
    for r in range(curve.n_bootstrap):
        resampled = fitted + rng.choice(residuals, size=residuals.size, replace=True)
        samples[r], _ = _fit(resampled, z, w, theta, float(curve.losses.min()), fit_b, curve.huber_scale)
    return samples


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

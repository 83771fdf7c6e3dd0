"""Learning-curve extrapolation: fit a partial training curve, predict its loss at a later step.

Forms (``t`` = optimizer steps done when the loss was measured, ``t >= 1``):

- ``power``: ``L(t) = E + A (t / t_ref)^-alpha`` (a saturating power law in steps);
- ``lr_area`` (when the caller passes the learning rate of every step): the LR-annealing law of
  Tissue et al. 2024, "Scaling Law with Learning Rate Annealing" (eq. 1):
  ``L(t) = E + A (S1 / S1_ref)^-alpha - C S2 / S1_ref``, with the forward area ``S1(t) = sum of the
  learning rates of steps 1..t`` and the annealing area ``S2(t) = sum_{i<=t} m_i``,
  ``m_i = lambda m_{i-1} + max(lr_{i-1} - lr_i, 0)`` (momentum of LR decreases, ``lambda = 0.999`` as in
  the paper; warmup increases are not annealing). ``C`` is fitted only when the observed part of the
  curve has some annealing (``S2 > 0``); otherwise the law reduces to the power law in ``S1``.

Fitting: ``scipy.optimize.least_squares`` with Huber loss on log-loss residuals (``huber_scale``,
default 0.01 = 1% of the loss), bounds ``0 <= E <= min(L)``, ``A >= 0``, ``0 <= alpha <= 5``,
``C >= 0``, analytic Jacobian, a few starts, best kept. ``t_ref`` (or ``S1_ref``) is the last observed
point, so ``A`` is the reducible loss there and the problem is well scaled.

Intervals: residual bootstrap (resample the log-space residuals, refit from the fitted parameters,
percentile interval of the predictions). Training-curve noise is autocorrelated and the form may be
wrong far ahead, so the interval is a lower bound on the real uncertainty: use it to rank, not to promise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from transformer_grow.errors import require

ANNEAL_DECAY = 0.999
MIN_POINTS = 5


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
    """A fitted learning curve; ``params`` holds ``E``, ``A``, ``alpha`` (and ``C`` for ``lr_area``)."""

    form: str  # "power" or "lr_area"
    params: dict[str, float]
    steps: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray | None
    x_ref: float
    huber_scale: float
    n_bootstrap: int = 200
    seed: int = 0
    _boot: np.ndarray | None = field(default=None, repr=False)  # (R, 4) bootstrap parameter samples

    def _features(self, t) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=float)
        if self.lrs is None:
            require(np.all(t >= 1), f"step {t.min()} must be >= 1")
            return t / self.x_ref, np.zeros_like(t)
        require(
            np.all(t >= 1) and np.all(t <= self.lrs.size),
            f"step(s) {t} outside the learning-rate schedule passed to the fit (steps 1..{self.lrs.size})",
        )
        s1, s2 = lr_areas(self.lrs)
        idx = np.round(t).astype(int)
        return s1[idx] / self.x_ref, s2[idx] / self.x_ref

    @property
    def _vector(self) -> np.ndarray:
        p = self.params
        return np.array([p["E"], p["A"], p["alpha"], p.get("C", 0.0)])

    def predict(self, t):
        """Predicted loss at step(s) ``t`` (float for a scalar)."""
        z, s2 = self._features(t)
        value = _model(self._vector, z, s2)
        return float(value) if np.ndim(value) == 0 else value

    def predict_interval(self, t, level: float = 0.95) -> tuple[float, float]:
        """Residual-bootstrap percentile interval of the predicted loss at step ``t``."""
        require(0.0 < level < 1.0, f"level={level} must be between 0 and 1")
        z, s2 = self._features(float(t))
        samples = _model(self.bootstrap_params().T[:, :, None], z, s2).ravel()
        samples = samples[np.isfinite(samples)]
        lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)

    def bootstrap_params(self) -> np.ndarray:
        """(R, 4) parameter samples ``[E, A, alpha, C]``, computed on first use and kept."""
        if self._boot is None:
            self._boot = _residual_bootstrap(self)
        return self._boot


def _model(theta, z, s2):
    E, A, alpha, C = theta[0], theta[1], theta[2], theta[3]
    return E + A * np.power(z, -alpha) - C * s2


def _jacobian(theta, z, s2):
    A, alpha = theta[1], theta[2]
    zpow = np.power(z, -alpha)
    return np.stack([np.ones_like(z), zpow, -A * zpow * np.log(z), -s2], axis=1)


def _fit(log_losses, z, s2, x0, upper_e, fit_c, huber_scale) -> tuple[np.ndarray, float]:
    n_free = 4 if fit_c else 3

    def residual(p):
        theta = np.append(p, 0.0) if not fit_c else p
        return np.log(np.maximum(_model(theta, z, s2), 1e-12)) - log_losses

    def jac(p):
        theta = np.append(p, 0.0) if not fit_c else p
        model = np.maximum(_model(theta, z, s2), 1e-12)
        return _jacobian(theta, z, s2)[:, :n_free] / model[:, None]

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
    return np.append(result.x, 0.0) if not fit_c else result.x, float(result.cost)


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
        form, s2_raw, x_ref = "power", np.zeros_like(steps), float(steps[-1])
        z = steps / x_ref
    else:
        lrs = np.asarray(lrs, dtype=float)
        require(
            lrs.ndim == 1 and np.all(np.isfinite(lrs)) and np.all(lrs >= 0), "lrs must be finite and >= 0"
        )
        require(lrs.size >= steps[-1], f"lrs has {lrs.size} entries but the curve reaches step {steps[-1]:g}")
        require(0.0 < anneal_decay < 1.0, f"anneal_decay={anneal_decay} must be in (0, 1)")
        s1, s2 = lr_areas(lrs, anneal_decay)
        idx = np.round(steps).astype(int)
        require(s1[idx[0]] > 0, "the learning rate is zero up to the first curve point")
        form, x_ref = "lr_area", float(s1[idx[-1]])
        z, s2_raw = s1[idx] / x_ref, s2[idx] / x_ref
    fit_c = bool(np.any(s2_raw > 0))
    upper_e = float(losses.min())
    best, best_cost = None, np.inf
    for e_frac in (0.0, 0.5, 0.9):
        for alpha in (0.3, 1.0):
            e0 = e_frac * upper_e
            x0 = np.array([e0, max(losses[-1] - e0, 1e-6), alpha, 0.0])
            theta, cost = _fit(log_losses, z, s2_raw, x0, upper_e, fit_c, huber_scale)
            if cost < best_cost:
                best, best_cost = theta, cost
    params = {"E": float(best[0]), "A": float(best[1]), "alpha": float(best[2])}
    if form == "lr_area":
        params["C"] = float(best[3])
    return CurveFit(form, params, steps, losses, lrs, x_ref, huber_scale, n_bootstrap, seed)


def _residual_bootstrap(curve: CurveFit) -> np.ndarray:
    z, s2 = curve._features(curve.steps)
    theta = curve._vector
    fitted = np.log(np.maximum(_model(theta, z, s2), 1e-12))
    residuals = np.log(curve.losses) - fitted
    fit_c = curve.form == "lr_area" and bool(np.any(s2 > 0))
    rng = np.random.default_rng(curve.seed)
    samples = np.empty((curve.n_bootstrap, 4))
    for r in range(curve.n_bootstrap):
        resampled = fitted + rng.choice(residuals, size=residuals.size, replace=True)
        samples[r], _ = _fit(resampled, z, s2, theta, float(curve.losses.min()), fit_c, curve.huber_scale)
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

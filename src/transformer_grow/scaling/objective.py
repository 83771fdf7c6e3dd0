"""The robust fitting objective shared by every scaling-law fit, with its analytic gradient.

All our laws are a constant plus a sum of power laws, ``L = E + sum_k A_k / x_k^alpha_k``
(``L(N)``, ``L(D)``, ``L(C)`` with one term, Chinchilla's ``L(N, D)`` with two). Following Hoffmann
et al. 2022 ("Training Compute-Optimal Large Language Models", Approach 3, eq. 2 and appendix D.2)
we fit them in log space with ``A_k = exp(a_k)`` and ``E = exp(e)``:

    log L_hat = LSE(e, a_1 - alpha_1 log x_1, ..., a_K - alpha_K log x_K)

(LSE = log-sum-exp) and minimise the Huber loss of the residuals ``r_i = log L_hat_i - log L_i``.
We minimise the *weighted mean* (weights sum to one per row) instead of the paper's sum: the
minimiser is the same, tolerances no longer depend on the number of points, and bootstrap
resamples and leave-one-out fits are just other weight rows.

Analytic gradient. With ``t_0 = e``, ``t_k = a_k - alpha_k u_k`` and softmax weights
``p_k = exp(t_k - log L_hat)`` (they sum to one), ``d log L_hat / d e = p_0``,
``d log L_hat / d a_k = p_k`` and ``d log L_hat / d alpha_k = -p_k u_k``. The Huber derivative is
``psi(r) = clip(r, -delta, delta)``, so ``grad = sum_i w_i psi(r_i) d log L_hat_i / d theta``.

Conditioning. ``u_k`` may be any affine image of ``log x_k``: we standardise
``u = (log x - mu) / sigma`` (mean 0, std 1), which turns the badly scaled raw problem (``log N`` is
about 20) into a well scaled one. The map between raw and standardised parameters is exact
(:func:`to_standard`, :func:`to_raw`), so a start in raw coordinates is the same function of the data
in both.

Parameter vector layout (raw or standardised): ``[e, a_1, alpha_1, ..., a_K, alpha_K]``, followed by
``log s`` for the Huber likelihood (below).

Objectives (``kind``), all on the log residuals ``r_i``:

- ``huber``: the paper's Huber loss with threshold ``delta`` (default ``1e-3``);
- ``mse``: least squares, ``r^2 / 2`` (the Huber loss with an infinite threshold);
- ``mae``: least absolute deviations, smoothed as a Huber loss with threshold ``MAE_DELTA`` so the
  gradient exists everywhere;
- ``huber-mle``: the negative log-likelihood of a Huber density with scale ``s`` fitted together with the
  law (Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", who note that the paper's
  fixed loss scale stopped its optimizer early): ``rho_k(r / s) + log s + log Z_k`` with Huber's
  ``k = 1.345`` (95% efficiency at normal noise) and ``Z_k = sqrt(2 pi) (2 Phi(k) - 1) + 2 exp(-k^2/2) / k``.
  With ``u = r / s``: ``d/dr = psi_k(u) / s``, ``d/d log s = 1 - psi_k(u) u``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transformer_grow.errors import choice

OBJECTIVES = ("huber", "huber-mle", "mse", "mae")
MAE_DELTA = 1e-6
HUBER_MLE_K = 1.345
# log of the normaliser Z_k of exp(-rho_k(u)) (see the module docstring).
HUBER_MLE_LOG_Z = math.log(
    math.sqrt(2 * math.pi) * math.erf(HUBER_MLE_K / math.sqrt(2)) + 2 * math.exp(-(HUBER_MLE_K**2) / 2) / HUBER_MLE_K
)


def threshold(kind: str, delta: float) -> float:
    """The Huber threshold of ``kind`` on log residuals (for ``huber-mle``: on ``r / s``)."""
    choice("objective", kind, OBJECTIVES)
    return {"huber": delta, "mse": math.inf, "mae": MAE_DELTA, "huber-mle": HUBER_MLE_K}[kind]


def gradient_scale(kind: str, delta: float) -> float:
    """Typical size of the objective's gradient near an optimum: the stopping test is relative to it."""
    return {"huber": delta, "mse": 1e-3, "mae": MAE_DELTA, "huber-mle": 1.0}[kind]


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: ``r^2/2`` for ``|r| <= delta``, ``delta (|r| - delta/2)`` beyond."""
    a = np.abs(r)
    c = np.minimum(a, delta)
    return c * (a - 0.5 * c)


@dataclass(frozen=True)
class Standardizer:
    """Per-term ``mu`` and ``sigma`` of ``log x``; maps parameters between raw and standard coordinates."""

    mu: np.ndarray  # (K,)
    sigma: np.ndarray  # (K,)

    @classmethod
    def identity(cls, n_terms: int) -> Standardizer:
        return cls(np.zeros(n_terms), np.ones(n_terms))

    @classmethod
    def of(cls, log_x: np.ndarray) -> Standardizer:
        """Mean and standard deviation of each column of ``log_x`` (n, K); sigma 1 where it is 0."""
        sigma = log_x.std(axis=0)
        return cls(log_x.mean(axis=0), np.where(sigma > 0, sigma, 1.0))

    def features(self, log_x: np.ndarray) -> np.ndarray:
        return (log_x - self.mu) / self.sigma

    def to_standard(self, theta_raw: np.ndarray) -> np.ndarray:
        """``a~ = a - alpha mu``, ``alpha~ = alpha sigma`` (last axis is the parameter vector)."""
        theta = np.array(theta_raw, dtype=float, copy=True)
        a_slice, alpha_slice = self._slices
        a, alpha = theta[..., a_slice], theta[..., alpha_slice]
        theta[..., a_slice] = a - alpha * self.mu
        theta[..., alpha_slice] = alpha * self.sigma
        return theta

    def to_raw(self, theta_std: np.ndarray) -> np.ndarray:
        theta = np.array(theta_std, dtype=float, copy=True)
        a_slice, alpha_slice = self._slices
        alpha = theta[..., alpha_slice] / self.sigma
        theta[..., alpha_slice] = alpha
        theta[..., a_slice] = theta[..., a_slice] + alpha * self.mu
        return theta

    @property
    def _slices(self) -> tuple[slice, slice]:
        """``a_k`` and ``alpha_k`` entries; a trailing ``log s`` (Huber likelihood) is left alone."""
        end = 1 + 2 * self.mu.size
        return slice(1, end, 2), slice(2, end, 2)


class LogHuberObjective:
    """Weighted mean Huber loss (or another ``kind``) of log-space residuals, batched over many parameter vectors.

    ``features`` (n, K) are the (standardised) log inputs, ``log_loss`` (n,) the observed log losses,
    ``weights`` (R, n) one or more non-negative weight rows (each normalised to sum 1). Every
    parameter vector (a *start*) is evaluated against the weight row ``rows[start]``.
    """

    def __init__(
        self,
        features: np.ndarray,
        log_loss: np.ndarray,
        delta: float,
        weights: np.ndarray | None = None,
        kind: str = "huber",
    ) -> None:
        self.features = np.asarray(features, dtype=float)
        if self.features.ndim == 1:
            self.features = self.features[:, None]
        self.log_loss = np.asarray(log_loss, dtype=float)
        self.kind = kind
        self.delta = threshold(kind, float(delta))
        self.scale_param = kind == "huber-mle"
        n = self.log_loss.shape[0]
        w = np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
        self.weights = w / w.sum(axis=1, keepdims=True)

    @property
    def n_terms(self) -> int:
        return self.features.shape[1]

    @property
    def n_params(self) -> int:
        return 1 + 2 * self.n_terms + int(self.scale_param)

    def log_prediction(self, theta: np.ndarray) -> np.ndarray:
        """``log L_hat`` (S, n) for parameter vectors ``theta`` (S, P)."""
        terms = self._terms(np.atleast_2d(theta))
        m = terms.max(axis=0)
        return m + np.log(np.exp(terms - m).sum(axis=0))

    def _terms(self, theta: np.ndarray) -> np.ndarray:
        """(K+1, S, n): ``e`` and ``a_k - alpha_k u_k`` for every start and point."""
        s, n = theta.shape[0], self.features.shape[0]
        terms = np.empty((self.n_terms + 1, s, n))
        terms[0] = theta[:, :1]
        for k in range(self.n_terms):
            np.multiply(theta[:, 2 + 2 * k, None], self.features[None, :, k], out=terms[k + 1])
            np.subtract(theta[:, 1 + 2 * k, None], terms[k + 1], out=terms[k + 1])
        return terms

    def value_and_grad(
        self, theta: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Objective (S,) and its gradient (S, P) for parameter vectors ``theta`` (S, P).

        Starts are processed in chunks whose working arrays stay in the CPU cache, with in-place
        operations: this is the inner loop of every fit, and it is memory-bound.
        """
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        n_starts = theta.shape[0]
        if rows is None:
            rows = np.zeros(n_starts, dtype=int)
        value = np.empty(n_starts)
        grad = np.empty((n_starts, self.n_params))
        chunk = max(1, self._CHUNK_ELEMENTS // self.log_loss.shape[0])
        for lo in range(0, n_starts, chunk):
            hi = min(lo + chunk, n_starts)
            w = self.weights if self.weights.shape[0] == 1 else self.weights[rows[lo:hi]]
            self._chunk(theta[lo:hi], w, value[lo:hi], grad[lo:hi])
        return value, grad

    _CHUNK_ELEMENTS = 16384  # starts x points per chunk: a few such arrays fit in a 1 MiB L2 cache

    def _chunk(self, theta: np.ndarray, w: np.ndarray, value_out: np.ndarray, grad_out: np.ndarray) -> None:
        s = theta.shape[0]
        n = self.log_loss.shape[0]
        exps = np.empty((self.n_terms + 1, s, n))  # t_k, then exp(t_k - m)
        exps[0] = theta[:, :1]
        for k in range(self.n_terms):
            np.multiply(theta[:, 2 + 2 * k, None], self.features[None, :, k], out=exps[k + 1])
            np.subtract(theta[:, 1 + 2 * k, None], exps[k + 1], out=exps[k + 1])
        m = exps[0].copy()
        for k in range(1, self.n_terms + 1):
            np.maximum(m, exps[k], out=m)
        total = np.zeros((s, n))
        for k in range(self.n_terms + 1):
            np.subtract(exps[k], m, out=exps[k])
            np.exp(exps[k], out=exps[k])
            total += exps[k]
        residual = np.log(total)
        residual += m
        residual -= self.log_loss
        inv_scale = None
        if self.scale_param:  # Huber likelihood: work on u = r / s, add log s + log Z_k
            log_s = theta[:, -1:]
            inv_scale = np.exp(-np.maximum(log_s, -100.0))  # a line search may try absurdly small scales
            residual *= inv_scale
        # Huber: c = min(|r|, delta); loss = c (|r| - c/2); psi = clip(r, -delta, delta).
        absr = np.abs(residual, out=m)
        c = np.minimum(absr, self.delta)
        np.multiply(c, 0.5, out=c)
        np.subtract(absr, c, out=absr)
        np.multiply(c, 2.0, out=c)
        np.multiply(c, absr, out=absr)
        np.einsum("sn,sn->s", absr, np.broadcast_to(w, (s, n)), out=value_out)
        if self.scale_param:
            u = residual.copy()
        np.clip(residual, -self.delta, self.delta, out=residual)
        if self.scale_param:
            value_out += log_s[:, 0] + HUBER_MLE_LOG_Z
            grad_out[:, -1] = 1.0 - np.einsum("sn,sn->s", residual * u, np.broadcast_to(w, (s, n)))
            residual *= inv_scale
        residual *= w
        residual /= total  # coef_i = w_i psi(r_i) / total_i; coef_i exp(t_k - m) = w_i psi_i p_k
        grad_out[:, 0] = np.einsum("sn,sn->s", residual, exps[0])
        for k in range(self.n_terms):
            np.multiply(residual, exps[k + 1], out=exps[k + 1])
            grad_out[:, 1 + 2 * k] = exps[k + 1].sum(axis=1)
            grad_out[:, 2 + 2 * k] = -np.einsum("sn,n->s", exps[k + 1], self.features[:, k])

    def value_and_grad_single(self, theta: np.ndarray, row: int = 0) -> tuple[float, np.ndarray]:
        """Objective and gradient of one parameter vector (the signature scipy's ``jac=True`` expects)."""
        value, grad = self.value_and_grad(np.asarray(theta)[None, :], np.array([row]))
        return float(value[0]), grad[0]

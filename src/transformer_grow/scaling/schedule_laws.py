"""Schedule features of the learning-curve laws: how far training has gone and how much annealing is left.

Both schedule-aware laws of :mod:`.curve` have the shape ``L(t) = E + A z(t)^-alpha + B w(t)``, with
``z`` the forward area of the schedule (the sum of the learning rates so far, scaled to 1 at the last
observed point) and ``w(t) >= 0`` the loss reduction from annealing that is *still to come* after
step ``t`` (in units of the peak rate), so that ``E`` is the floor of every prediction inside the
schedule. They differ in how a decrease of the learning rate turns into lower loss:

- ``lr_area``, Tissue et al. 2024, "Scaling Law with Learning Rate Annealing", eq. 1: the annealing area
  ``S2(t) = sum_{i<=t} m_i``, ``m_i = lambda m_{i-1} + max(lr_{i-1} - lr_i, 0)``, ``lambda = 0.999``.
  A decrease keeps adding to ``S2`` for ~``1 / (1 - lambda) = 1000`` steps, longer than a micro run.
- ``multi_power``, Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across Learning Rate
  Schedules" (ICLR 2025), eq. 2: the loss drop ``LD(t) = B sum_{k<=t} (lr_{k-1} - lr_k)
  G(lr_k^-gamma S_k(t))`` with ``S_k(t) = sum_{k<=i<=t} lr_i`` and ``G(x) = 1 - (C x + 1)^-beta``. A
  decrease pays off as a power of the forward area trained since, and at most ``B`` times its size:
  the bonus of a whole decay is bounded by ``B (lr_max - lr_min)``. ``C``, ``beta``, ``gamma`` are fixed at
  the paper's fits (Table 3; 2.0-2.1, 0.58-0.60 and 0.63-0.66 for 25M-400M models, nearly the same
  at every size), leaving ``E, A, alpha, B``: a partial curve cannot identify the shape of a kernel
  whose effect it has barely seen.
"""

from __future__ import annotations

import numpy as np

ANNEAL_DECAY = 0.999  # Tissue et al. 2024's lambda
MPL_C, MPL_BETA, MPL_GAMMA = 2.0, 0.6, 0.65  # Luo et al. 2025, Table 3 (rounded)
SCHEDULE_FORMS = ("multi_power", "lr_area")
_BLOCK = 2_000_000  # elements of one (points x decreases) block of the multi-power sum


def lr_drops(lrs: np.ndarray) -> np.ndarray:
    """``max(lr_{k-1} - lr_k, 0)`` for steps ``k = 1..len(lrs)`` (0 for the first step; warmup rises count 0)."""
    lrs = np.asarray(lrs, dtype=float)
    return np.maximum(np.concatenate([[0.0], lrs[:-1] - lrs[1:]]), 0.0)


def lr_areas(lrs: np.ndarray, decay: float = ANNEAL_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """``S1[t]``, ``S2[t]`` for ``t = 0..len(lrs)`` (index t = after t steps; ``lrs[i]`` is the LR of step i+1)."""
    lrs = np.asarray(lrs, dtype=float)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    momentum = np.empty_like(lrs)
    m = 0.0
    for i, drop in enumerate(lr_drops(lrs)):
        m = decay * m + drop
        momentum[i] = m
    s2 = np.concatenate([[0.0], np.cumsum(momentum)])
    return s1, s2


def multi_power_drop(lrs: np.ndarray, idx: np.ndarray, c: float = MPL_C, beta: float = MPL_BETA,
                     gamma: float = MPL_GAMMA) -> np.ndarray:
    """``LD(t) / B = sum_{k<=t} (lr_{k-1} - lr_k)^+ G(lr_k^-gamma S_k(t))`` at the steps ``idx`` (Luo et al. eq. 2)."""
    lrs = np.asarray(lrs, dtype=float)
    idx = np.asarray(idx, dtype=int)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    drops = lr_drops(lrs)
    ks = np.flatnonzero(drops > 0) + 1  # steps (1-based) at which the rate went down
    out = np.zeros(idx.shape, dtype=float)
    if ks.size == 0:
        return out
    # A rate of exactly 0 after a decrease: its S_k(t) is 0 until the rate rises again; G(0) = 0 either way.
    scale = np.maximum(lrs[ks - 1], 1e-12 * float(np.max(lrs))) ** -gamma
    flat = idx.ravel()
    rows = max(1, _BLOCK // ks.size)
    result = out.ravel()
    for start in range(0, flat.size, rows):
        t = flat[start:start + rows, None]
        area = np.clip(s1[t] - s1[ks - 1][None, :], 0.0, None)  # S_k(t), 0 for k > t
        g = 1.0 - np.power(c * scale[None, :] * area + 1.0, -beta)
        result[start:start + rows] = np.where(ks[None, :] <= t, g, 0.0) @ drops[ks - 1]
    return result.reshape(idx.shape)


def schedule_features(form: str, lrs: np.ndarray, idx: np.ndarray, s1_ref: float,
                      decay: float = ANNEAL_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """``(z, w)`` at steps ``idx``: forward area over ``s1_ref``, and the annealing bonus still to come."""
    lrs = np.asarray(lrs, dtype=float)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    peak = float(np.max(lrs)) if np.max(lrs) > 0 else 1.0
    if form == "lr_area":
        _, s2 = lr_areas(lrs, decay)
        return s1[idx] / s1_ref, (s2[-1] - s2[idx]) / (peak / (1.0 - decay))
    # The whole decrease of the schedule minus what has paid off by step t: >= 0, since G <= 1.
    total = float(np.sum(lr_drops(lrs)))
    return s1[idx] / s1_ref, np.maximum(total - multi_power_drop(lrs, idx), 0.0) / peak

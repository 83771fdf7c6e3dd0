"""IsoFLOP profiles: Hoffmann et al. 2022, Approach 2 (section 3.2).

Runs are grouped by compute budget (budgets within ``rtol`` of the group's smallest are one budget).
For every budget with at least ``min_runs`` distinct model sizes, a parabola of loss against ``ln N``
gives the loss-minimising size ``N_opt(C)`` (its vertex); ``D_opt(C)`` is read off the same runs
(``ln D`` is linear in ``ln N`` at fixed C: ``D = C / (6 N)`` up to the attention term). Power laws
``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` are then least-squares lines in log-log space through
the vertices. A vertex outside the sampled N range is marked ``extrapolated`` (the paper's caveat:
the grid should bracket the optimum); a profile that is not convex has no minimum and is skipped.

Approach 2 needs runs *on* a few budgets. :func:`budget_layout_problem` says why data are not: fewer
than two budgets with ``min_runs`` model sizes, most runs off such budgets, or budgets that run into their
neighbours (compute spread continuously: grouping within ``rtol`` then cuts it into pseudo-budgets whose
parabolas fit noise). The analysis skips Approach 2 with a warning then, or refuses when it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RTOL = 0.1
MIN_RUNS = 3


@dataclass(frozen=True)
class IsoFlopProfile:
    flops: float  # geometric mean compute of the budget's runs
    indices: np.ndarray  # rows of the input data in this budget
    coeffs: tuple[float, float, float]  # loss = c2 x^2 + c1 x + c0 with x = ln N
    n_opt: float
    d_opt: float
    loss_opt: float
    extrapolated: bool

    def loss_at(self, n_params):
        c2, c1, c0 = self.coeffs
        x = np.log(n_params)
        return c2 * x * x + c1 * x + c0


@dataclass(frozen=True)
class IsoFlopResult:
    profiles: list[IsoFlopProfile]
    skipped: list[dict]  # budgets left out: {"flops", "n_runs", "reason"}
    a: float | None  # N_opt = k_n C^a (None with fewer than 2 profiles)
    k_n: float | None
    b: float | None  # D_opt = k_d C^b
    k_d: float | None

    def n_opt(self, flops):
        return None if self.a is None else power_value(self.k_n, self.a, flops)

    def d_opt(self, flops):
        return None if self.b is None else power_value(self.k_d, self.b, flops)


def group_budgets(flops: np.ndarray, rtol: float = DEFAULT_RTOL) -> list[np.ndarray]:
    """Index arrays of runs whose compute is within ``rtol`` of their group's smallest, by increasing C."""
    order = np.argsort(flops, kind="stable")
    groups: list[list[int]] = []
    start = None
    for i in order:
        if start is None or flops[i] > start * (1.0 + rtol):
            groups.append([])
            start = flops[i]
        groups[-1].append(int(i))
    return [np.array(g, dtype=int) for g in groups]


def budget_layout_problem(flops: np.ndarray, n_params: np.ndarray, rtol: float = DEFAULT_RTOL,
                          min_runs: int = MIN_RUNS) -> str | None:
    """Why the runs do not sit on a few IsoFLOP budgets (module docstring), or None when they do."""
    groups = group_budgets(flops, rtol)
    usable = [i for i, g in enumerate(groups) if np.unique(n_params[g]).size >= min_runs]
    if len(usable) < 2:
        return (f"only {len(usable)} compute budget(s) (within rtol={rtol:g}) hold {min_runs} or more distinct "
                "model sizes; need 2")
    on_budgets = sum(groups[i].size for i in usable)
    if on_budgets < 0.5 * flops.size:
        return (f"only {on_budgets} of {flops.size} runs lie on budgets with {min_runs} or more model sizes: the "
                "compute values are spread out, not on a few budgets")
    lows = [float(flops[g].min()) for g in groups]
    highs = [float(flops[g].max()) for g in groups]
    crowded = 0
    for i in usable:
        near_next = i + 1 < len(groups) and lows[i + 1] < highs[i] * (1.0 + rtol)
        near_prev = i > 0 and lows[i] < highs[i - 1] * (1.0 + rtol)
        crowded += near_next or near_prev
    if crowded > len(usable) / 4:
        return (f"{crowded} of {len(usable)} budgets run into their neighbours (gap < rtol={rtol:g}): the compute "
                "values are spread continuously and grouping them makes pseudo-budgets")
    return None


# exp() of at most this stays finite in float64: power laws of degenerate fits (two budgets, a bootstrap
# resample with a vertical profile) saturate at ~1e304 instead of overflowing with a RuntimeWarning.
_LOG_MAX = 700.0


def power_value(k, a, x):
    """``k * x**a`` evaluated in log space, saturating instead of overflowing (k > 0, x > 0)."""
    log = np.log(np.asarray(k, dtype=float)) + np.asarray(a, dtype=float) * np.log(np.asarray(x, dtype=float))
    return np.exp(np.clip(log, -_LOG_MAX, _LOG_MAX))


def _power_law(flops: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(flops), np.log(values), 1)
    return float(slope), float(np.exp(np.clip(intercept, -_LOG_MAX, _LOG_MAX)))


def fit_isoflop(
    n_params: np.ndarray,
    tokens: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    *,
    counts: np.ndarray | None = None,
    groups: list[np.ndarray] | None = None,
    rtol: float = DEFAULT_RTOL,
    min_runs: int = MIN_RUNS,
) -> IsoFlopResult:
    """Approach 2 on the runs; ``counts`` (bootstrap multiplicities) weight each run's residual."""
    counts = np.ones(len(loss)) if counts is None else np.asarray(counts, dtype=float)
    groups = group_budgets(flops, rtol) if groups is None else groups
    profiles, skipped = [], []
    for group in groups:
        members = group[counts[group] > 0]
        budget = float(np.exp(np.mean(np.log(flops[group]))))
        distinct = np.unique(n_params[members]).size
        if distinct < min_runs:
            skipped.append({"flops": budget, "n_runs": int(members.size), "reason": f"{distinct} distinct N"})
            continue
        x = np.log(n_params[members])
        weight = np.sqrt(counts[members])  # polyfit weights multiply residuals
        c2, c1, c0 = np.polyfit(x, loss[members], 2, w=weight)
        if not c2 > 0:
            skipped.append({"flops": budget, "n_runs": int(members.size), "reason": "profile is not convex"})
            continue
        x_opt = -c1 / (2.0 * c2)
        slope, intercept = np.polyfit(x, np.log(tokens[members]), 1, w=weight)
        profiles.append(
            IsoFlopProfile(
                flops=budget,
                indices=members,
                coeffs=(float(c2), float(c1), float(c0)),
                n_opt=float(np.exp(x_opt)),
                d_opt=float(np.exp(intercept + slope * x_opt)),
                loss_opt=float(c0 - c1 * c1 / (4.0 * c2)),
                extrapolated=bool(x_opt < x.min() or x_opt > x.max()),
            )
        )
    a = k_n = b = k_d = None
    if len(profiles) >= 2:
        budgets = np.array([p.flops for p in profiles])
        a, k_n = _power_law(budgets, np.array([p.n_opt for p in profiles]))
        b, k_d = _power_law(budgets, np.array([p.d_opt for p in profiles]))
    return IsoFlopResult(profiles, skipped, a, k_n, b, k_d)

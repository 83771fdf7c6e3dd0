"""The schedule-fair metric: an effective compute multiplier from runs at several budgets.

A speedup read off one run's curve compares a plan's loss midway through its schedule with the
baseline's loss at the end of its own, annealed schedule; a cosine schedule's loss drops fastest
near its end, so the two are not alike. With ``budgets`` (fractions of the full budget) every
method trains at each budget with its own full schedule, and only *final* losses are compared.

Per method and seed, final loss against training FLOPs is fitted with a power law (Kaplan et al.
2020, eq. 1.3, ``L(C) = a * C^-b``) by least squares on ``log L = log a - b log C`` (exact, no
starting point; two budgets suffice). With four budgets or more, the saturating form
``L(C) = E + A * C^-alpha`` (Hoffmann et al. 2022) is fitted too, with
:func:`transformer_grow.scaling.powerlaw.fit_power_law` (Huber loss on log residuals, L-BFGS
from a start grid), and its multiplier reported alongside.

The effective compute multiplier of a method (after Kaplan et al.'s "effective compute"):

    multiplier = C_baseline(L_method) / C_method

where ``L_method`` and ``C_method`` are the method's final loss and FLOPs at the full budget and
``C_baseline(L)`` inverts the baseline's fitted law: the compute the baseline would need to reach
that loss with a schedule of its own. Above 1 the method is worth more compute than it spent (the
baseline's law is then extrapolated past its largest budget, which the report flags).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

POWER = "power"
SATURATING = "saturating"
MIN_SATURATING_BUDGETS = 4  # three parameters and one residual degree of freedom


@dataclass(frozen=True)
class LossLaw:
    """``L(C) = E + a * C^-b`` (``E = 0``: the pure power law)."""

    kind: str
    a: float
    b: float
    E: float = 0.0

    def loss(self, flops: float) -> float:
        return self.E + self.a * flops ** -self.b

    def flops_for(self, loss: float) -> float | None:
        """FLOPs at which the law reaches ``loss`` (``None``: never, e.g. below ``E``)."""
        if self.b <= 0 or loss <= self.E:
            return None
        log_c = (math.log(self.a) - math.log(loss - self.E)) / self.b
        return math.exp(log_c) if log_c < 700 else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "E": self.E}


def fit_power(flops: Sequence[float], losses: Sequence[float]) -> LossLaw:
    """Least squares of ``log L = log a - b log C`` (needs two distinct budgets)."""
    x, y = np.log(np.asarray(flops, dtype=float)), np.log(np.asarray(losses, dtype=float))
    slope, intercept = np.polyfit(x, y, 1)
    return LossLaw(POWER, float(np.exp(intercept)), float(-slope))


def fit_saturating(flops: Sequence[float], losses: Sequence[float]) -> LossLaw:
    """``E + A C^-alpha`` by :func:`~transformer_grow.scaling.powerlaw.fit_power_law`."""
    from transformer_grow.scaling.powerlaw import fit_power_law

    x, y = np.asarray(flops, dtype=float), np.asarray(losses, dtype=float)
    p = fit_power_law("C", x, y, np.arange(len(x))).params
    return LossLaw(SATURATING, float(p.A), float(p.alpha), float(p.E))


def compute_multipliers(points: dict[str, list[tuple[float, float]]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per method: fitted laws and the effective compute multiplier over ``baseline``.

    ``points[name]`` lists ``(flops, final loss)`` of the method's runs at each budget; the point
    with the most FLOPs is the full budget.
    """
    laws = {name: _fit(pts) for name, pts in points.items()}
    base_flops = max(f for f, _ in points[baseline])
    out: dict[str, dict[str, Any]] = {}
    for name, pts in points.items():
        flops, loss = max(pts)
        entry: dict[str, Any] = {"points": [list(p) for p in sorted(pts)], "final_flops": flops, "final_loss": loss,
                                 "laws": {kind: law.to_dict() for kind, law in laws[name].items()}}
        for kind, base_law in laws[baseline].items():
            needed = base_law.flops_for(loss)
            entry[f"multiplier_{kind}"] = None if needed is None else needed / flops
            entry[f"extrapolated_{kind}"] = needed is not None and needed > base_flops
        out[name] = entry
    return out


def _fit(points: list[tuple[float, float]]) -> dict[str, LossLaw]:
    flops = [f for f, _ in sorted(points)]
    losses = [v for _, v in sorted(points)]
    laws = {POWER: fit_power(flops, losses)}
    if len(set(flops)) >= MIN_SATURATING_BUDGETS:
        laws[SATURATING] = fit_saturating(flops, losses)
    return laws

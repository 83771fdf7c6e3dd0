"""Mean and interval over seeds.

Every method of a comparison is trained once per seed (initialisation and data order); a speedup
or a loss is then summarised by its mean over the seeds and a two-sided 90% Student t interval,
``mean +- t_{0.95, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (a few seeds: the
normal quantile would be too narrow). With one seed there is no interval. A value missing for a
seed (a plan that never reached the baseline's loss) is left out and counted in ``missing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LEVEL = 0.90
INTERVAL_METHOD = "90% Student t interval over seeds (mean +- t_{0.95,n-1} * sd / sqrt(n))"
NO_INTERVAL = "1 seed: no interval"


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def summarize(values: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """``{mean, low, high, n, missing, values}`` of the non-missing ``values``; ``low``/``high`` are
    ``None`` with fewer than two of them (and ``mean`` too with none)."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(present)
    out: dict[str, Any] = {"mean": None, "low": None, "high": None, "n": n, "missing": len(values) - n,
                           "values": [None if v is None else float(v) for v in values]}
    if n == 0:
        return out
    mean = sum(present) / n
    out["mean"] = mean
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1))
        half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        out["low"], out["high"] = mean - half, mean + half
    return out


def excludes(summary: dict[str, Any], value: float = 0.0) -> bool | None:
    """Whether the interval lies entirely on one side of ``value`` (``None``: no interval)."""
    if summary["low"] is None:
        return None
    return not summary["low"] <= value <= summary["high"]


def fmt(summary: dict[str, Any], spec: str = ".2f", suffix: str = "", missing: str = "n/a") -> str:
    """``1.23x [1.10, 1.36]``; ``1.23x`` with one value; notes values missing in some seeds."""
    if summary["mean"] is None:
        return missing
    text = f"{summary['mean']:{spec}}{suffix}"
    if summary["low"] is not None:
        text += f" [{summary['low']:{spec}}, {summary['high']:{spec}}]"
    if summary["missing"]:
        text += f" ({summary['missing']} of {summary['n'] + summary['missing']} seeds: {missing})"
    return text

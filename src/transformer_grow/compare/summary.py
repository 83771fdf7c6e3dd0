"""The report over seeds and budgets: aggregates, verdicts against the controls, the compute multiplier.

:func:`build_compare_report` takes every finished run of a comparison and returns the report:
the keys of :func:`~transformer_grow.compare.report.build_report` for the first seed's full-budget
runs (``runs``, ``speedup``, ``equal_flops``, ``target_loss``: what the plots show), plus

* ``methods``: each method's kind (``baseline``, ``plan``, ``control``) and its control;
* ``per_seed``: per seed, every method's final loss, loss at equal FLOPs and speedups;
* ``aggregate``: per method, mean and 90% Student t interval over seeds of each of these
  (:mod:`~transformer_grow.compare.stats`);
* ``verdicts``: per plan, whether it beats the baseline and its small-only control at equal FLOPs;
* ``regime``: tokens per parameter and the compute-optimal size (:mod:`~transformer_grow.compare.regime`);
* ``budgets``: with several budgets, the fitted laws and the effective compute multiplier
  (:mod:`~transformer_grow.compare.budgets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformer_grow.compare.budgets import POWER, SATURATING, compute_multipliers
from transformer_grow.compare.methods import BASELINE, Method, RunSpec
from transformer_grow.compare.report import SPEEDUP_KEYS, build_report
from transformer_grow.compare.stats import INTERVAL_METHOD, NO_INTERVAL, excludes, summarize
from transformer_grow.run.record import RunRecord

SPEEDUPS = tuple(SPEEDUP_KEYS.values())  # flops, wall_clock, tokens
BUDGET_FIT = ("per method and seed, final loss vs FLOPs over the budgets: L(C) = a*C^-b by least squares on "
              "log L = log a - b log C; with >= 4 budgets also L(C) = E + A*C^-alpha "
              "(transformer_grow.scaling.powerlaw.fit_power_law). multiplier = FLOPs the baseline's fitted law "
              "needs to reach the method's final loss at the full budget / the method's FLOPs")


def build_compare_report(results: Sequence[tuple[RunSpec, RunRecord]], settings: dict[str, Any],
                         regime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The comparison report of ``results`` (every run, each with its spec; records named by method)."""
    seeds = list(dict.fromkeys(spec.seed for spec, _ in results))
    methods = list({spec.method.name: spec.method for spec, _ in results if spec.fraction == 1.0}.values())
    full = {seed: [r for spec, r in results if spec.seed == seed and spec.fraction == 1.0] for seed in seeds}
    per_seed_reports = {seed: build_report(full[seed], BASELINE, settings) for seed in seeds}
    report = dict(per_seed_reports[seeds[0]])
    kinds = {m.name: m.kind for m in methods}
    for name, entry in report["speedup"].items():
        entry["kind"] = kinds.get(name)
    per_seed = {seed: _seed_summary(r) for seed, r in per_seed_reports.items()}
    report.update(
        seeds=seeds,
        methods={m.name: {"kind": m.kind, "control": m.control, "control_of": list(m.control_of)} for m in methods},
        per_seed={str(seed): s for seed, s in per_seed.items()},
        interval=INTERVAL_METHOD if len(seeds) > 1 else NO_INTERVAL,
        aggregate=aggregate(per_seed, [m.name for m in methods]),
        verdicts=verdicts({s: v["val_loss_at_equal_flops"] for s, v in per_seed.items()}, methods),
        regime=regime,
        budgets=budget_summary(results, seeds),
    )
    return report


def _seed_summary(report: dict[str, Any]) -> dict[str, Any]:
    speedups = {name: {k: entry[k] for k in SPEEDUPS} for name, entry in report["speedup"].items()}
    return {"target_loss": report["target_loss"], "equal_flops": report["equal_flops"]["flops"],
            "final_val_loss": {r["name"]: r["final_val_loss"] for r in report["runs"]},
            "val_loss_at_equal_flops": dict(report["equal_flops"]["val_loss"]), "speedup": speedups}


def aggregate(per_seed: dict[Any, dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: :func:`~transformer_grow.compare.stats.summarize` over seeds of its losses and speedups."""
    seeds = list(per_seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = {key: summarize([per_seed[s][key].get(name) for s in seeds])
                 for key in ("final_val_loss", "val_loss_at_equal_flops")}
        if name != BASELINE:
            for key in SPEEDUPS:
                entry[key] = summarize([per_seed[s]["speedup"].get(name, {}).get(key) for s in seeds])
        out[name] = entry
    return out


def _difference(equal: dict[Any, dict[str, float | None]], name: str, other: str) -> dict[str, Any]:
    """``loss(name) - loss(other)`` at equal FLOPs, summarised over seeds (negative: ``name`` is better)."""
    values = []
    for losses in equal.values():
        a, b = losses.get(name), losses.get(other)
        values.append(None if a is None or b is None else a - b)
    summary = summarize(values)
    summary["beats"] = None if summary["mean"] is None else summary["mean"] < 0
    summary["clear"] = excludes(summary)
    return summary


def _diff_text(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "no loss at equal FLOPs"
    text = f"loss {d['mean']:+.4f}"
    if d["low"] is None:
        return text + ", 1 seed: no interval"
    text += f", 90% interval [{d['low']:+.4f}, {d['high']:+.4f}]"
    return text + ("" if d["clear"] else ", within seed noise")


def _standing(d: dict[str, Any]) -> str:
    """How a plan stands against another method: ``beats`` / ``does NOT beat``, or ``is level with`` when
    the 90% interval of the difference includes 0 (a mean below 0 inside seed noise is no win)."""
    if d["clear"] is False:
        return "is level with"
    return "beats" if d["beats"] else "does NOT beat"


def verdicts(equal: dict[Any, dict[str, float | None]], methods: list[Method]) -> dict[str, dict[str, Any]]:
    """Per plan: does it beat the baseline and its small-only control at equal FLOPs, with the lines
    the report prints. ``equal[seed][name]`` is the validation loss at the seed's equal-FLOPs point."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m.kind != "plan":
            continue
        base = _difference(equal, m.name, BASELINE)
        entry: dict[str, Any] = {"vs_baseline": base, "control": m.control, "vs_control": None,
                                 "control_vs_baseline": None}
        if m.control is None:
            word = "beats" if base["beats"] else "does NOT beat"
            entry["lines"] = [f"{m.name}: {word} the baseline at equal FLOPs ({_diff_text(base)}); no small-only "
                              "control was trained."]
            out[m.name] = entry
            continue
        ctrl = _difference(equal, m.name, m.control)
        ctrl_base = _difference(equal, m.control, BASELINE)
        entry.update(vs_control=ctrl, control_vs_baseline=ctrl_base)
        b, c = f"the baseline ({_diff_text(base)})", f"its small-only control {m.control} ({_diff_text(ctrl)})"
        lines = [f"{m.name}: {_standing(base)} {b} and {_standing(ctrl)} {c} at equal FLOPs."]
        if ctrl["beats"] is False and ctrl["clear"] is not False:  # the control is ahead beyond seed noise
            if ctrl_base["beats"]:
                why = (f"; {m.name}'s gain over the baseline comes from the target being too large for the budget, "
                       "not from growth" if base["beats"] else "")
                lines.append(f"A smaller model is the better use of this budget: {m.control} trained alone, never "
                             f"grown, ends lower than both {m.name} and the baseline{why}.")
            else:
                lines.append(f"A smaller model is a better use of this budget than growing it: {m.control} trained "
                             f"alone ends lower than {m.name} (the baseline beats both).")
        noisy = [other for other, d in ((BASELINE, base), (m.control, ctrl)) if d["clear"] is False]
        if noisy:
            lines.append(f"No verdict against {' and '.join(noisy)}: the 90% interval of {m.name}'s loss difference "
                         "includes 0 (within seed noise); more seeds would be needed.")
        entry["lines"] = lines
        out[m.name] = entry
    return out


def budget_summary(results: Sequence[tuple[RunSpec, RunRecord]], seeds: list[Any]) -> dict[str, Any] | None:
    """Fitted laws and effective compute multipliers per seed, and their summary (``None``: one budget)."""
    fractions = sorted({spec.fraction for spec, _ in results})
    if len(fractions) < 2:
        return None
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        points: dict[str, list[tuple[float, float]]] = {}
        for spec, record in results:
            if spec.seed == seed:
                points.setdefault(spec.method.name, []).append((record.total_flops, record.final_val_loss))
        per_seed[str(seed)] = compute_multipliers(points, BASELINE)
    names = list(next(iter(per_seed.values())))
    multiplier = {}
    for name in names:
        multiplier[name] = {kind: summarize([per_seed[str(s)][name].get(f"multiplier_{kind}") for s in seeds])
                            for kind in (POWER, SATURATING) if f"multiplier_{kind}" in per_seed[str(seeds[0])][name]}
        multiplier[name]["extrapolated"] = any(per_seed[str(s)][name].get(f"extrapolated_{POWER}") for s in seeds)
    return {"fractions": fractions, "fit": BUDGET_FIT, "per_seed": per_seed, "multiplier": multiplier}

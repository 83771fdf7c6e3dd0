"""Markdown sections of the report over seeds, controls and budgets (see :mod:`~transformer_grow.compare.summary`)."""

from __future__ import annotations

from typing import Any

from transformer_grow.compare.regime import regime_lines
from transformer_grow.compare.stats import fmt

SPEEDUP_COLUMNS = (("flops", "FLOPs speedup"), ("wall_clock", "wall-clock speedup"), ("tokens", "tokens speedup"))


def aggregate_table(report: dict[str, Any]) -> list[str]:
    """One row per method: kind, losses and speedups as mean [90% interval] over seeds."""
    seeds = report.get("seeds", [])
    rows = [f"Over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean [{report.get('interval', '')}].", "",
            "| method | kind | final val loss | val loss at equal FLOPs | "
            + " | ".join(title for _, title in SPEEDUP_COLUMNS) + " |", "|---|---|---|---|---|---|---|"]
    methods = report.get("methods", {})
    for name, entry in report["aggregate"].items():
        speedups = [fmt(entry[key], suffix="x", missing="never reached") if key in entry else "baseline"
                    for key, _ in SPEEDUP_COLUMNS]
        rows.append(f"| {name} | {methods.get(name, {}).get('kind', '')} | {fmt(entry['final_val_loss'], '.4f')} | "
                    f"{fmt(entry['val_loss_at_equal_flops'], '.4f')} | " + " | ".join(speedups) + " |")
    return rows


def per_seed_table(report: dict[str, Any]) -> list[str]:
    rows = ["| seed | method | final val loss | val loss at equal FLOPs | FLOPs speedup | wall-clock speedup | "
            "tokens speedup |", "|---|---|---|---|---|---|---|"]

    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    for seed, s in report["per_seed"].items():
        for name, final in s["final_val_loss"].items():
            eq = s["val_loss_at_equal_flops"].get(name)
            sp = s["speedup"].get(name)
            cells = ["baseline"] * 3 if sp is None else [x(sp[key]) for key, _ in SPEEDUP_COLUMNS]
            rows.append(f"| {seed} | {name} | {final:.4f} | {'n/a' if eq is None else f'{eq:.4f}'} | "
                        + " | ".join(cells) + " |")
    return rows


def budget_table(budgets: dict[str, Any]) -> list[str]:
    """The effective compute multiplier of each method, and the fitted laws of the first seed."""
    kinds = sorted({k for m in budgets["multiplier"].values() for k in m if k != "extrapolated"})
    rows = [f"Budgets (fractions of the full budget, each run with its own full schedule): "
            f"{', '.join(f'{f:g}' for f in budgets['fractions'])}.", "", f"Fit: {budgets['fit']}.", "",
            "| method | " + " | ".join(f"compute multiplier ({k} law)" for k in kinds) + " | fitted law (seed "
            f"{next(iter(budgets['per_seed']))}) |", "|---|" + "---|" * (len(kinds) + 1)]
    first = next(iter(budgets["per_seed"].values()))
    for name, m in budgets["multiplier"].items():
        law = first[name]["laws"]["power"]
        note = " (baseline's law extrapolated)" if m.get("extrapolated") else ""
        rows.append(f"| {name} | " + " | ".join(fmt(m[k], suffix="x", missing="unreachable") + note for k in kinds)
                    + f" | L = {law['a']:.4g} * C^-{law['b']:.4g} |")
    return rows


def extra_sections(report: dict[str, Any]) -> list[str]:
    """The sections present in ``report``: regime, over seeds, verdicts, per seed, budgets."""
    lines: list[str] = []
    if report.get("regime"):
        lines += ["## Regime", "", *regime_lines(report["regime"]), ""]
    if report.get("aggregate"):
        lines += ["## Over seeds", "", *aggregate_table(report), ""]
    if report.get("verdicts"):
        lines += ["## Verdicts (equal FLOPs)", ""]
        lines += [f"- {line}" for v in report["verdicts"].values() for line in v["lines"]]
        lines.append("")
    if report.get("per_seed") and len(report["per_seed"]) > 1:
        lines += ["## Per seed", "", *per_seed_table(report), ""]
    if report.get("budgets"):
        lines += ["## Schedule-fair: effective compute multiplier", "", *budget_table(report["budgets"]), ""]
    return lines

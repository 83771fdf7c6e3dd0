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


def _event_line(event: dict[str, Any], budget: float) -> str:
    """One growth or expert event: where, what, the measured loss change; a LiGO phase's cost."""
    where = f"step {event['step']:,}" + (f" ({event['flops'] / budget:.0%} of the FLOPs)" if budget else "")
    if "experts_before" in event:  # an expert-count change of the dynamic MoE plan
        text = f"experts per layer {event['experts_before']} -> {event['experts']} ({event['kind']})"
    else:
        text = f"{event['operator']} ({event['kind']}); val loss {event['val_loss_before']:.4f} -> " \
               f"{event['val_loss_after']:.4f}"
    if event.get("ligo_steps") is not None:
        loss = "" if event.get("ligo_loss_first") is None else \
            f", its loss {event['ligo_loss_first']:.4f} -> {event['ligo_loss_last']:.4f}"
        text += (f"; LiGO phase {event['ligo_steps']} steps on {event['ligo_tokens']:,} tokens, "
                 f"{event['ligo_flops']:.3g} FLOPs (counted){loss}, "
                 f"memory bound {event['ligo_bound_bytes'] / 2**20:.2f} MiB")
    return f"{where}: {text}"


def events_lines(report: dict[str, Any]) -> list[str]:
    """Per run of the first seed: its growth and expert events and, for MoE runs, the routing at the end."""
    lines: list[str] = []
    for run in report.get("runs", []):
        events = run.get("events", [])
        routing = [p for stage in run.get("stages", []) for p in stage.get("routing", [])]
        if not events and not routing:
            continue
        budget = run["total_flops"]
        lines += [f"- **{run['name']}**: " + ("no growth event" if not events else f"{len(events)} event(s)")]
        lines += [f"  - {_event_line(e, budget)}" for e in events[:12]]
        if len(events) > 12:
            lines.append(f"  - ... {len(events) - 12} more in report.json")
        if routing:
            last = routing[-1]
            lines.append(f"  - routing at the end: {last['mean_active_experts']:.2f} active experts per token, "
                         f"{last['unrouted']:.1%} of tokens fired no expert, load imbalance "
                         f"{last['load_imbalance']:.2f} (1 = balanced), experts per layer {last['experts']}")
    return lines


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
    events = events_lines(report)
    if events:
        lines += [f"## Growth and expert events (seed {report.get('seeds', ['0'])[0]})", "", *events, ""]
    if report.get("per_seed") and len(report["per_seed"]) > 1:
        lines += ["## Per seed", "", *per_seed_table(report), ""]
    if report.get("budgets"):
        lines += ["## Schedule-fair: effective compute multiplier", "", *budget_table(report["budgets"]), ""]
    return lines

"""Speedup arithmetic and the comparison report (JSON, Markdown, PNG).

Speedup of a growth plan over the baseline (the speedup ratio of Du et al. 2024, "Stacking Your
Transformers": the cost of reaching the same loss), on each axis (FLOPs, wall-clock seconds, tokens):

    speedup = x_baseline(L*) / x_plan(L*)

where ``L*`` is the baseline's final validation loss and ``x(L*)`` the first point of a run's
validation curve at or below ``L*``, linearly interpolated between the two evaluations around the
crossing (the same rule for the baseline, whose crossing is normally its last evaluation). A plan
that never reaches ``L*`` has speedup ``None`` (``null`` in JSON). Validation losses are compared
"at equal FLOPs" by interpolating every curve at the smallest total FLOPs of all runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformer_grow.compare.sections import extra_sections
from transformer_grow.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from transformer_grow.run.record import EvalPoint, RunRecord

AXES = ("flops", "wall_seconds", "tokens")
# Report key of each axis in ``speedup`` (the spec's names).
SPEEDUP_KEYS = {"flops": "flops", "wall_seconds": "wall_clock", "tokens": "tokens"}
REPORT_SCHEMA = "transformer_grow.compare/1"


def first_reaching(curve: Sequence[EvalPoint], target_loss: float) -> int | None:
    """Index of the first evaluation at or below ``target_loss`` (``None``: never)."""
    return next((i for i, point in enumerate(curve) if point.val_loss <= target_loss), None)


def crossing(curve: Sequence[EvalPoint], target_loss: float) -> dict[str, float] | None:
    """Where ``curve`` first reaches ``target_loss``: ``{axis: value}`` for every axis, or ``None``.

    Between the last evaluation above the target and the first at or below it, every axis is
    interpolated linearly with the same weight (the fraction of the loss drop). A first
    evaluation already at or below the target counts at that evaluation.
    """
    i = first_reaching(curve, target_loss)
    if i is None:
        return None
    point = curve[i]
    if i == 0:
        return {axis: float(getattr(point, axis)) for axis in AXES}
    prev = curve[i - 1]
    drop = prev.val_loss - point.val_loss
    w = 1.0 if drop <= 0 else (prev.val_loss - target_loss) / drop
    return {axis: float(getattr(prev, axis)) + w * (float(getattr(point, axis)) - float(getattr(prev, axis)))
            for axis in AXES}


def loss_at(curve: Sequence[EvalPoint], flops: float) -> float | None:
    """Validation loss at ``flops``, linearly interpolated; ``None`` outside the curve's range."""
    if not curve or flops < curve[0].flops or flops > curve[-1].flops:
        return None
    for prev, point in itertools.pairwise(curve):
        if prev.flops <= flops <= point.flops:
            if point.flops == prev.flops:
                return point.val_loss
            w = (flops - prev.flops) / (point.flops - prev.flops)
            return prev.val_loss + w * (point.val_loss - prev.val_loss)
    return curve[-1].val_loss


def speedup(baseline: Sequence[EvalPoint], plan: Sequence[EvalPoint]) -> dict[str, float | None]:
    """FLOPs, wall-clock and tokens speedup of ``plan`` to reach the baseline's final loss."""
    target = baseline[-1].val_loss
    base = crossing(baseline, target)
    mine = crossing(plan, target)
    out: dict[str, float | None] = {}
    for axis, key in SPEEDUP_KEYS.items():
        if mine is None or base is None or mine[axis] <= 0:
            out[key] = None
        else:
            out[key] = base[axis] / mine[axis]
    return out


def build_report(runs: list[RunRecord], baseline: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The comparison report as a JSON-ready dict (``runs``, ``speedup``, ``equal_flops``...)."""
    by_name = {r.name: r for r in runs}
    base = by_name[baseline]
    equal_flops = min(r.curve[-1].flops for r in runs)
    report_speedup: dict[str, Any] = {}
    for run in runs:
        if run.name == baseline:
            continue
        entry: dict[str, Any] = dict(speedup(base.curve, run.curve))
        entry["reached_baseline_loss"] = entry["flops"] is not None
        # Which stage's model first reached the baseline's loss. A stage before the last means the
        # smaller model alone beat the target trained from scratch: the target is too large for
        # this budget, and the speedup measures that rather than growth.
        hit = first_reaching(run.curve, base.final_val_loss)
        last_stage = max(p.stage for p in run.curve)
        entry["reached_in_stage"] = None if hit is None else run.curve[hit].stage
        entry["reached_before_final_stage"] = hit is not None and run.curve[hit].stage < last_stage
        entry["val_loss_at_equal_flops"] = loss_at(run.curve, equal_flops)
        report_speedup[run.name] = entry
    return {
        "schema": REPORT_SCHEMA,
        "baseline": baseline,
        "target_loss": base.final_val_loss,
        "definition": ("speedup = baseline x / plan x at the first point reaching the baseline's final validation "
                       "loss (linear interpolation between evaluations), x in FLOPs, wall-clock seconds (training "
                       "steps and growth, evaluation excluded) and tokens; null = never reached"),
        "settings": settings,
        "runs": [r.to_dict() for r in runs],
        "speedup": report_speedup,
        "equal_flops": {"flops": equal_flops,
                        "val_loss": {r.name: loss_at(r.curve, equal_flops) for r in runs}},
    }


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "n/a (never reached)" if value is None else f"{value:{spec}}{suffix}"


def speedup_table(report: dict[str, Any]) -> list[str]:
    """Markdown table rows: one per run, with its speedups over the baseline."""
    rows = [("| run | final val loss | val loss at equal FLOPs | FLOPs | tokens | wall s | FLOPs speedup | "
            "wall-clock speedup | tokens speedup |"),
            "|---|---|---|---|---|---|---|---|---|"]
    equal = report["equal_flops"]["val_loss"]
    for run in report["runs"]:
        s = report["speedup"].get(run["name"])
        cells = ("baseline", "baseline", "baseline") if s is None else (
            _fmt(s["flops"]), _fmt(s["wall_clock"]), _fmt(s["tokens"]))
        eq = equal.get(run["name"])
        rows.append(f"| {run['name']} | {run['final_val_loss']:.4f} | {'n/a' if eq is None else f'{eq:.4f}'} | "
                    f"{run['total_flops']:.3g} | {run['total_tokens']:,} | {run['wall_seconds']:.1f} | "
                    + " | ".join(cells) + " |")
    return rows


def markdown_summary(report: dict[str, Any]) -> str:
    """The comparison as a Markdown document."""
    s = report["settings"]
    seeds = report.get("seeds", [])
    first = f" (seed {seeds[0]}; every seed below)" if len(seeds) > 1 else ""
    lines = [f"# Growth comparison: {s.get('preset', 'custom')}", "",
             f"Target model: {s.get('target', '?')}. Budget: {s.get('budget_description', '?')}.",
             f"Baseline `{report['baseline']}` final validation loss{first}: **{report['target_loss']:.4f}**.", "",
             *speedup_table(report), ""]
    early = [name for name, entry in report["speedup"].items() if entry.get("reached_before_final_stage")]
    if early:
        note = (f"Note: {', '.join(early)} reached the baseline's final loss before the last growth, with a "
                "smaller model: at this budget the target is larger than compute-optimal, so that part of the "
                "speedup comes from training the smaller model longer, not from growth itself.")
        lines += [note, ""]
    lines += extra_sections(report)
    lines += [f"Definition: {report['definition']}.", "", f"FLOPs: {s.get('flops_formula', '')}.", ""]
    if s.get("wall_clock_note"):
        lines += [f"Wall clock: {s['wall_clock_note']}", ""]
    for run in report["runs"]:
        lines.append(f"## {run['name']}")
        lines += [f"- {note}" for note in run.get("notes", [])]
        for stage in run.get("stages", []):
            lines.append(f"- stage {stage.get('name')}: {stage.get('model')}, {stage.get('tokens', 0):,} tokens, "
                         f"{stage.get('flops', 0):.3g} FLOPs, {stage.get('wall_seconds', 0.0):.1f} s")
        for event in run.get("events", []):
            lines.append(f"- growth at step {event.get('step')}: {event.get('description', '')}")
        lines.append("")
    lines += [("Plots of the first seed's runs (dashed: the baseline; dotted curves: small-only controls; dotted "
               "vertical lines: growth events, in the run's colour):"), "",
              f"![validation loss against FLOPs]({PLOTS['flops'][0]})",
              f"![validation loss against wall-clock time]({PLOTS['wall_seconds'][0]})", ""]
    return "\n".join(lines)


PLOTS = {"flops": ("loss_vs_flops.png", "training FLOPs"),
         "wall_seconds": ("loss_vs_wall.png", "wall-clock seconds (training steps and growth)")}


def plot_curves(report: dict[str, Any], axis: str, path: str | Path) -> Path:
    """Validation loss of every run against ``axis`` (``"flops"`` or ``"wall_seconds"``) as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for run in report["runs"]:
        kind = report.get("methods", {}).get(run["name"], {}).get("kind")
        style = "--" if run["name"] == report["baseline"] else ":" if kind == "control" else "-"
        (line,) = ax.plot([p[axis] for p in run["curve"]], [p["val_loss"] for p in run["curve"]], style, marker=".",
                          label=run["name"])
        for event in run.get("events", []):  # growth events: a faint vertical line in the run's colour
            if event.get(axis) is not None:
                ax.axvline(event[axis], color=line.get_color(), linewidth=0.8, linestyle=":", alpha=0.7)
    ax.axhline(report["target_loss"], color="gray", linewidth=0.8, linestyle=":", label="baseline final loss")
    finite = [p["val_loss"] for r in report["runs"] for p in r["curve"] if math.isfinite(p["val_loss"])]
    if finite:  # the first evaluations (near ln V) would squash the interesting part
        low = min(finite)
        ax.set_ylim(low - 0.05 * abs(low), min(max(finite), low + 3.0))
    ax.set_xlabel(PLOTS[axis][1])
    ax.set_ylabel("validation loss (fixed windows)")
    ax.set_title(f"{report['settings'].get('preset', 'comparison')}: validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``loss_vs_flops.png``, ``loss_vs_wall.png``, ``report.md`` and, last, ``report.json``
    into ``out_dir`` (each atomically; a ``report.json`` means the others are complete)."""
    out_dir = Path(out_dir)
    paths = {axis: plot_curves(report, axis, out_dir / name) for axis, (name, _) in PLOTS.items()}
    paths["markdown"] = atomic_write_text(out_dir / "report.md", markdown_summary(report))
    paths["json"] = atomic_write_json(out_dir / "report.json", report)
    return paths

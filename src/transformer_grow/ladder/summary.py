"""A ladder's summary: per rung, every method's final loss, the schedule-fair multiplier and the verdicts.

``summary.json`` (also committed as ``docs/results/ladder-<corpus>.json``) holds the ``corpus`` and its
``rungs``, each with its budget in ``flops``, the ``target``, ``n_over_n_opt``, the ``seeds``, and per
method under ``methods`` (``scratch``, each plan, each small-only control) the final loss and, for plans
and controls, the schedule-fair ``multiplier`` as ``{mean, low, high}`` (90% Student t interval over
seeds) with the FLOPs-to-baseline-loss ``speedup`` and the verdicts at equal FLOPs against scratch and,
for a plan, its control. ``summary.md`` is the same as a table; ``multiplier_vs_compute.png`` plots the
multiplier of every plan and control against the rung's compute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformer_grow.compare.stats import fmt
from transformer_grow.io import atomic_write_json, atomic_write_text, read_json
from transformer_grow.ladder.config import LadderConfig
from transformer_grow.ladder.run import rung_directory, rung_target

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT = "multiplier_vs_compute.png"


def _interval(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if not summary or summary.get("mean") is None:
        return None
    return {"mean": summary["mean"], "low": summary["low"], "high": summary["high"], "n": summary["n"]}


def _verdict(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    word = "level" if d["clear"] is False else ("beats" if d["beats"] else "loses")
    return {"verdict": word, "difference": _interval(d)}


def rung_summary(report: dict[str, Any], flops: float, n_over_n_opt: float) -> dict[str, Any]:
    """One rung of the summary from its comparison's ``report.json``."""
    multipliers = (report.get("budgets") or {}).get("multiplier", {})
    methods: dict[str, Any] = {}
    for name, info in report["methods"].items():
        aggregate = report["aggregate"][name]
        entry: dict[str, Any] = {"kind": info["kind"], "final_loss": _interval(aggregate["final_val_loss"]),
                                 "loss_at_equal_flops": _interval(aggregate["val_loss_at_equal_flops"])}
        if info["kind"] != "baseline":
            entry["multiplier"] = _interval(multipliers.get(name, {}).get("power"))
            entry["multiplier_extrapolated"] = bool(multipliers.get(name, {}).get("extrapolated"))
            entry["speedup_to_baseline_loss"] = _interval(aggregate.get("flops"))
        if info["kind"] == "plan":
            verdict = report["verdicts"][name]
            entry.update(control=info["control"], vs_scratch=_verdict(verdict["vs_baseline"]),
                         vs_control=_verdict(verdict["vs_control"]))
        elif info["kind"] == "control":
            entry["control_of"] = info["control_of"]
        methods[name] = entry
    regime = report.get("regime") or {}
    return {"flops": flops, "target": report["settings"]["target"], "n_params_nonembedding":
            regime.get("params_nonembedding"), "tokens": report["settings"]["budget_tokens"],
            "tokens_per_param": regime.get("tokens_per_param"), "n_over_n_opt": n_over_n_opt,
            "seeds": report["seeds"], "methods": methods}


def build_summary(config: LadderConfig, out: Path, law: dict[str, Any]) -> dict[str, Any]:
    rungs = []
    for index, flops in enumerate(config.budgets):
        path = rung_directory(out, index, flops) / "report.json"
        if not path.exists():
            continue
        report = read_json(path)
        _, ratio = rung_target(config, law, flops, 256)
        rungs.append(rung_summary(report, flops, ratio))
    return {"corpus": config.label, "law": {k: law[k] for k in ("coefficient", "exponent", "source", "profiles")},
            "settings": config.to_dict(), "multiplier": "schedule-fair effective compute multiplier: FLOPs the "
            "scratch baseline's power law (fitted on its final losses at the budget fractions) needs to reach the "
            "method's final loss, over the method's FLOPs; mean and 90% Student t interval over seeds",
            "rungs": rungs}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"# Growth ladder: {summary['corpus']}", "",
             "| C (FLOPs) | target | N/N_opt | tokens/param | method | final loss | multiplier | speedup to "
             "scratch loss | vs scratch | vs control |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rung in summary["rungs"]:
        head = (f"{rung['flops']:.3g}", rung["target"], f"{rung['n_over_n_opt']:.2f}",
                f"{rung['tokens_per_param']:.0f}")
        for name, m in rung["methods"].items():
            final = fmt({**_blank(), **(m["final_loss"] or {})}, ".4f")
            mult = fmt({**_blank(), **(m.get("multiplier") or {})}, ".2f", "x") if m["kind"] != "baseline" else ""
            speed = fmt({**_blank(), **(m.get("speedup_to_baseline_loss") or {})}, ".2f", "x") \
                if m["kind"] != "baseline" else ""
            vs_s = (m.get("vs_scratch") or {}).get("verdict", "")
            vs_c = (m.get("vs_control") or {}).get("verdict", "")
            lines.append(f"| {' | '.join(head)} | {name} | {final} | {mult} | {speed} | {vs_s} | {vs_c} |")
            head = ("", "", "", "")
    return lines


def _blank() -> dict[str, Any]:
    return {"mean": None, "low": None, "high": None, "missing": 0, "n": 0}


def write_summary(config: LadderConfig, out: Path, law: dict[str, Any],
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    summary = build_summary(config, out, law)
    atomic_write_json(out / SUMMARY_JSON, summary)
    lines = summary_lines(summary)
    atomic_write_text(out / SUMMARY_MD, "\n".join(lines) + "\n")
    for line in lines:
        log(line)
    return summary

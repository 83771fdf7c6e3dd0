"""``fit.md`` and the stdout summary, from the ``fit.json`` summary (:mod:`.report`)."""

from __future__ import annotations

from typing import Any

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _range(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _se(value: float | None) -> str:
    return "" if value is None else f" ± {value:.2g}"


def _search_line(summary: dict[str, Any]) -> str:
    how = (f"the {summary['grid_starts']}-start grid projected onto its exponent pairs (variable projection) plus "
           f"dense exponent starts: {summary['starts_run']} L-BFGS runs" if summary["projected"]
           else f"{summary['starts_run']} L-BFGS starts")
    return (f"objective {summary['objective']} on log-loss residuals (Huber delta {summary['huber_delta']:g}); {how}, "
            f"{summary['starts_at_best']} reached the best objective (within a relative {summary['best_rtol']:g}); "
            f"fit took {summary['fit_seconds']:.2f} s")


def _allocation_table(opt: dict[str, Any]) -> list[str]:
    lines = ["| C (FLOPs) | approach | N_opt | D_opt | tokens / parameter | loss | prediction interval |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in opt["at"]:
        if "N_opt" in row:
            ci = row["ci"]
            lines.append(
                f"| {row['C']:.3g} | 3: L(N, D) | {row['N_opt']:.3g} {_range(ci.get('N_opt'))} | {row['D_opt']:.3g} "
                f"{_range(ci.get('D_opt'))} | {row['tokens_per_param']:.3g} {_range(ci.get('tokens_per_param'))} | "
                f"{row['loss']:.4g} {_range(ci.get('loss'))} | {_range(row.get('pi'))} |")
        a2 = row.get("approach2")
        if a2:
            ci = a2["ci"]
            lines.append(
                f"| {row['C']:.3g} | 2: IsoFLOP{' (extrapolated)' if a2['extrapolated'] else ''} | {a2['N_opt']:.3g} "
                f"{_range(ci.get('N_opt'))} | {a2['D_opt']:.3g} {_range(ci.get('D_opt'))} | "
                f"{a2['tokens_per_param']:.3g} {_range(ci.get('tokens_per_param'))} | - | - |")
        lc = row.get("loss_c_law")
        if lc:
            lines.append(f"| {row['C']:.3g} | L(C) frontier law | - | - | - | {lc['loss']:.4g} {_range(lc['ci'])} | "
                         f"{_range(lc['pi'])} |")
    return lines


def fit_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """``fit.md``: the summary as tables (value ± standard error [confidence interval])."""
    chin, opt, level = summary["chinchilla"], summary["compute_optimal"], summary["level"]
    lines = [
        "# Scaling-law fit",
        "",
        f"Data: `{summary['source']}`, {summary['n_points']} runs (columns: "
        + ", ".join(f"{k} = `{v}`" for k, v in summary["columns"].items())
        + ")."
        + (f" {len(summary['dropped'])} runs left out." if summary["dropped"] else "")
        + (f" Filters: {'; '.join(summary['filters'])}." if summary["filters"] else ""),
        "",
    ]
    lines += [f"> note: {note}" for note in summary["notes"]]
    lines += [
        "",
        f"Intervals at {level:.0%}: `ci` = confidence interval of the law, `pi` = prediction interval of a new "
        "run (the law's uncertainty plus the runs' residual noise); ± = bootstrap standard error.",
    ]
    if chin is not None:
        lines += ["", "## L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3)", "",
                  _search_line(summary) + ".", "",
                  f"| parameter | value ± se | {level:.0%} ci |", "| --- | --- | --- |"]
        lines += [f"| {name} | {chin[name]:.4g}{_se(chin['se'][name])} | {_range(chin['ci'][name])} |"
                  for name in PARAM_NAMES]
        lines += ["", f"Residual scale (robust std of log residuals): {chin['residual_scale']:.4g}."]
        if "noise_scale" in chin:
            lines.append(f"Fitted Huber-likelihood scale s: {chin['noise_scale']:.4g}.")
    lines += ["", "## Compute-optimal allocation, both approaches", ""]
    if "a" in opt:
        lines += [f"`{opt['formula']}`", "",
                  f"Approach 3: a = {opt['a']:.3f} {_range(opt['ci']['a'])}, "
                  f"b = {opt['b']:.3f} {_range(opt['ci']['b'])}"]
    iso = summary["isoflop"]
    if iso and iso["a"] is not None:
        lines.append(f"Approach 2: a = {iso['a']:.3f} {_range(iso['ci']['a'])}, b = {iso['b']:.3f} "
                     f"{_range(iso['ci']['b'])}")
    lines += [""] + _allocation_table(opt)
    if summary["predictions"]:
        lines += ["", "## Predictions of L(N, D)", "", f"| N | D | loss ± se | {level:.0%} ci | {level:.0%} pi |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {p['N']:.3g} | {p['D']:.3g} | {p['loss']:.4g}{_se(p['se'])} | {_range(p['ci'])} | "
                  f"{_range(p['pi'])} |" for p in summary["predictions"]]
    lines += _extrapolation_markdown(summary)
    loo = summary["loo"]
    if loo:
        lines += ["", "## Leave-one-out", "",
                  f"RMSE of log-loss {loo['rmse_log_loss']:.4f}; relative error mean {loo['mean_rel_error']:.2%}, "
                  f"max {loo['max_rel_error']:.2%} (run `{loo['worst_run']}`)."]
    lines += _single_markdown(summary)
    lines += _isoflop_markdown(iso)
    boot = summary["bootstrap"]
    lines += ["", "## Uncertainty", ""]
    if boot:
        cost = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in boot["seconds_by_fit"].items())
        lines.append(f"{boot['resamples']} bootstrap resamples (seed {boot['seed']}, {boot['failed']} failed), "
                     f"{boot['seconds']:.2f} s in all ({cost}); {boot['method']}.")
    else:
        lines.append("Bootstrap off: no intervals.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _calibrated_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, row) of every Approach-3 prediction beyond the runs' compute range."""
    rows = [(f"L(N_opt, D_opt) at C={row['C']:.3g}", row) for row in summary["compute_optimal"]["at"]
            if row.get("decades_beyond")]
    rows += [(f"L(N={p['N']:.3g}, D={p['D']:.3g}) (C={p['C']:.3g})", p) for p in summary["predictions"]
             if p.get("decades_beyond")]
    return rows


def _coverage_text(extrapolation: dict[str, Any]) -> str:
    table = {row["range"]: row for row in extrapolation["leave_future_out"]["coverage"]}
    beyond = table["all beyond"]
    if not beyond["n"]:
        return "no backtest beyond its fold's range"
    calibrated = "-" if beyond["calibrated"] is None else f"{beyond['calibrated']:.0%} of {beyond['n_calibrated']}"
    return (f"backtests held {beyond['uncalibrated']:.0%} of {beyond['n']} uncalibrated, {calibrated} calibrated "
            "(each fold calibrated only by the budgets below its top)")


def _extrapolation_markdown(summary: dict[str, Any]) -> list[str]:
    rows = _calibrated_rows(summary)
    ext = summary.get("extrapolation")
    if not rows:
        return []
    level = summary["level"]
    lines = ["", "## Beyond the runs' compute range (calibrated)", ""]
    if ext and ext["discrepancy"]:
        lines += [f"Leave-future-out backtests over {ext['budgets']} compute budgets ({ext['folds']} folds): "
                  f"{_coverage_text(ext)}. {ext['method']}.", ""]
    lines += [f"| prediction | decades beyond | {level:.0%} pi | {level:.0%} pi calibrated |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {row['decades_beyond']:.2f} | {_range(row.get('pi'))} | "
              f"{_range(row.get('pi_calibrated'))} |" for label, row in rows]
    return lines


def _single_markdown(summary: dict[str, Any]) -> list[str]:
    single = summary["single_variable"]
    if len(single) == 1 and not single["skipped"]:
        return []
    lines = ["", "## Single-variable laws L(x) = E + A / x^alpha", "", "| x | points | E | A | alpha |",
             "| --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for variable in ("N", "D", "C"):
        law = single.get(variable)
        if law is None:
            if variable in single["skipped"]:
                lines.append(f"| {variable} | skipped: {single['skipped'][variable]} | - | - | - |")
            continue
        ci, se = law["ci"], law["se"]
        if law.get("note"):
            notes.append(f"- L({variable}): {law['note']}.")
        lines.append(
            f"| {variable} | {law['n_points']} ({law['points']}) | {law['E']:.4g}{_se(se['E'])} {_range(ci['E'])} | "
            f"{law['A']:.4g}{_se(se['A'])} {_range(ci['A'])} | {law['alpha']:.4g}{_se(se['alpha'])} "
            f"{_range(ci['alpha'])} |")
    return lines + ([""] + notes if notes else [])


def _isoflop_markdown(iso: dict[str, Any] | None) -> list[str]:
    if iso is None:
        return []
    lines = ["", "## IsoFLOP profiles (Approach 2)", ""]
    if iso["budgets"]:
        lines += ["| C | runs | N_opt | D_opt | loss at N_opt | vertex outside the runs |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {b['C']:.3g} | {b['n_runs']} | {b['N_opt']:.3g} | {b['D_opt']:.3g} | {b['loss_opt']:.4g} | "
                  f"{'yes' if b['extrapolated'] else 'no'} |" for b in iso["budgets"]]
    else:
        lines.append("No budget has enough distinct model sizes (3 needed).")
    if iso["a"] is not None:
        lines += ["", f"N_opt proportional to C^{iso['a']:.3f}{_se(iso['se']['a'])} {_range(iso['ci']['a'])}, "
                      f"D_opt proportional to C^{iso['b']:.3f}{_se(iso['se']['b'])} {_range(iso['ci']['b'])}."]
    return lines


def short_summary(summary: dict[str, Any]) -> str:
    """A few lines for stdout: parameters, both approaches' allocations side by side, predictions."""
    chin, opt, level = summary["chinchilla"], summary["compute_optimal"], summary["level"]
    lines = [f"{summary['n_points']} runs from {summary['source']}"]
    lines += [f"note: {note}" for note in summary["notes"]]
    if chin is not None:
        params = ", ".join(f"{name}={chin[name]:.4g}{_se(chin['se'][name])}" for name in PARAM_NAMES)
        lines += [f"L(N,D) = E + A/N^alpha + B/D^beta: {params}", "  " + _search_line(summary),
                  f"Approach 3 (L(N,D)): N_opt ~ C^{opt['a']:.3f}, D_opt ~ C^{opt['b']:.3f}"]
    iso = summary["isoflop"]
    if iso and iso["a"] is not None:
        lines.append(f"Approach 2 (IsoFLOP, {len(iso['budgets'])} budgets): N_opt ~ C^{iso['a']:.3f}, "
                     f"D_opt ~ C^{iso['b']:.3f}")
    for row in opt["at"]:
        lines.append(f"  C={row['C']:.3g}:")
        if "N_opt" in row:
            lines.append(f"    Approach 3: N_opt={row['N_opt']:.3g}, D_opt={row['D_opt']:.3g} "
                         f"({row['tokens_per_param']:.3g} tokens/param), loss {row['loss']:.4g}, "
                         f"{level:.0%} prediction interval {_range(row.get('pi'))}")
        a2 = row.get("approach2")
        if a2:
            lines.append(f"    Approach 2: N_opt={a2['N_opt']:.3g} {_range(a2['ci'].get('N_opt'))}, "
                         f"D_opt={a2['D_opt']:.3g} {_range(a2['ci'].get('D_opt'))} "
                         f"({a2['tokens_per_param']:.3g} tokens/param)"
                         + (" [extrapolated]" if a2["extrapolated"] else ""))
        lc = row.get("loss_c_law")
        if lc:
            lines.append(f"    L(C) law: loss {lc['loss']:.4g}, {level:.0%} prediction interval {_range(lc['pi'])}")
    for p in summary["predictions"]:
        lines.append(f"  L(N={p['N']:.3g}, D={p['D']:.3g}) = {p['loss']:.4g}{_se(p['se'])}, {level:.0%} ci "
                     f"{_range(p['ci'])}, prediction interval {_range(p['pi'])}")
    rows = _calibrated_rows(summary)
    if rows:
        ext = summary.get("extrapolation")
        how = _coverage_text(ext) if ext and ext["discrepancy"] else "not calibrated (no leave-future-out backtest)"
        lines.append(f"beyond the runs' compute ({how}):")
        lines += [f"  {label}: {row['decades_beyond']:.2f} decades beyond, {level:.0%} prediction interval "
                  f"{_range(row.get('pi'))}, calibrated {_range(row.get('pi_calibrated'))} [extrapolation]"
                  for label, row in rows]
    if summary["loo"]:
        loo = summary["loo"]
        lines.append(f"leave-one-out: rmse(log L) {loo['rmse_log_loss']:.4f}, "
                     f"mean rel err {loo['mean_rel_error']:.2%}, "
                     f"max {loo['max_rel_error']:.2%}")
    if summary["bootstrap"]:
        boot = summary["bootstrap"]
        cost = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in boot["seconds_by_fit"].items())
        lines.append(f"bootstrap: {boot['resamples']} resamples in {boot['seconds']:.2f} s ({cost})")
    return "\n".join(lines)

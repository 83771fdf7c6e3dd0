"""Run (or resume) a growth ladder: the IsoFLOP grid, its compute-optimal law, then one comparison per rung.

Output directory::

    ladder.json                       the settings (a rerun with other settings is refused; more seeds
                                      may be added)
    isoflop/C<budget>/d<width>-s<seed>/   one scratch run per grid point (resumable, result.json)
    isoflop.jsonl                     the grid's records (n_params_nonembedding, tokens, flops,
                                      final_val_loss, ...): ``tgrow scaling fit`` reads it too
    law.json                          the fitted law N_opt(C) = k C^a and each budget's profile
    rungs/<i>-C<budget>/              one ``tgrow compare`` output directory per rung
    summary.json, summary.md, multiplier_vs_compute.png   (:mod:`transformer_grow.ladder.summary`)

Phases. (1) At every budget the grid trains ``grid_points`` widths from scratch, centred on a prior
law's compute-optimal size; where the lowest loss lies at the grid's edge, two more widths beyond it
are trained (Hoffmann et al. 2022 note that the grid must bracket the optimum). (2) Approach 2: a
parabola in ``ln N`` per budget gives its loss-minimising size, and a line through the vertices in
log-log space gives ``N_opt(C) = k C^a`` (:func:`~transformer_grow.scaling.isoflop.fit_isoflop`).
(3) Every rung's target is the ladder's shape nearest ``N_opt`` of its budget, and
:func:`~transformer_grow.compare.run.run_compare` trains scratch, the plans and their small-only
controls at every seed and budget fraction. A killed ladder continues where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from transformer_grow.compare.regime import ComputeOptimalLaw
from transformer_grow.compare.run import GROWTH_DEFAULTS, CompareConfig, run_compare
from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_json, lock_run_dir, read_json
from transformer_grow.lab.grid import append_result, read_results
from transformer_grow.ladder.config import PRIOR_LAW, LadderConfig, tokens_for
from transformer_grow.plans.accounting import param_counts
from transformer_grow.plans.builders import build_plan
from transformer_grow.run.manager import GrowthManager, log_to_stderr
from transformer_grow.scaling.isoflop import fit_isoflop

SETTINGS_FILENAME = "ladder.json"
GRID_RESULTS = "isoflop.jsonl"
LAW_FILENAME = "law.json"
EDGE_EXTENSIONS = 2  # widths added beyond an edge minimum, per budget


def budget_label(flops: float) -> str:
    return f"C{flops:.3g}"


def rung_directory(out_dir: Path, index: int, flops: float) -> Path:
    return out_dir / "rungs" / f"{index}-{budget_label(flops)}"


def run_ladder(config: LadderConfig, out_dir: str | Path, data=None, log: Callable[[str], None] = print,
               progress_log: Callable[[str], None] | None = log_to_stderr, phases: tuple[str, ...] = ("grid", "rungs"),
               max_rungs: int | None = None) -> dict[str, Any] | None:
    """Run the ladder in ``out_dir`` (module docstring) and return its summary (``None`` when stopped early:
    ``phases`` without ``"rungs"``, or ``max_rungs`` rungs done)."""
    config.validate()
    out = Path(out_dir)
    with lock_run_dir(out, "ladder output directory"):
        from transformer_grow.data import prepare_data

        data = data if data is not None else prepare_data(config.data_config())
        _check_settings(out, config, data)
        say = progress_log or (lambda line: None)
        if "grid" in phases:
            run_grid_phase(config, out, data, say)
        law = fit_law(config, out)
        for line in law_lines(law):
            log(line)
        if "rungs" not in phases:
            return None
        for index, flops in enumerate(config.budgets):
            if max_rungs is not None and index >= max_rungs:
                return None
            compare = rung_compare_config(config, law, flops, int(data.vocab_size))
            say(f"== rung {index + 1}/{len(config.budgets)}: C = {flops:.3g} FLOPs, target "
                f"{compare.target.n_layer} x {compare.target.d_model}, {compare.budget_tokens:,} tokens")
            run_compare(compare, rung_directory(out, index, flops), data=data, log=lambda line: None,
                        progress_log=progress_log)
        from transformer_grow.ladder.summary import write_summary

        return write_summary(config, out, law, log)


def _check_settings(out: Path, config: LadderConfig, data) -> None:
    """Refuse a directory of another ladder; the seed lists may grow (each run checks its own settings)."""
    settings = {**config.to_dict(), "data_fingerprint": data.fingerprint}
    path = out / SETTINGS_FILENAME
    if path.exists():
        saved = read_json(path)
        keep = {k: v for k, v in saved.items() if k not in ("seeds", "grid_seeds")}
        if keep != {k: v for k, v in _jsonable(settings).items() if k not in ("seeds", "grid_seeds")}:
            raise ConfigError(f"{str(out)!r} holds a ladder with other settings; resume it with the same settings "
                              "(more --seeds may be added), or use another --out")
    atomic_write_json(path, settings)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------ phase 1: the IsoFLOP grid
def grid_widths(config: LadderConfig, flops: float, vocab_size: int) -> list[int]:
    """The grid's widths at ``flops``: ``grid_points`` sizes evenly spaced in ``ln N`` around the prior law."""
    guess = float(PRIOR_LAW.n_opt(flops))
    targets = np.geomspace(guess / config.grid_span, guess * config.grid_span, config.grid_points)
    return sorted({config.nearest_width(n, vocab_size)[0] for n in targets})


def run_grid_phase(config: LadderConfig, out: Path, data, say: Callable[[str], None]) -> None:
    vocab = int(data.vocab_size)
    for flops in config.budgets:
        widths = grid_widths(config, flops, vocab)
        most = 4 * config.grid_span * float(PRIOR_LAW.n_opt(flops))
        widths_all = [d for d, _ in config.widths(most, vocab)]
        for _ in range(EDGE_EXTENSIONS + 1):
            for width in widths:
                for seed in config.grid_seeds:
                    _grid_run(config, out, data, flops, width, seed, say)
            losses = _budget_losses(out, flops)
            best = min(losses, key=losses.get)
            position = widths_all.index(best)
            if best == min(widths) and position > 0:  # the optimum may lie below the grid: widen downwards
                step = max(1, widths_all.index(widths[1]) - widths_all.index(widths[0]))
                widths = sorted({*widths, widths_all[max(0, position - step)]})
            elif best == max(widths) and position + 1 < len(widths_all):
                step = max(1, widths_all.index(widths[-1]) - widths_all.index(widths[-2]))
                widths = sorted({*widths, widths_all[min(len(widths_all) - 1, position + step)]})
            else:
                break


def _budget_losses(out: Path, flops: float) -> dict[int, float]:
    """Mean final loss per width of the grid's finished runs at ``flops``."""
    by_width: dict[int, list[float]] = {}
    for record in read_results(out / GRID_RESULTS) if (out / GRID_RESULTS).exists() else []:
        if record["budget"] == flops:
            by_width.setdefault(record["d_model"], []).append(record["final_val_loss"])
    return {d: float(np.mean(v)) for d, v in by_width.items()}


def _grid_run(config: LadderConfig, out: Path, data, flops: float, width: int, seed: int,
              say: Callable[[str], None]) -> None:
    run_id = f"{budget_label(flops)}-d{width}-s{seed}"
    path = out / GRID_RESULTS
    if path.exists() and any(r["run_id"] == run_id for r in read_results(path)):
        return
    model = config.model(width, int(data.vocab_size))
    tokens = tokens_for(model, flops)
    train = config.train_config(tokens, flops).replace(seed=seed)
    plan = build_plan("scratch", model, tokens)
    manager = GrowthManager(model, plan, train_config=train, n_evals=config.n_evals,
                            eval_windows=config.eval_windows, out_dir=out / "isoflop" / budget_label(flops) /
                            f"d{width}-s{seed}", name=run_id, log=None, data_config=config.data_config())
    say(f"== isoflop {run_id}: {param_counts(model)[1]:,} parameters, {tokens:,} tokens")
    record = manager.run(data).record
    total, non_embedding = param_counts(model)
    append_result(path, {"run_id": run_id, "budget": flops, "d_model": width, "seed": seed,
                         "n_params_nonembedding": non_embedding, "n_params": total, "tokens": record.total_tokens,
                         "flops": record.total_flops, "final_val_loss": record.final_val_loss,
                         "wall_seconds": record.wall_seconds, "batch_size": train.batch_size,
                         "config": model.to_dict(), "plan": "scratch", "seed_of_data": seed})


# ------------------------------------------------------------------ phase 2: the law
def fit_law(config: LadderConfig, out: Path) -> dict[str, Any]:
    """Approach 2 on the grid's records; written to ``law.json`` and returned."""
    path = out / GRID_RESULTS
    require(path.exists(), f"{str(out)!r} has no IsoFLOP grid yet ({GRID_RESULTS}); run the grid phase first")
    records = [r for r in read_results(path) if r["budget"] in config.budgets]
    budgets = sorted({r["budget"] for r in records})
    n = np.array([r["n_params_nonembedding"] for r in records], dtype=float)
    tokens = np.array([r["tokens"] for r in records], dtype=float)
    flops = np.array([r["flops"] for r in records], dtype=float)
    loss = np.array([r["final_val_loss"] for r in records], dtype=float)
    groups = [np.array([i for i, r in enumerate(records) if r["budget"] == b]) for b in budgets]
    result = fit_isoflop(n, tokens, flops, loss, groups=groups)
    require(result.a is not None, f"the IsoFLOP grid in {str(out)!r} gives fewer than two convex profiles; "
                                  "widen --grid-span or add budgets")
    profiles = [{"flops": p.flops, "n_opt": p.n_opt, "loss_opt": p.loss_opt, "extrapolated": p.extrapolated,
                 "n_runs": int(p.indices.size)} for p in result.profiles]
    source = (f"measured: IsoFLOP grid of {len(records)} runs at {len(profiles)} budgets "
              f"({min(budgets):.3g}-{max(budgets):.3g} FLOPs), {config.label} corpus, byte tokenizer, "
              f"{config.n_layer} layers, seq {config.seq_len}, Approach 2 (Hoffmann et al. 2022)")
    law = {"coefficient": float(result.k_n), "exponent": float(result.a), "source": source, "profiles": profiles,
           "skipped": result.skipped}
    atomic_write_json(out / LAW_FILENAME, law)
    return law


def law_of(law: dict[str, Any]) -> ComputeOptimalLaw:
    return ComputeOptimalLaw(law["coefficient"], law["exponent"], law["source"])


def law_lines(law: dict[str, Any]) -> list[str]:
    lines = [f"compute-optimal law: N_opt(C) = {law['coefficient']:.4g} * C^{law['exponent']:.3f} ({law['source']})"]
    for p in law["profiles"]:
        edge = " (vertex outside the grid: extrapolated)" if p["extrapolated"] else ""
        lines.append(f"  C = {p['flops']:.3g}: N_opt = {p['n_opt']:,.0f}, loss {p['loss_opt']:.4f}{edge}")
    return lines


# ------------------------------------------------------------------ phase 3: the rungs
def rung_target(config: LadderConfig, law: dict[str, Any], flops: float, vocab_size: int):
    """``(target model, N / N_opt)`` of the rung at ``flops``."""
    n_opt = float(law_of(law).n_opt(flops))
    width, n = config.nearest_width(n_opt, vocab_size)
    return config.model(width, vocab_size), n / n_opt


def rung_compare_config(config: LadderConfig, law: dict[str, Any], flops: float, vocab_size: int) -> CompareConfig:
    target, _ = rung_target(config, law, flops, vocab_size)
    tokens = tokens_for(target, flops)
    options = dataclasses.replace(GROWTH_DEFAULTS, max_fraction=config.max_fraction)
    return CompareConfig(name=f"ladder-{config.label}-{budget_label(flops)}", target=target, budget_tokens=tokens,
                         plans=list(config.plans), train=config.train_config(tokens, flops),
                         data=config.data_config(), plan_options=options, n_evals=config.n_evals,
                         eval_windows=config.eval_windows, seeds=list(config.seeds), budgets=list(config.fractions),
                         compute_optimal=law_of(law))


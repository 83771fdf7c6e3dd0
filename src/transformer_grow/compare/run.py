"""`tgrow compare`: the from-scratch baseline and growth plans, side by side, on one budget.

Every run sees the same data order (batches are a pure function of ``(seed, step)``), the same
schedule family and the same fixed validation windows, evaluated every ``budget / n_evals``. The
budget: the baseline trains its ``budget_tokens``; in the default ``budget_mode="flops"`` every
plan spends the baseline's FLOPs (a plan with cheaper early stages trains on more tokens), in
``"tokens"`` mode every plan trains on ``budget_tokens``.

Output directory::

    compare.json          the settings (a rerun with other settings is refused)
    runs/<name>/          one resumable run per plan (checkpoint/, metrics.jsonl, result.json)
    report.json           runs, speedups, losses at equal FLOPs (written last, atomically)
    report.md, loss_vs_flops.png, loss_vs_wall.png

The runs take turns (one evaluation interval each, round by round) so that the machine's load,
which on a shared machine changes by the minute, weighs on every run alike; ``interleave=False``
runs them one after another. Killed midway, the same command continues: finished runs are kept
(their ``result.json``), unfinished ones resume from their last checkpoint (written at every
evaluation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_grow.compare.report import RunRecord, build_report, speedup_table, write_report
from transformer_grow.data import DataConfig
from transformer_grow.errors import ConfigError, require
from transformer_grow.growth.accounting import FLOPS_FORMULA, account_plan, flops_per_token
from transformer_grow.growth.builders import PLAN_NAMES, PlanOptions, build_plan
from transformer_grow.growth.manager import GrowthManager, check_growth_events, log_to_stderr
from transformer_grow.growth.plan import describe_config
from transformer_grow.io import atomic_write_json, read_json
from transformer_grow.model import ModelConfig, preset
from transformer_grow.train.config import TrainConfig

BASELINE = "scratch"
SETTINGS_FILENAME = "compare.json"


@dataclass
class CompareConfig:
    """Everything a comparison needs (a preset fills it; every field can be overridden).

    ``target`` is a model config without its final vocabulary (set from the data);
    ``train.batch_size`` counts sequences of the target's ``seq_len``.
    """

    name: str
    target: ModelConfig
    budget_tokens: int
    plans: list[str]
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    plan_options: PlanOptions = field(default_factory=PlanOptions)
    n_evals: int = 20
    eval_windows: int = 32

    def validate(self) -> None:
        require(isinstance(self.plans, list) and len(self.plans) >= 1, "compare needs at least one growth plan")
        for name in self.plans:
            require(name in PLAN_NAMES and name != BASELINE,
                    f"plan {name!r} is not a growth plan; choose from "
                    f"{', '.join(p for p in PLAN_NAMES if p != BASELINE)} (the baseline 'scratch' always runs)")
        require(len(set(self.plans)) == len(self.plans), f"plans {self.plans} list a plan twice")
        require(isinstance(self.budget_tokens, int) and self.budget_tokens > 0,
                f"budget_tokens={self.budget_tokens!r} must be a positive integer")
        self.data.validate()
        # Build every plan once with a provisional vocabulary (growth does not depend on it), so a bad
        # plan setting is refused before the data is prepared.
        vocab = 256 if self.data.tokenizer == "bytes" else self.data.vocab_size
        target = self.target.replace(vocab_size=vocab)
        for name in [BASELINE, *self.plans]:
            plan = build_plan(name, target, self.budget_tokens, self.plan_options)
            account_plan(plan, self.train.batch_size * target.seq_len)
            check_growth_events(plan)

    def to_dict(self) -> dict[str, Any]:
        options = dataclasses.asdict(self.plan_options)
        return {"name": self.name, "target": self.target.to_dict(), "budget_tokens": self.budget_tokens,
                "plans": list(self.plans), "train": self.train.to_dict(), "data": dataclasses.asdict(self.data),
                "plan_options": options, "n_evals": self.n_evals, "eval_windows": self.eval_windows}


# Growth settings chosen from benchmarks/compare_sweep.py on the quick preset (FLOPs speedup at 50%:
# 1.80x): depth factor g = 2 (g = 4: 1.42x), AdamW state carried through growth (fresh: 1.55x), no LR
# re-warmup (30 steps: 1.67x; with a schedule restart: 1.69x), schedule continues; operator stack
# (interleave: 1.80x, exact insert_zero: 1.85x, within noise); growth after 50% of the budget's tokens
# (G_stack's formula clamped to max_fraction = 0.5). Later growth (75%, 90%: 2.06x) scored higher on
# quick only because the smaller model alone reached the baseline's loss before growing (see the
# report's ``reached_before_final_stage``); on dev, growing at 75% gave 1.59x against 1.47x at 50%.
MEASURED_BEST = PlanOptions(growth_factor=2, growth_fraction=None, max_fraction=0.5)


def _quick() -> CompareConfig:
    """Sized to finish in <= 10 minutes on a quiet 2-core CPU, tokenizer training on first use included."""
    return CompareConfig(
        name="quick", target=preset("tiny", n_layer=8, d_model=128, n_head=2, seq_len=128),
        budget_tokens=614_400, plans=["g_stack"],
        train=TrainConfig(batch_size=16, lr=3e-3, warmup_steps=30, max_steps=1, device="cpu"),
        plan_options=dataclasses.replace(MEASURED_BEST), n_evals=16, eval_windows=32)


def _dev() -> CompareConfig:
    """About an hour on a 2-core CPU: a wider target (8 x 256), twice the tokens, three growth plans."""
    return CompareConfig(
        name="dev", target=preset("tiny", n_layer=8, seq_len=128), budget_tokens=1_228_800,
        plans=["g_stack", "progressive", "adaptive"],
        train=TrainConfig(batch_size=16, lr=2e-3, warmup_steps=50, max_steps=1, device="cpu"),
        plan_options=dataclasses.replace(MEASURED_BEST), n_evals=20, eval_windows=64)


def _full() -> CompareConfig:
    """A GPU-sized comparison: the ``small`` preset target, 200M tokens, every growth plan; the
    growth point follows G_stack's formula (clamped to half the budget): at this scale the small
    models of the CPU presets are no longer the better use of compute, so their 75% is not assumed."""
    return CompareConfig(
        name="full", target=preset("small"), budget_tokens=200_000_000,
        plans=["g_stack", "progressive", "compound", "adaptive"],
        train=TrainConfig(batch_size=64, lr=1e-3, warmup_steps=200, max_steps=1),
        plan_options=PlanOptions(growth_factor=2), n_evals=40, eval_windows=128)


PRESETS: dict[str, Callable[[], CompareConfig]] = {"quick": _quick, "dev": _dev, "full": _full}


def compare_preset(name: str) -> CompareConfig:
    """A fresh :class:`CompareConfig` of preset ``name`` (``quick``, ``dev``, ``full``)."""
    if name not in PRESETS:
        raise ConfigError(f"compare preset={name!r} is not allowed; choose one of {', '.join(map(repr, PRESETS))}")
    return PRESETS[name]()


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS_FILENAME
    if path.exists():
        if read_json(path) != json.loads(json.dumps(settings, default=str)):
            raise ConfigError(f"{str(out_dir)!r} holds a comparison with other settings; resume it with the same "
                              "settings, or use another --out")
    else:
        atomic_write_json(path, settings)


def run_compare(config: CompareConfig, out_dir: str | Path, data=None, log: Callable[[str], None] | None = None,
                progress_log: Callable[[str], None] | None = log_to_stderr, interleave: bool = True,
                max_runs: int | None = None, max_rounds: int | None = None) -> dict[str, Any] | None:
    """Run (or resume) the comparison in ``out_dir`` and write the report; returns it.

    ``interleave`` (default) has the runs take turns, one evaluation interval each (``budget /
    n_evals``), so that changes in the machine's load hit every run alike and the wall-clock
    ratios stay meaningful on a shared machine; otherwise the runs go one after another.
    ``data`` defaults to ``prepare_data(config.data)``. ``max_runs`` (sequential) / ``max_rounds``
    (interleaved) stop early with ``None`` (run again to continue): a time-boxed session or a test.
    ``log`` receives the final speedup table (default: print).
    """
    from transformer_grow.data import prepare_data

    config.validate()
    log = log or print
    out_dir = Path(out_dir)
    if data is None:
        data = prepare_data(config.data)
    target = config.target.replace(vocab_size=int(data.vocab_size))
    data.check_seq_len(target.seq_len)
    managers = []
    for name in [BASELINE, *config.plans]:  # every plan is built and checked before any training
        plan = build_plan(name, target, config.budget_tokens, config.plan_options)
        managers.append(GrowthManager(target, plan, train_config=config.train, n_evals=config.n_evals,
                                      eval_windows=config.eval_windows, out_dir=out_dir / "runs" / name,
                                      log=progress_log, data_config=config.data))
    settings = {**config.to_dict(), "target": target.to_dict(), "data_fingerprint": data.fingerprint}
    _check_settings(out_dir, settings)
    say = progress_log or (lambda line: None)
    if interleave:
        records = _run_interleaved(managers, data, config.n_evals, say, max_rounds)
    else:
        records = _run_sequential(managers, data, say, max_runs)
    if records is None:
        return None
    report = build_report(records, BASELINE, _report_settings(config, target, data, interleave))
    write_report(report, out_dir)
    for line in speedup_table(report):
        log(line)
    return report


def _run_sequential(managers: list[GrowthManager], data, say, max_runs: int | None) -> list[RunRecord] | None:
    records: list[RunRecord] = []
    started = time.perf_counter()
    for i, manager in enumerate(managers):
        if max_runs is not None and i >= max_runs:
            return None
        say(f"== run {i + 1}/{len(managers)}: {manager.name} ({len(manager.plan.stages)} stage(s), "
            f"{manager.account.total_steps:,} steps planned; {time.perf_counter() - started:.0f}s elapsed)")
        records.append(manager.run(data).record)
    return records


def _run_interleaved(managers: list[GrowthManager], data, n_evals: int, say,
                     max_rounds: int | None) -> list[RunRecord] | None:
    """Round k trains every unfinished run up to k / n_evals of its budget; a last round finishes them."""
    results: dict[str, RunRecord] = {}
    started = time.perf_counter()
    try:
        for manager in managers:
            finished = manager.open(data)
            if finished is not None:
                results[manager.name] = finished.record
        for k in range(1, n_evals + 2):
            if len(results) == len(managers):
                break
            if max_rounds is not None and k > max_rounds:
                return None
            for manager in managers:
                if manager.name not in results:
                    done = manager.advance(until_fraction=k / n_evals if k <= n_evals else None)
                    if done is not None:
                        results[manager.name] = done.record
            elapsed = time.perf_counter() - started
            rounds = min(k, n_evals)
            say(f"== round {rounds}/{n_evals} done: {', '.join(m.name for m in managers)}; {elapsed:.0f}s elapsed, "
                f"ETA {elapsed * (n_evals - rounds) / rounds:.0f}s")
    finally:
        for manager in managers:
            manager.close()
    return [results[m.name] for m in managers]


def _report_settings(config: CompareConfig, target: ModelConfig, data, interleave: bool) -> dict[str, Any]:
    mode = config.plan_options.budget_mode
    baseline_flops = config.budget_tokens * flops_per_token(target)
    if mode == "flops":
        budget = (f"equal FLOPs: every run spends the baseline's {baseline_flops:.4g} FLOPs "
                  f"({config.budget_tokens:,} tokens of the target); growth runs train on more tokens")
    else:
        budget = f"equal tokens: every run trains on {config.budget_tokens:,} tokens"
    return {"preset": config.name, "target": describe_config(target), "budget_mode": mode,
            "budget_tokens": config.budget_tokens, "budget_flops": baseline_flops, "budget_description": budget,
            "flops_formula": FLOPS_FORMULA, "plans": [BASELINE, *config.plans],
            "batch_tokens": config.train.batch_size * target.seq_len, "lr": config.train.lr,
            "schedule": config.train.schedule, "warmup_steps": config.train.warmup_steps,
            "plan_options": dataclasses.asdict(config.plan_options), "n_evals": config.n_evals,
            "eval_windows": config.eval_windows, "data": getattr(data, "description", ""),
            "data_fingerprint": getattr(data, "fingerprint", None),
            "interleaved": interleave,
            "wall_clock_note": ("training-step and growth time of each run, measured in this process; evaluation and "
                                "checkpointing excluded; " + (
                                    "the runs took turns every evaluation interval, so other load on the machine "
                                    "hits them alike" if interleave else
                                    "the runs went one after another: other load on the machine skews the ratios"))}

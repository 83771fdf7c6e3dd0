"""`tgrow compare`: the from-scratch baseline and growth plans, side by side, on one budget.

Every run sees the same data order (batches are a pure function of ``(seed, step)``), the same
schedule family and the same fixed validation windows, evaluated every ``budget / n_evals``. The
budget: the baseline trains its ``budget_tokens``; in the default ``budget_mode="flops"`` every
plan spends the baseline's FLOPs (a plan with cheaper early stages trains on more tokens), in
``"tokens"`` mode every plan trains on ``budget_tokens``.

Output directory::

    compare.json                   the settings (a rerun with other settings is refused)
    runs/seed{S}/<name>/           one resumable run per method and seed (checkpoint/, metrics.jsonl,
                                   result.json); runs/seed{S}/budget{F}/<name>/ at budget fraction F
    report.json                    runs, speedups, losses at equal FLOPs, intervals over seeds, verdicts
                                   against the controls, regime, compute multiplier (written last, atomically)
    report.md, loss_vs_flops.png, loss_vs_wall.png

The methods (:mod:`~transformer_grow.compare.methods`): the baseline, the plans and, with
``controls``, each plan's first-stage model trained alone on the baseline's FLOPs; each once per
seed and, with ``budgets``, once per budget fraction (:mod:`~transformer_grow.compare.budgets`).

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

from transformer_grow.compare.methods import BASELINE, RunSpec, run_specs
from transformer_grow.compare.regime import (
    CHINCHILLA_RULE,
    STDLIB_BYTES_LAW,
    ComputeOptimalLaw,
    regime,
    regime_lines,
)
from transformer_grow.compare.report import RunRecord, speedup_table, write_report
from transformer_grow.compare.sections import aggregate_table
from transformer_grow.compare.summary import build_compare_report
from transformer_grow.data import DataConfig
from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_json, lock_run_dir, read_json
from transformer_grow.model import ModelConfig, preset
from transformer_grow.plans.accounting import FLOPS_FORMULA, account_plan, flops_per_token, param_counts
from transformer_grow.plans.builders import PLAN_NAMES, PlanOptions, build_plan
from transformer_grow.plans.plan import describe_config
from transformer_grow.run.event import check_growth_events
from transformer_grow.run.manager import GrowthManager, log_to_stderr
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.memory import check_training_memory

SETTINGS_FILENAME = "compare.json"
MAX_BUDGET_TOKENS = 10**15
# A plan may overspend the baseline's budget by this much (its stages are whole steps); the presets'
# plans stay within 0.2%.
BUDGET_TOLERANCE = 0.05


@dataclass
class CompareConfig:
    """Everything a comparison needs (a preset fills it; every field can be overridden).

    ``target`` is a model config without its final vocabulary (set from the data);
    ``train.batch_size`` counts sequences of the target's ``seq_len``.

    Attributes:
        name: the comparison's name (a preset's name, or a label).
        target: the model every plan grows into; the baseline trains it from scratch.
        budget_tokens: the baseline's token budget (e.g. 2M).
        plans: the growth plans compared with the baseline (``scratch`` always runs).
        train: the training settings of every run.
        data: the corpus and tokenizer of every run.
        plan_options: the settings of the growth plans.
        n_evals: validation points over the budget.
        eval_windows: number of fixed validation windows.
        controls: also train each plan's first-stage model alone, never grown, on the baseline's
            FLOPs (a ``small-only:L4`` control per distinct first-stage model): a plan that does not
            beat it gains nothing from growing.
        seeds: seeds of initialisation and data order; every method runs once per seed and the
            report gives the mean and a 90% Student t interval over them.
        budgets: fractions of the budget (e.g. 0.25,0.5) at which every method also trains, each with
            its own full schedule, for the schedule-fair effective compute multiplier (the full
            budget always runs); unset, or empty on the command line (``--budgets ""``, which switches a
            preset's budgets off): the full budget only.
        compute_optimal: the law ``N_opt(C) = coefficient * C^exponent`` the report checks the
            target's size against (``{coefficient: G, exponent: a, source: text}``).
        hf_family: the Hugging Face family of the target (``tgrow compare --hf-config``; a
            :class:`~transformer_grow.hf.FamilyInfo` dict): the target keeps its own vocabulary, and every
            run records the family so that ``tgrow hf export`` writes it as ``save_pretrained`` output.
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
    controls: bool = True
    seeds: list[int] = field(default_factory=lambda: [0])
    budgets: list[float] | None = None
    compute_optimal: ComputeOptimalLaw | None = CHINCHILLA_RULE
    hf_family: dict[str, Any] | None = None

    def validate(self) -> None:
        require(isinstance(self.plans, list) and len(self.plans) >= 1, "compare needs at least one growth plan")
        for name in self.plans:
            require(name in PLAN_NAMES and name != BASELINE,
                    f"plan {name!r} is not a growth plan; choose from "
                    f"{', '.join(p for p in PLAN_NAMES if p != BASELINE)} (the baseline 'scratch' always runs)")
        require(len(set(self.plans)) == len(self.plans), f"plans {self.plans} list a plan twice")
        require(isinstance(self.budget_tokens, int) and 0 < self.budget_tokens <= MAX_BUDGET_TOKENS,
                f"budget_tokens={self.budget_tokens!r} must be a positive integer of at most {MAX_BUDGET_TOKENS:.0e}")
        for name, least, most in (("n_evals", 2, 10_000), ("eval_windows", 1, 1 << 20)):
            value = getattr(self, name)
            require(isinstance(value, int) and least <= value <= most,
                    f"{name}={value!r} is not allowed; it must be an integer from {least} to {most:,}")
        self.data.validate()
        self.plan_options.validate()
        # Build every plan once with a provisional vocabulary (growth does not depend on it), so a bad
        # plan setting is refused before the data is prepared.
        vocab = 256 if self.data.tokenizer == "bytes" else self.data.vocab_size
        target = self.target if self.hf_family else self.target.replace(vocab_size=vocab)
        check_training_memory(target, self.train)
        batch_tokens = self.train.batch_size * target.seq_len
        accounts = {}
        for name in [BASELINE, *self.plans]:
            plan = build_plan(name, target, self.budget_tokens, self.plan_options)
            accounts[name] = account_plan(plan, batch_tokens)
            check_growth_events(plan)
        require(self.budget_tokens >= self.n_evals * batch_tokens,
                f"budget_tokens={self.budget_tokens:,} is too small: the baseline must take at least one step of "
                f"{batch_tokens:,} tokens per evaluation interval, so at least n_evals x batch_size x seq_len = "
                f"{self.n_evals * batch_tokens:,} tokens")
        for name in self.plans:
            self._check_budget_held(name, accounts[name], accounts[BASELINE])
        self._validate_runs(target, batch_tokens)

    def _check_budget_held(self, name: str, account, baseline) -> None:
        """Refuse a plan that, rounded to whole steps, spends clearly more than the baseline: its
        comparison would not be on one budget (this happens when the budget is a few steps long)."""
        mode = self.plan_options.budget_mode
        spent, allowed = ((account.total_flops, baseline.total_flops) if mode == "flops"
                          else (account.total_tokens, baseline.total_tokens))
        unit = "FLOPs" if mode == "flops" else "tokens"
        require(spent <= allowed * (1 + BUDGET_TOLERANCE),
                f"plan {name!r} would spend {spent / allowed:.2f}x the baseline's {unit} "
                f"once its stages are rounded to whole steps of {account.tokens_per_step:,} tokens; raise "
                f"budget_tokens (now {self.budget_tokens:,}) so that every stage takes many steps")

    def fractions(self) -> list[float]:
        """The budget fractions every method trains at: 1.0 (the full budget) first, then ``budgets``."""
        return [1.0, *sorted({float(f) for f in self.budgets or []} - {1.0})]

    def _validate_runs(self, target: ModelConfig, batch_tokens: int) -> None:
        """Seeds, budgets, controls and the compute-optimal law; builds every run's plan."""
        require(isinstance(self.controls, bool), f"controls={self.controls!r} is not allowed; give true or false")
        require(isinstance(self.seeds, list) and 1 <= len(self.seeds) <= 1000
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in self.seeds),
                f"seeds={self.seeds!r} is not allowed; give 1 to 1000 integers from 0 to 2^63-1 (e.g. 0,1,2)")
        require(len(set(self.seeds)) == len(self.seeds), f"seeds={self.seeds} lists a seed twice")
        if self.budgets is not None:
            require(isinstance(self.budgets, list) and len(self.budgets) >= 1
                    and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1
                            for f in self.budgets) and len(self.fractions()) >= 2,
                    f"budgets={self.budgets!r} is not allowed; give fractions of the budget in (0, 1], at least one "
                    "below 1 (e.g. 0.25,0.5; the full budget always runs)")
            smallest = min(self.fractions())
            require(smallest * self.budget_tokens >= self.n_evals * batch_tokens,
                    f"budgets fraction {smallest:g} is too small: {round(smallest * self.budget_tokens):,} tokens "
                    f"give less than one step of {batch_tokens:,} tokens per evaluation interval (n_evals="
                    f"{self.n_evals}); raise it or budget_tokens")
        if self.compute_optimal is not None:
            require(isinstance(self.compute_optimal, ComputeOptimalLaw),
                    f"compute_optimal={self.compute_optimal!r} is not allowed; give {{coefficient, exponent, source}}")
            self.compute_optimal.validate()
        for spec in run_specs(target, self.budget_tokens, self.plans, self.plan_options, self.controls,
                              self.seeds[:1], self.fractions()):
            account_plan(spec.plan, batch_tokens)
            check_growth_events(spec.plan)

    def to_dict(self) -> dict[str, Any]:
        options = dataclasses.asdict(self.plan_options)
        law = None if self.compute_optimal is None else dataclasses.asdict(self.compute_optimal)
        return {"name": self.name, "target": self.target.to_dict(), "budget_tokens": self.budget_tokens,
                "plans": list(self.plans), "train": self.train.to_dict(), "data": dataclasses.asdict(self.data),
                "plan_options": options, "n_evals": self.n_evals, "eval_windows": self.eval_windows,
                "controls": self.controls, "seeds": list(self.seeds), "budgets": self.fractions()[1:] or None,
                "compute_optimal": law, **({"hf_family": self.hf_family} if self.hf_family else {})}


# Growth settings of the presets: depth factor g = 2, AdamW state carried through growth, no LR re-warmup,
# the schedule continues, stacking, growth after half the budget (G_stack's formula clamped to
# max_fraction = 0.5). They were the best of a sweep (benchmarks/compare_sweep.py) on the *old* quick
# preset, whose target was far larger than compute-optimal; in the present regime they are G_stack's
# defaults, not yet a measured optimum (run the sweep with --seeds to choose among them).
GROWTH_DEFAULTS = PlanOptions(growth_factor=2, growth_fraction=None, max_fraction=0.5)


# The CPU presets sit in the regime of real pre-training: the target is not larger than the
# compute-optimal size for its budget, measured on this corpus and tokenizer (STDLIB_BYTES_LAW:
# ~100 tokens per parameter at these budgets, far from the Chinchilla ratio of 20). At such budgets
# that means tiny models: on the old quick preset (8 x 128 target, 0.2 tokens per parameter) the
# 4-layer first stage trained alone beat both the baseline and g_stack.
_CPU_TRAIN = TrainConfig(batch_size=32, lr=3e-3, warmup_steps=30, max_steps=1, device="cpu")
_BYTES = DataConfig(tokenizer="bytes")


def _quick() -> CompareConfig:
    """<= 10 minutes on a quiet 2-core CPU: a 2 x 32 target (33k non-embedding parameters) on 2M tokens
    (5.9e11 FLOPs, N_opt ~ 34k), g_stack from one layer, its small-only control, three seeds."""
    return CompareConfig(
        name="quick", target=ModelConfig(n_layer=2, d_model=32, n_head=2, seq_len=128),
        budget_tokens=2_000_000, plans=["g_stack"], train=_CPU_TRAIN, data=_BYTES,
        plan_options=dataclasses.replace(GROWTH_DEFAULTS), n_evals=16, eval_windows=32, seeds=[0, 1, 2],
        compute_optimal=STDLIB_BYTES_LAW)


def _dev() -> CompareConfig:
    """About an hour on a quiet 2-core CPU: a 4 x 32 target (66k parameters) on 7.4M tokens (4e12 FLOPs,
    N_opt ~ 67k), three plans with their controls, three seeds, and the schedule-fair multiplier from
    budgets 1/4, 1/2 and 1. ``progressive`` comes first: it is the measured best here (1.41x fewer FLOPs
    [1.37, 1.45] over five seeds, the only plan ahead of the baseline beyond seed noise)."""
    return CompareConfig(
        name="dev", target=ModelConfig(n_layer=4, d_model=32, n_head=2, seq_len=128),
        budget_tokens=7_372_800, plans=["progressive", "g_stack", "adaptive"], train=_CPU_TRAIN, data=_BYTES,
        plan_options=dataclasses.replace(GROWTH_DEFAULTS), n_evals=20, eval_windows=64, seeds=[0, 1, 2],
        budgets=[0.25, 0.5], compute_optimal=STDLIB_BYTES_LAW)


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
    """Refuse a directory of another comparison. The seeds may change (every run lives under its seed's
    directory and checks its own settings): a comparison found within seed noise gains seeds in place."""
    path = out_dir / SETTINGS_FILENAME
    settings = json.loads(json.dumps(settings, default=str))
    if path.exists():
        saved = read_json(path)
        if {k: v for k, v in saved.items() if k != "seeds"} != {k: v for k, v in settings.items() if k != "seeds"}:
            raise ConfigError(f"{str(out_dir)!r} holds a comparison with other settings; resume it with the same "
                              "settings (--seeds may change), or use another --out")
        if saved.get("seeds") == settings.get("seeds"):
            return
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
    config.validate()
    with lock_run_dir(out_dir, "compare output directory"):
        return _run_compare_locked(config, Path(out_dir), data, log or print, progress_log, interleave, max_runs,
                                   max_rounds)


def _run_compare_locked(config: CompareConfig, out_dir: Path, data, log: Callable[[str], None],
                        progress_log: Callable[[str], None] | None, interleave: bool, max_runs: int | None,
                        max_rounds: int | None) -> dict[str, Any] | None:
    from transformer_grow.data import prepare_data

    if data is None:
        data = prepare_data(config.data)
    target = config.target if config.hf_family else config.target.replace(vocab_size=int(data.vocab_size))
    require(target.vocab_size >= data.vocab_size, f"the HF target's vocab_size={target.vocab_size} is smaller than "
                                                  f"the data's vocabulary of {data.vocab_size} tokens; use a "
                                                  "tokenizer with at most that many tokens")
    data.check_seq_len(target.seq_len)
    specs = run_specs(target, config.budget_tokens, config.plans, config.plan_options, config.controls,
                      config.seeds, config.fractions())
    managers = [GrowthManager(target, spec.plan, train_config=config.train.replace(seed=spec.seed),
                              n_evals=config.n_evals, eval_windows=config.eval_windows,
                              out_dir=out_dir / spec.directory, name=spec.label, log=progress_log,
                              data_config=config.data, hf_family=config.hf_family)
                for spec in specs]  # every run is built and checked before any training
    settings = {**config.to_dict(), "target": target.to_dict(), "data_fingerprint": data.fingerprint}
    _check_settings(out_dir, settings)
    say = progress_log or (lambda line: None)
    if interleave:
        records = _run_interleaved(managers, data, config.n_evals, say, max_rounds)
    else:
        records = _run_sequential(managers, data, say, max_runs)
    if records is None:
        return None
    report = build_compare_report(_named(specs, records), _report_settings(config, target, data, interleave),
                                  _regime(config, target))
    write_report(report, out_dir)
    for line in [*speedup_table(report), "", *aggregate_table(report), "", *regime_lines(report["regime"]), ""]:
        log(line)
    for verdict in report["verdicts"].values():
        for line in verdict["lines"]:
            log(line)
    return report


def _named(specs: list[RunSpec], records: list[RunRecord]) -> list[tuple[RunSpec, RunRecord]]:
    """Each run's record under its method's name (the runs were labelled with seed and budget)."""
    return [(spec, dataclasses.replace(record, name=spec.method.name)) for spec, record in zip(specs, records)]


def _regime(config: CompareConfig, target: ModelConfig) -> dict[str, Any]:
    return regime(config.compute_optimal, param_counts(target)[1], config.budget_tokens,
                  float(config.budget_tokens * flops_per_token(target)))


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
    results: dict[int, RunRecord] = {}  # by position: runs of several seeds and budgets share a method's name
    started = time.perf_counter()
    names = ", ".join(m.name for m in managers) if len(managers) <= 6 else f"{len(managers)} runs"
    try:
        for i, manager in enumerate(managers):
            finished = manager.open(data)
            if finished is not None:
                results[i] = finished.record
        for k in range(1, n_evals + 2):
            if len(results) == len(managers):
                break
            if max_rounds is not None and k > max_rounds:
                return None
            for i, manager in enumerate(managers):
                if i not in results:
                    done = manager.advance(until_fraction=k / n_evals if k <= n_evals else None)
                    if done is not None:
                        results[i] = done.record
            elapsed = time.perf_counter() - started
            rounds = min(k, n_evals)
            say(f"== round {rounds}/{n_evals} done: {names}; {elapsed:.0f}s elapsed, "
                f"ETA {elapsed * (n_evals - rounds) / rounds:.0f}s")
    finally:
        for manager in managers:
            manager.close()
    return [results[i] for i in range(len(managers))]


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
            "interleaved": interleave, "controls": config.controls, "seeds": list(config.seeds),
            "budget_fractions": config.fractions(),
            "wall_clock_note": ("training-step and growth time of each run, measured in this process; evaluation and "
                                "checkpointing excluded; " + (
                                    "the runs took turns every evaluation interval, so other load on the machine "
                                    "hits them alike" if interleave else
                                    "the runs went one after another: other load on the machine skews the ratios"))}

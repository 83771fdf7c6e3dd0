"""Scaling grids: which runs to train, and a resumable loop that trains them into a results JSONL.

A :class:`GridSpec` crosses model sizes with token budgets (absolute, or tokens per parameter as in
Chinchilla-style grids), seeds and growth plans (``"scratch"`` is training from scratch), and holds
the training settings every run shares (:class:`GridTraining`). :func:`run_grid` calls an injected
``train_fn(run_spec) -> dict`` for every run not yet in the results file and appends its record:
each append rewrites the file atomically (:func:`transformer_grow.io.atomic_write_text`), so the file
always holds whole lines, and an interrupted grid resumes where it stopped (runs are matched by
``run_id``; a finished run recorded with other settings is refused, not silently reused). A run
interrupted midway is not checkpointed: it starts over on resume.

The real ``train_fn`` (our trainer and the growth manager) is in :mod:`transformer_grow.lab.runner`;
this module imports no torch.

Estimates (planning only; the trainer reports exact counts): non-embedding parameters
``N ~ 12 n_layer d_model^2`` and FLOPs per token ``6 (N + d_model vocab) + 6 n_layer seq_len d_model``
(forward + backward, output head included; Kaplan et al. 2020, section 2.1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import atomic_write_text, json_text, lock_run_dir
from transformer_grow.scaling.data import read_jsonl_records

REQUIRED_RESULT_KEYS = ("n_params_nonembedding", "n_params", "tokens", "flops", "final_val_loss")
MODES = ("quick", "dev", "full")
SCRATCH = "scratch"
RESULTS_FILENAME = "results.jsonl"


@dataclass(frozen=True)
class GridTraining:
    """Training settings shared by every run of a grid (the budget comes from each run).

    Every run uses a cosine schedule over its own length (Hoffmann et al. 2022 match the cosine
    cycle to the run's tokens), with ``warmup_fraction`` of its steps as linear warmup, and is
    evaluated ``n_evals`` times (evenly spaced, the last at the end) on ``eval_windows`` fixed
    validation windows.
    """

    batch_size: int = 16  # sequences of seq_len tokens per optimizer step
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    n_evals: int = 10
    eval_windows: int = 32
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        for name, least in (("batch_size", 1), ("n_evals", 2), ("eval_windows", 1)):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= least,
                    f"{name}={value!r} is not allowed; it must be an integer >= {least}")
        require(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr={self.lr!r} must be a number > 0")
        require(isinstance(self.warmup_fraction, (int, float)) and 0 <= self.warmup_fraction < 1,
                f"warmup_fraction={self.warmup_fraction!r} must lie in [0, 1)")
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio={self.min_lr_ratio!r} must lie in [0, 1]")
        require(self.weight_decay >= 0, f"weight_decay={self.weight_decay!r} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid: what ``train_fn`` receives."""

    run_id: str
    model: dict[str, int]  # ModelConfig fields: n_layer, d_model, n_head, seq_len, vocab_size
    tokens: int
    seed: int
    n_params_estimate: float  # non-embedding, 12 n_layer d_model^2
    flops_estimate: float
    plan: str = SCRATCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": dict(self.model),
            "tokens": self.tokens,
            "seed": self.seed,
            "plan": self.plan,
            "n_params_estimate": self.n_params_estimate,
            "flops_estimate": self.flops_estimate,
        }


def _model_dict(model: Any, seq_len: int, vocab_size: int) -> dict[str, int]:
    if isinstance(model, (tuple, list)):
        require(len(model) == 2, f"model size {model!r} must be an (n_layer, d_model) pair or a dict")
        model = {"n_layer": model[0], "d_model": model[1]}
    require(isinstance(model, dict), f"model size {model!r} must be an (n_layer, d_model) pair or a dict")
    for key in ("n_layer", "d_model"):
        value = model.get(key)
        require(
            isinstance(value, int) and value > 0,
            f"model size {model!r}: {key}={value!r} must be a positive integer",
        )
    d_model = model["d_model"]
    defaults = {"n_head": max(1, d_model // 64), "seq_len": seq_len, "vocab_size": vocab_size}
    return {**defaults, **model}


@dataclass(frozen=True)
class GridSpec:
    """Model sizes x token budgets x seeds x plans. Give ``tokens`` (absolute) or ``tokens_per_param`` (or both).

    ``tokenizer`` and ``vocab_size`` are the grid's default data settings (the CLI's data flags
    override them); ``vocab_size`` also enters the FLOP estimates.
    """

    name: str
    models: tuple[Any, ...]  # (n_layer, d_model) pairs or ModelConfig-style dicts
    tokens_per_param: tuple[float, ...] = ()
    tokens: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    seq_len: int = 256
    vocab_size: int = 8192
    tokenizer: str = "bpe"
    plans: tuple[str, ...] = (SCRATCH,)
    training: GridTraining = GridTraining()
    model_dicts: tuple[dict[str, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        require(len(self.models) >= 1, f"grid {self.name!r} has no model sizes")
        require(self.tokens_per_param or self.tokens, f"grid {self.name!r} needs tokens or tokens_per_param")
        for ratio in self.tokens_per_param:
            require(isinstance(ratio, (int, float)) and ratio > 0, f"tokens_per_param={ratio!r} must be > 0")
        for budget in self.tokens:
            require(isinstance(budget, int) and budget > 0, f"tokens={budget!r} must be a positive integer")
        require(len(self.seeds) >= 1, f"grid {self.name!r} needs at least one seed")
        for seed in self.seeds:
            require(isinstance(seed, int) and seed >= 0, f"seed={seed!r} must be an integer >= 0")
        require(self.seq_len > 0 and self.vocab_size > 0, "seq_len and vocab_size must be positive")
        require(len(self.plans) >= 1, f"grid {self.name!r} needs at least one plan (e.g. 'scratch')")
        require(len(set(self.plans)) == len(self.plans), f"plans {list(self.plans)} list a plan twice")
        require(isinstance(self.training, GridTraining), "training must be a GridTraining")
        dicts = tuple(_model_dict(m, self.seq_len, self.vocab_size) for m in self.models)
        object.__setattr__(self, "model_dicts", dicts)

    @classmethod
    def quick(cls, **overrides) -> GridSpec:
        """12 runs: 4 tiny models (about 25k to 200k non-embedding parameters) x 5, 10 and 20 tokens per parameter.

        Sized from throughput measured on this project's shared 2-core CPU (``tgrow scaling estimate
        --mode quick``: about 10 to 16 minutes with one torch thread under the usual load, plus a few
        seconds of data preparation). It reads bytes (vocabulary 256): with an 8192-token BPE the
        output head of these models would cost several times the rest of the model.
        """
        settings = {"name": "quick", "models": ((2, 32), (2, 48), (2, 64), (4, 64)),
                    "tokens_per_param": (5.0, 10.0, 20.0), "seq_len": 128, "vocab_size": 256, "tokenizer": "bytes",
                    "training": GridTraining(batch_size=16, lr=3e-3, n_evals=10, eval_windows=32)}
        return cls(**{**settings, **overrides})

    @classmethod
    def dev(cls, **overrides) -> GridSpec:
        """16 runs: 4 sizes x 4 token ratios, enough points for the five-parameter Chinchilla fit (hours on a CPU)."""
        models = ((2, 64), (4, 128), (4, 192), (6, 256))
        settings = {"name": "dev", "models": models, "tokens_per_param": (5.0, 10.0, 20.0, 40.0),
                    "training": GridTraining(batch_size=16, lr=2e-3, n_evals=12, eval_windows=64)}
        return cls(**{**settings, **overrides})

    @classmethod
    def full(cls, **overrides) -> GridSpec:
        """36 runs: 6 sizes x 6 token ratios (2.5 to 80 tokens per parameter); a GPU grid."""
        models = ((2, 64), (4, 128), (4, 192), (6, 256), (8, 384), (12, 512))
        settings = {"name": "full", "models": models, "tokens_per_param": (2.5, 5.0, 10.0, 20.0, 40.0, 80.0),
                    "training": GridTraining(batch_size=32, lr=1e-3, n_evals=16, eval_windows=128)}
        return cls(**{**settings, **overrides})

    @classmethod
    def from_mode(cls, mode: str, **overrides) -> GridSpec:
        choice("mode", mode, MODES)
        return getattr(cls, mode)(**overrides)

    def runs(self) -> list[RunSpec]:
        """Every run, in a fixed order (smallest model first; plans of one size and budget adjacent)."""
        runs = []
        for model in self.model_dicts:
            n_layer, d_model = model["n_layer"], model["d_model"]
            n_est = 12.0 * n_layer * d_model**2
            flops_per_token = (
                6.0 * (n_est + d_model * model["vocab_size"]) + 6.0 * n_layer * model["seq_len"] * d_model
            )
            budgets = sorted({round(r * n_est) for r in self.tokens_per_param} | set(self.tokens))
            for tokens in budgets:
                for seed in self.seeds:
                    for plan in self.plans:
                        run_id = f"{plan}-L{n_layer}-d{d_model}-T{tokens}-s{seed}"
                        runs.append(RunSpec(run_id, dict(model), tokens, seed, n_est, flops_per_token * tokens, plan))
        return runs


def _count(text: str) -> int:
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(text[-1].lower(), 1)
    value = float(text[:-1] if scale > 1 else text) * scale
    if value != int(value):
        raise ValueError(text)
    return int(value)


def _size(text: str) -> tuple[int, int]:
    n_layer, d_model = text.lower().split("x")
    return int(n_layer), int(d_model)


LIST_KINDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "counts": (_count, "1000, 250k, 1.5M"), "sizes": (_size, "2x64 (n_layer x d_model)"),
    "integers": (int, "0, 1"), "numbers": (float, "5, 20"), "names": (str, "scratch, g_stack"),
}


def parse_list(text: str, flag: str, kind: str) -> tuple:
    """A comma-separated flag value as a tuple of ``kind``.

    ``kind`` is one of ``counts``, ``sizes``, ``integers``, ``numbers``, ``names``.
    """
    parse, example = LIST_KINDS[kind]
    items = [item.strip() for item in text.split(",") if item.strip()]
    require(items, f"{flag} {text!r} lists nothing")
    try:
        return tuple(parse(item) for item in items)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of {kind} (such as {example})") from None


def resolve_results_path(out: str | Path) -> Path:
    """``--out``: a ``.jsonl``/``.json`` path is the results file.

    Anything else is a directory holding ``results.jsonl``.
    """
    path = Path(out)
    if path.suffix.lower() in (".jsonl", ".json") and not path.is_dir():
        return path
    require(not path.is_file(), f"--out {str(out)!r} is a file without a .jsonl extension; give a .jsonl file "
                                "or a directory")
    return path / RESULTS_FILENAME


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results JSONL (missing file: none); an incomplete last line is ignored."""
    path = Path(path)
    return [record for _, record in read_jsonl_records(path)] if path.exists() else []


def finished_run_ids(path: str | Path) -> set[str]:
    return {r["run_id"] for r in read_results(path) if isinstance(r.get("run_id"), str)}


def append_result(path: str | Path, record: dict[str, Any]) -> None:
    """Add ``record`` as one line: the file is rewritten atomically, dropping an incomplete last line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a line cut short by a crash: never completed, never read
    atomic_write_text(path, text + json_text(record) + "\n")


def check_settings(records: list[dict[str, Any]], runs: list[RunSpec], settings_key: Callable[[RunSpec], str],
                   source: str) -> None:
    """Refuse finished runs of this grid that were trained with other settings (another ``settings_key``)."""
    keys = {run.run_id: settings_key(run) for run in runs}
    for record in records:
        if record.get("run_id") in keys and record.get("settings_key") != keys[record["run_id"]]:
            raise ConfigError(
                f"{source} already holds run {record['run_id']!r} trained with other settings (data, training or "
                "plan options differ); resume with the same settings, or write to another --out")


def format_seconds(value: float) -> str:
    """``42s``, ``12.5min`` or ``3.2h``."""
    if value < 90:
        return f"{value:.0f}s"
    return f"{value / 60:.1f}min" if value < 5400 else f"{value / 3600:.1f}h"


def run_grid(
    spec: GridSpec,
    results_path: str | Path,
    train_fn: Callable[[RunSpec], dict[str, Any]],
    *,
    log: Callable[[str], None] | None = print,
    settings_key: Callable[[RunSpec], str] | None = None,
    max_runs: int | None = None,
) -> list[dict[str, Any]]:
    """Train every run of ``spec`` missing from ``results_path``; returns all of the grid's records.

    With ``settings_key(run)``, every record gets its run's key and finished runs with another key are refused
    (before anything trains). ``max_runs`` stops after training that many runs (resume later).
    Progress lines give the run's index, elapsed time and an ETA (remaining estimated FLOPs at the
    pace of the runs trained so far in this call). The results' directory is locked meanwhile: a
    second grid writing there is refused (:func:`transformer_grow.io.lock_run_dir`).
    """
    require(max_runs is None or max_runs >= 1, f"max_runs={max_runs!r} must be >= 1")
    with lock_run_dir(Path(results_path).parent, "results directory"):
        return _run_grid_locked(spec, results_path, train_fn, log, settings_key, max_runs)


def _run_grid_locked(spec: GridSpec, results_path: str | Path, train_fn: Callable[[RunSpec], dict[str, Any]],
                     log: Callable[[str], None] | None, settings_key: Callable[[RunSpec], str] | None,
                     max_runs: int | None) -> list[dict[str, Any]]:
    runs = spec.runs()
    existing = read_results(results_path)
    if settings_key is not None:
        check_settings(existing, runs, settings_key, str(results_path))
    done = {r["run_id"] for r in existing if isinstance(r.get("run_id"), str)}
    todo_flops = sum(run.flops_estimate for run in runs if run.run_id not in done)
    started, trained_flops, trained = time.perf_counter(), 0.0, 0
    for index, run in enumerate(runs, start=1):
        where = f"[{index}/{len(runs)}]"
        if run.run_id in done:
            if log:
                log(f"{where} skip {run.run_id}: already in {results_path}")
            continue
        if max_runs is not None and trained >= max_runs:
            if log:
                log(f"stopping after {trained} run(s) (max_runs); run again to continue")
            break
        if log:
            elapsed = time.perf_counter() - started
            eta = "n/a until a run finishes"
            if trained_flops > 0:
                eta = "~" + format_seconds(elapsed / trained_flops * (todo_flops - trained_flops))
            log(f"{where} train {run.run_id} (N~{run.n_params_estimate:.3g}, D={run.tokens:.3g}, "
                f"C~{run.flops_estimate:.3g}) | elapsed {format_seconds(elapsed)} | ETA {eta}")
        record = train_fn(run)
        if not isinstance(record, dict):
            raise TypeError(f"train_fn returned {type(record).__name__} for {run.run_id}; expected a dict")
        missing = [key for key in REQUIRED_RESULT_KEYS if key not in record]
        if missing:
            raise ConfigError(f"the result of {run.run_id} lacks {', '.join(missing)}")
        record = {**record, "run_id": run.run_id, "grid": spec.name, "seed": run.seed, "plan": run.plan}
        if settings_key is not None:
            record["settings_key"] = settings_key(run)
        append_result(results_path, record)
        done.add(run.run_id)
        trained += 1
        trained_flops += run.flops_estimate
    ids = {run.run_id for run in runs}
    return [r for r in read_results(results_path) if r.get("run_id") in ids]


def select_records(
    records: list[dict[str, Any]], plan: str | None = None, include_early_stopped: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records to fit, and notes saying what was left out or changed.

    ``plan``: keep only runs of that plan; ``None`` keeps every run when the records hold one plan
    (or none), and the ``scratch`` runs when they hold several. Early-stopped runs (see
    :mod:`transformer_grow.lab.runner`) are left out; with ``include_early_stopped`` they enter
    at their planned tokens and FLOPs with their *predicted* final loss (an extrapolation).
    """
    notes: list[str] = []
    plans = sorted({r["plan"] for r in records if isinstance(r.get("plan"), str)})
    if plan is None and len(plans) > 1:
        plan = SCRATCH if SCRATCH in plans else plans[0]
        notes.append(f"the file holds runs of plans {', '.join(plans)}; fitting the {plan!r} runs "
                     "(choose with --plan)")
    if plan is not None:
        require(plan in plans, f"plan={plan!r}: no runs of that plan in the file; plans present: "
                               f"{', '.join(plans) if plans else '(none recorded)'}")
        records = [r for r in records if r.get("plan") == plan]
    stopped = [r for r in records if r.get("early_stopped")]
    if stopped and include_early_stopped:
        substituted = {"tokens": "planned_tokens", "flops": "planned_flops", "final_val_loss": "predicted_final_loss"}
        records = [{**r, **{k: r.get(v) for k, v in substituted.items()}} if r.get("early_stopped") else r
                   for r in records]
        notes.append(f"{len(stopped)} early-stopped run(s) enter with their predicted final loss at the planned "
                     "tokens (extrapolated, not measured)")
    elif stopped:
        records = [r for r in records if not r.get("early_stopped")]
        stopped_ids = ", ".join(str(r.get("run_id")) for r in stopped)
        notes.append(f"left out {len(stopped)} early-stopped run(s) ({stopped_ids});"
                     " --include-early-stopped uses their predicted final loss")
    return records, notes


def load_fit_records(
    path: str | Path, plan: str | None = None, include_early_stopped: bool = False
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``(label, record)`` rows of a results JSONL chosen by :func:`select_records`, and its notes."""
    require(Path(path).is_file(), f"input file {str(path)!r} does not exist")
    pairs = read_jsonl_records(path)
    lines = {id(record): f"line {number}" for number, record in pairs}
    selected, notes = select_records([record for _, record in pairs], plan, include_early_stopped)
    return [(lines.get(id(record), "run"), record) for record in selected], notes

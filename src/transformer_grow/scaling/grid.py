"""Scaling grids: which runs to train, and a resumable loop that trains them into a results JSONL.

A :class:`GridSpec` crosses model sizes with token budgets (absolute, or tokens per parameter as in
Chinchilla-style grids) and seeds. :func:`run_grid` calls an injected ``train_fn(run_spec) -> dict``
for every run not yet in the results file and appends its record: each append rewrites the file
atomically (:func:`transformer_grow.io.atomic_write_text`), so the file always holds whole lines, and
an interrupted grid resumes where it stopped (runs are matched by ``run_id``).

Estimates (planning only; the trainer reports exact counts): non-embedding parameters
``N ~ 12 n_layer d_model^2`` and FLOPs per token ``6 (N + d_model vocab) + 6 n_layer seq_len d_model``
(forward + backward, output head included; Kaplan et al. 2020, section 2.1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import atomic_write_text
from transformer_grow.scaling.data import read_jsonl_records

REQUIRED_RESULT_KEYS = ("n_params_nonembedding", "n_params", "tokens", "flops", "final_val_loss")
MODES = ("quick", "dev", "full")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid: what ``train_fn`` receives."""

    run_id: str
    model: dict[str, int]  # ModelConfig fields: n_layer, d_model, n_head, seq_len, vocab_size
    tokens: int
    seed: int
    n_params_estimate: float  # non-embedding, 12 n_layer d_model^2
    flops_estimate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": dict(self.model),
            "tokens": self.tokens,
            "seed": self.seed,
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
    """Model sizes x token budgets x seeds. Give ``tokens`` (absolute) or ``tokens_per_param`` (or both)."""

    name: str
    models: tuple[Any, ...]  # (n_layer, d_model) pairs or ModelConfig-style dicts
    tokens_per_param: tuple[float, ...] = ()
    tokens: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    seq_len: int = 256
    vocab_size: int = 8192
    model_dicts: tuple[dict[str, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        require(len(self.models) >= 1, f"grid {self.name!r} has no model sizes")
        require(self.tokens_per_param or self.tokens, f"grid {self.name!r} needs tokens or tokens_per_param")
        for ratio in self.tokens_per_param:
            require(ratio > 0, f"tokens_per_param={ratio} must be > 0")
        for budget in self.tokens:
            require(isinstance(budget, int) and budget > 0, f"tokens={budget!r} must be a positive integer")
        require(len(self.seeds) >= 1, f"grid {self.name!r} needs at least one seed")
        require(self.seq_len > 0 and self.vocab_size > 0, "seq_len and vocab_size must be positive")
        dicts = tuple(_model_dict(m, self.seq_len, self.vocab_size) for m in self.models)
        object.__setattr__(self, "model_dicts", dicts)

    @classmethod
    def quick(cls, **overrides) -> GridSpec:
        """6 runs of tiny models (about 0.1M to 0.6M non-embedding parameters): a smoke test of the loop."""
        return cls(
            **{
                "name": "quick",
                "models": ((2, 64), (2, 96), (3, 128)),
                "tokens_per_param": (5.0, 20.0),
                **overrides,
            }
        )

    @classmethod
    def dev(cls, **overrides) -> GridSpec:
        """16 runs: 4 sizes x 4 token ratios, enough points for the five-parameter Chinchilla fit."""
        models = ((2, 64), (3, 128), (4, 192), (6, 256))
        return cls(
            **{"name": "dev", "models": models, "tokens_per_param": (5.0, 10.0, 20.0, 40.0), **overrides}
        )

    @classmethod
    def full(cls, **overrides) -> GridSpec:
        """36 runs: 6 sizes x 6 token ratios (2.5 to 80 tokens per parameter)."""
        models = ((2, 64), (3, 128), (4, 192), (6, 256), (8, 384), (12, 512))
        ratios = (2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
        return cls(**{"name": "full", "models": models, "tokens_per_param": ratios, **overrides})

    @classmethod
    def from_mode(cls, mode: str, **overrides) -> GridSpec:
        choice("mode", mode, MODES)
        return getattr(cls, mode)(**overrides)

    def runs(self) -> list[RunSpec]:
        """Every run, in a fixed order (smallest model first), with a stable ``run_id``."""
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
                    run_id = f"L{n_layer}-d{d_model}-T{tokens}-s{seed}"
                    runs.append(RunSpec(run_id, dict(model), tokens, seed, n_est, flops_per_token * tokens))
        return runs


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
    atomic_write_text(path, text + json.dumps(record, sort_keys=True) + "\n")


def run_grid(
    spec: GridSpec,
    results_path: str | Path,
    train_fn: Callable[[RunSpec], dict[str, Any]],
    *,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Train every run of ``spec`` missing from ``results_path``; returns all of the grid's records."""
    done = finished_run_ids(results_path)
    for run in spec.runs():
        if run.run_id in done:
            if log:
                log(f"skip {run.run_id}: already in {results_path}")
            continue
        if log:
            log(f"train {run.run_id} (N~{run.n_params_estimate:.3g}, D={run.tokens:.3g})")
        record = train_fn(run)
        if not isinstance(record, dict):
            raise TypeError(f"train_fn returned {type(record).__name__} for {run.run_id}; expected a dict")
        missing = [key for key in REQUIRED_RESULT_KEYS if key not in record]
        if missing:
            raise ConfigError(f"the result of {run.run_id} lacks {', '.join(missing)}")
        record = {**record, "run_id": run.run_id, "grid": spec.name, "seed": run.seed}
        append_result(results_path, record)
        done.add(run.run_id)
    ids = {run.run_id for run in spec.runs()}
    return [r for r in read_results(results_path) if r.get("run_id") in ids]

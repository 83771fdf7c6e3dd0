"""A grid's expected wall-clock time, from throughput measured on this machine before anything runs.

For every distinct model of the grid (each stage of a growth plan included) the real
:class:`~transformer_grow.train.Trainer` takes one untimed warm-up step and then at least
``min_steps`` timed steps (and at least ``min_seconds``) on random tokens of the run's shapes (batch,
context, vocabulary), and one evaluation on the grid's validation windows is timed. A run's expected
time is ``sum over its stages of tokens / (tokens per second) + (n_evals + 1) x evaluation time``.

Not included: preparing the data (tokenizer training and encoding on first use; cached afterwards),
building models, and any change in the machine's load between the estimate and the run (on a shared
CPU, throughput of small models also depends strongly on the number of threads: compare with
``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from transformer_grow.data import TokenData
from transformer_grow.lab.grid import SCRATCH, GridSpec, GridTraining, RunSpec
from transformer_grow.lab.runner import GridRunner
from transformer_grow.model import ModelConfig
from transformer_grow.plans.accounting import account_plan
from transformer_grow.plans.plan import describe_config
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.trainer import Trainer


@dataclass(frozen=True)
class Throughput:
    """Measured speed of one model at one batch shape."""

    label: str
    tokens_per_s: float
    eval_seconds: float
    steps_timed: int


@dataclass(frozen=True)
class RunEstimate:
    run: RunSpec
    seconds: float
    stage_labels: tuple[str, ...]


@dataclass
class GridEstimate:
    runs: list[RunEstimate]
    throughput: list[Throughput] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    def seconds_for(self, run_ids: set[str]) -> float:
        return sum(r.seconds for r in self.runs if r.run.run_id in run_ids)


def measure_throughput(config: ModelConfig, batch_size: int, training: GridTraining, *, min_steps: int = 3,
                       min_seconds: float = 1.0, max_steps: int = 50) -> Throughput:
    """Tokens per second of training steps, and the seconds of one evaluation, for ``config``."""
    window = config.seq_len + 1
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, size=max(4 * batch_size, training.eval_windows, 8) * window)
    data = TokenData(train=tokens, val=tokens, vocab_size=config.vocab_size, description="random tokens (timing)")
    train_config = TrainConfig(batch_size=batch_size, max_steps=max_steps + 1, lr=training.lr, warmup_steps=1,
                               eval_interval=0, eval_windows=training.eval_windows, log_interval=max_steps + 1,
                               ckpt_interval=0, device=training.device, dtype=training.dtype)
    trainer = Trainer(config, train_config, data)
    try:
        trainer.train_steps(1)  # warm-up: allocations, first-call overheads
        seconds_before, tokens_before, steps = trainer.wall_seconds, trainer.tokens, 0
        while steps < max_steps and (steps < min_steps or trainer.wall_seconds - seconds_before < min_seconds):
            trainer.train_steps(1)
            steps += 1
        rate = (trainer.tokens - tokens_before) / max(trainer.wall_seconds - seconds_before, 1e-9)
        start = time.perf_counter()
        trainer.evaluate()
        eval_seconds = time.perf_counter() - start
    finally:
        trainer.close()
    return Throughput(f"{describe_config(config)} B={batch_size}", rate, eval_seconds, steps)


def _stages(runner: GridRunner, run: RunSpec) -> list[tuple[ModelConfig, int, int]]:
    """``(model, batch size, tokens)`` of every stage of ``run`` as it will train."""
    train_config = runner.train_config(run)
    tokens_per_step = train_config.batch_size * run.model["seq_len"]
    if run.plan == SCRATCH:
        steps = train_config.total_steps(run.model["seq_len"])
        return [(runner.model_config(run), train_config.batch_size, steps * tokens_per_step)]
    plan, _ = runner.build_plan(run)
    account = account_plan(plan, tokens_per_step)
    return [(s.config, s.batch_size, s.tokens) for s in account.stages]


def estimate_grid(spec: GridSpec, runner: GridRunner, measure=measure_throughput,
                  log=None) -> GridEstimate:
    """Expected seconds of every run of ``spec``; ``measure(config, batch_size, training)`` times one model
    (each distinct model and batch is measured once, smallest first; ``log`` gets a line per measurement)."""
    plans = {run.run_id: _stages(runner, run) for run in spec.runs()}
    measured: dict[tuple[str, int], Throughput] = {}
    shapes = {(json.dumps(c.to_dict(), sort_keys=True), b): c for stages in plans.values() for c, b, _ in stages}
    for key in sorted(shapes, key=lambda k: (shapes[k].n_layer * shapes[k].d_model ** 2, k[1])):
        measured[key] = measure(shapes[key], key[1], spec.training)
        if log:
            m = measured[key]
            log(f"  {m.label}: {m.tokens_per_s:,.0f} tokens/s ({m.steps_timed} timed steps), "
                f"evaluation {m.eval_seconds:.2f}s")
    runs = []
    for run in spec.runs():
        stages = plans[run.run_id]
        seconds = 0.0
        for config, batch, tokens in stages:
            seconds += tokens / measured[(json.dumps(config.to_dict(), sort_keys=True), batch)].tokens_per_s
        target, target_batch, _ = stages[-1]
        target_key = (json.dumps(target.to_dict(), sort_keys=True), target_batch)
        seconds += (spec.training.n_evals + 1) * measured[target_key].eval_seconds
        runs.append(RunEstimate(run, seconds, tuple(describe_config(c) for c, _, _ in stages)))
    return GridEstimate(runs, list(measured.values()))


def threads_note() -> str:
    return f"{torch.get_num_threads()} torch thread(s)"

"""The training loop: :class:`Trainer` drives one model (and, after growth, its successors).

>>> trainer = Trainer(preset("micro", vocab_size=data.vocab_size), TrainConfig(max_steps=300), data, out_dir="run")
>>> summary = trainer.fit()                  # train to the budget, evaluate, checkpoint
>>> trainer = Trainer.resume("run", data)    # continue exactly where the checkpoint left off

Exact resume: batches are a pure function of ``(seed, step)`` (``data.batch``), the learning rate a
pure function of the step (:mod:`~transformer_grow.train.schedule`), and checkpoints hold the model,
the AdamW state and torch's RNG states, so a resumed run reproduces the uninterrupted one
(:mod:`~transformer_grow.train.resume` writes and restores that state; :mod:`~transformer_grow.train.outcome`
holds :class:`TrainSummary` and :class:`TrainingDiverged`, re-exported here). Around the steps
(:mod:`~transformer_grow.train.lifecycle`): checkpoints and the ring of them a run keeps, a clean stop on
SIGTERM/SIGINT, and after a divergence (:mod:`~transformer_grow.train.health`) the checkpoint to resume.

Growth: :meth:`Trainer.unwrap` hands out the plain model and its AdamW state by name, and
:meth:`Trainer.replace_model` swaps in a grown model with optimizer state mapped by parameter name
and an optional LR re-warmup; counters (step, tokens, FLOPs, time) continue, and FLOPs accumulate
with each model's own ``flops_per_token``. A driver such as the growth manager uses only public
methods: :meth:`set_schedule`, :meth:`timed`, :meth:`driver_state` / :meth:`set_driver_state`.

Processes: the trainer has one code path; ``parallel`` (a
:class:`~transformer_grow.distributed.parallel.Parallel`, default one process, or a
:class:`~transformer_grow.distributed.parallel.DataParallel` under torchrun) wraps the model, slices
the batch, averages the loss over ranks and gathers checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from transformer_grow.data import DataConfig
from transformer_grow.device import autocast, resolve_autocast_dtype
from transformer_grow.distributed.parallel import Parallel
from transformer_grow.errors import require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import StateByName
from transformer_grow.train.checkpoint import CHECKPOINT_DIRNAME
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.evaluate import evaluate_windows
from transformer_grow.train.health import DivergenceMonitor, weight_norm
from transformer_grow.train.lifecycle import RunLifecycle
from transformer_grow.train.metrics import MetricsLog, ProgressBar
from transformer_grow.train.mlm import MaskedLM, evaluate_masked, masked_lm_for
from transformer_grow.train.optim import LRMultipliers, adamw_step, build_optimizer
from transformer_grow.train.outcome import TrainingDiverged, TrainingInterrupted, TrainSummary
from transformer_grow.train.schedule import LRSchedule, Rewarmup, lr_at

__all__ = ["Trainer", "TrainSummary", "TrainingDiverged", "TrainingInterrupted"]  # the outcomes, re-exported


class Trainer(RunLifecycle):
    """Trains a :class:`GPT` on :class:`~transformer_grow.data.TokenData` under a :class:`TrainConfig`.

    Args:
        model_config: architecture of a freshly initialised model (seeded with ``train_config.seed``);
            ignored when ``model`` is given.
        train_config: the run's settings (budget, optimiser, schedule, intervals, device).
        data: token data with ``batch``, ``val_windows``, ``check_seq_len``, ``vocab_size``, ``fingerprint``.
        out_dir: run directory for ``metrics.jsonl`` and ``checkpoint/``; ``None`` keeps metrics in
            memory only (``trainer.history``) and writes no checkpoint unless :meth:`save` gets a path.
        model: an existing model to train instead of a fresh one.
        data_config: recorded in checkpoints so ``tgrow eval/sample`` and resume can rebuild the data.
        progress: show a tqdm bar (loss, tokens/s, ETA) on stderr.
        parallel: how the model is spread over processes (default: one process). With a
            :class:`~transformer_grow.distributed.parallel.DataParallel`, ``data`` is the full data
            (each rank takes its slice), ``batch_size`` is the global batch, and only rank 0 writes
            metrics, progress and checkpoints; every rank keeps the same counters and history.
    """

    def __init__(self, model_config: ModelConfig | None, train_config: TrainConfig, data: Any,
                 out_dir: str | os.PathLike | None = None, model: GPT | None = None,
                 data_config: DataConfig | None = None, progress: bool = False, parallel: Parallel | None = None):
        train_config.validate()
        self.parallel = parallel or Parallel()
        self.config, self.device = self.parallel.configure(train_config)
        self.data = self.parallel.local_data(data)
        self.data_config = data_config
        self.autocast_dtype = resolve_autocast_dtype(self.config.dtype, self.device)
        if model is None:
            require(model_config is not None, "Trainer needs a model_config or a model")
            torch.manual_seed(train_config.seed)
            model = GPT(model_config)
        self._check_model_fits_data(model)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.step = 0
        self.tokens = 0
        self.flops = 0
        self.wall_seconds = 0.0
        self.eval_seconds = 0.0  # evaluation and checkpoint writes: not training time, but the run's time
        self.checkpoint_seconds = 0.0
        self.rewarmup: Rewarmup | None = None
        self.lr_multipliers: LRMultipliers | None = None  # set by replace_model after dynamics-preserving growth
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self._driver_state: dict[str, Any] = {}  # JSON-able state of drivers (e.g. a growth plan), checkpointed
        self.schedule = LRSchedule.from_config(train_config, train_config.total_steps(model.config.seq_len))
        self._install_model(model)
        # Watches for divergence (observation only); resume restores its state from the checkpoint.
        self.monitor = DivergenceMonitor(model.config.vocab_size)
        self._restart_monitor()
        self._fresh = True  # a new run (not resumed): its initial state goes into the checkpoint ring
        # Only the main process writes metrics files and a progress bar; every process keeps the records.
        main = self.parallel.is_main
        self._metrics = MetricsLog(self.out_dir if main else None, tensorboard=train_config.tensorboard and main)
        self._val_windows: dict[tuple[int, int], torch.Tensor] = {}
        self._bar = ProgressBar(progress and main, total=self.total_steps)
        self._evaluated_at: int | None = None
        self._saved_at: int | None = None
        self._reset_window()

    # ----------------------------------------------------------------- model
    def _check_model_fits_data(self, model: GPT) -> None:
        cfg = model.config
        require(cfg.vocab_size >= self.data.vocab_size,
                f"vocab_size={cfg.vocab_size} of the model is smaller than the data's vocabulary of "
                f"{self.data.vocab_size} tokens; use vocab_size >= {self.data.vocab_size}")
        self.data.check_seq_len(cfg.seq_len)

    def _install_model(self, model: GPT) -> None:
        """Hand ``model`` to ``parallel`` (moved, wrapped, compiled) and build its optimizer (fresh state)."""
        cfg = self.config  # the objective follows the model: masked LM for a bidirectional one (train/mlm.py)
        self.objective: MaskedLM | None = masked_lm_for(cfg.objective, cfg.mask_token_id, cfg.mlm_probability,
                                                        model.config, self.data.vocab_size)
        self.model, self._forward_model = self.parallel.wrap(model, self.device, compile=self.config.compile)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.config, self.device)
        self._flops_per_token = self.model.flops_per_token(self.seq_len)

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    @property
    def seq_len(self) -> int:
        return self.model.config.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Planned length of the run in steps (the LR schedule's horizon)."""
        return self.schedule.total_steps

    @property
    def lr(self) -> float:
        """Learning rate of the next step."""
        return lr_at(self.schedule, self.step, self.rewarmup)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Metric records written by this trainer object."""
        return self._metrics.records

    def replace_model(self, new_model: GPT, optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None,
                      rewarmup_steps: int = 0, lr_multipliers: dict[str, torch.Tensor] | None = None,
                      relax: str = "never", batch_size: int | None = None) -> None:
        """Continue training ``new_model`` (e.g. a grown model) from the current step.

        ``new_model`` is plain (under :class:`DataParallel`: identical on every rank; it is wrapped
        anew). ``batch_size``: the global batch from now on (e.g. a growth stage that keeps the tokens
        per step at another ``seq_len``); ``None`` keeps it.

        ``optimizer_state`` (``{param name: {"exp_avg", "exp_avg_sq", "step"}}``, see
        :func:`~transformer_grow.train.checkpoint.optimizer_state_by_name`) seeds AdamW by name;
        parameters without an entry start with zero moments; ``None`` starts a fresh optimizer.
        With ``rewarmup_steps > 0`` the global schedule continues, multiplied by
        ``min(1, (step - grow_step) / rewarmup_steps)`` (1-based step numbers) from now on.
        """
        require(isinstance(rewarmup_steps, int) and rewarmup_steps >= 0,
                f"rewarmup_steps={rewarmup_steps!r} is not allowed; it must be an integer >= 0")
        if batch_size is not None and batch_size != self.config.batch_size:
            config = self.config.replace(batch_size=batch_size)
            config.validate()  # e.g. grad_accum must still divide the new batch
            self.parallel.check_batch(config.batch_size, config.grad_accum)
            self.config = config
        self._check_model_fits_data(new_model)
        self._install_model(new_model)
        if optimizer_state:
            self.parallel.load_optimizer_state(self.model, self.optimizer, optimizer_state)
        self.rewarmup = Rewarmup(self.step, rewarmup_steps) if rewarmup_steps > 0 else None
        # Per-element multipliers on AdamW's direction (grow.dynamics.lr_multipliers), relaxed to 1 per
        # ``relax`` ("never", "immediate", "window:N"); checkpointed and restored on resume.
        self.lr_multipliers = LRMultipliers(lr_multipliers, relax) if lr_multipliers else None
        self._restart_monitor()  # the grown model's loss and weights are its own

    def _restart_monitor(self) -> None:
        ref = weight_norm(self.model) if self.config.max_weight_growth > 0 else None
        self.monitor.restart(self.model.config.vocab_size, ref)

    def unwrap(self) -> tuple[GPT, StateByName]:
        """The plain full model and its AdamW state by name (every rank), e.g. to grow them.

        Under :class:`DataParallel` the wrapper is released: training refuses to step until
        :meth:`replace_model` (the grown model) or :meth:`rewrap` (this one, unchanged) installs a
        model again. In one process the model keeps training as it is.
        """
        return self.parallel.unwrap(self.model, self.optimizer)

    def rewrap(self, model: GPT, optimizer_state: StateByName) -> None:
        """Train on ``model`` and ``optimizer_state`` from :meth:`unwrap`, unchanged (e.g. after a
        failed growth); the ongoing LR re-warmup and multipliers continue."""
        if self.parallel.live:  # one process: nothing was released
            return
        rewarmup, multipliers = self.rewarmup, self.lr_multipliers
        self._install_model(model)
        self.parallel.load_optimizer_state(self.model, self.optimizer, optimizer_state)
        self.rewarmup, self.lr_multipliers = rewarmup, multipliers

    # ---------------------------------------------------------------- drivers
    @property
    def is_main(self) -> bool:
        """Whether this process writes files and console output (always, in one process; rank 0 else)."""
        return self.parallel.is_main

    def set_schedule(self, schedule: Any) -> None:
        """Use ``schedule`` (``schedule(step) -> lr`` with ``total_steps``, e.g. an
        :class:`~transformer_grow.train.schedule.LRSchedule`) from the next step on."""
        require(callable(schedule) and isinstance(getattr(schedule, "total_steps", None), int),
                f"schedule={schedule!r} must be callable as schedule(step) and have an integer total_steps")
        self.schedule = schedule

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the block's wall-clock time as training time (e.g. a growth operation)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wall_seconds += time.perf_counter() - start

    def driver_state(self, key: str) -> dict[str, Any] | None:
        """The JSON-able state a driver stored under ``key`` (restored by :meth:`resume`), or ``None``."""
        state = self._driver_state.get(key)
        return None if state is None else dict(state)

    def set_driver_state(self, key: str, state: dict[str, Any]) -> None:
        """Store a driver's JSON-able ``state`` under ``key``: it goes into every later checkpoint."""
        require(isinstance(state, dict), f"driver state {key!r} must be a dict, got {type(state).__name__}")
        self._driver_state[key] = state

    def draw_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch ``(x, y)`` (this process's share), for work outside a normal step
        (e.g. training a LiGO growth operator, run/ligo_phase.py). The data position (``step``)
        advances, so training goes on with the batch after it and a resumed run reads the same
        batches; count the work's cost with :meth:`add_spent`. ``batch_size``: global, default the run's."""
        x, y = self.data.batch(self.config.batch_index(self.step), batch_size or self.config.batch_size, self.seq_len,
                               self.config.seed)
        self.step += 1
        return x, y

    def add_spent(self, tokens: int, flops: int) -> None:
        """Count ``tokens`` and ``flops`` (global, all processes) spent outside a normal step: they go to
        the budget counters, metrics and checkpoints like a step's."""
        require(isinstance(tokens, int) and tokens >= 0 and isinstance(flops, int) and flops >= 0,
                f"add_spent(tokens={tokens!r}, flops={flops!r}) needs integers >= 0")
        self.tokens += tokens
        self.flops += flops

    # -------------------------------------------------------------- training
    def done(self) -> bool:
        """Whether the budget (``max_steps`` / ``max_tokens``) is reached."""
        cfg = self.config
        return ((cfg.max_steps is not None and self.step >= cfg.max_steps)
                or (cfg.max_tokens is not None and self.tokens >= cfg.max_tokens))

    def _next_step_is_last(self) -> bool:
        cfg = self.config
        return ((cfg.max_steps is not None and self.step + 1 >= cfg.max_steps)
                or (cfg.max_tokens is not None and self.tokens + self.tokens_per_step >= cfg.max_tokens))

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Accumulate gradients of one batch (this process's share of the global batch) over
        ``grad_accum`` micro-batches.

        Returns ``(cross-entropy, objective)`` means over the global batch (averaged over ranks:
        every rank's share is the same size); the objective adds ``moe_aux_loss_coef * aux_loss``
        for mixture-of-experts models.
        """
        self.parallel.check(self.model)  # e.g. a wrapped model changed since wrapping
        accum = self.config.grad_accum
        self.parallel.start_step(accum)
        coef = self.model.config.moe_aux_loss_coef if self.model.config.n_expert else 0.0
        ce_total = torch.zeros((), device=self.device)
        objective_total = torch.zeros((), device=self.device)
        for xm, ym in zip(x.chunk(accum), y.chunk(accum)):
            xm, ym = xm.to(self.device, non_blocking=True), ym.to(self.device, non_blocking=True)
            with autocast(self.device, self.autocast_dtype):
                out = self._forward_model(xm, ym)
            objective = out.loss + coef * out.aux_loss if coef else out.loss
            (objective / accum).backward()
            ce_total += out.loss.detach().float()
            objective_total += objective.detach().float()
        ce, objective = self.parallel.mean_over_ranks([float(ce_total) / accum, float(objective_total) / accum])
        return ce, objective

    def _optimizer_step(self) -> float:
        """One optimizer step on the current step's batch; returns its cross-entropy."""
        cfg, it = self.config, self.step
        lr = lr_at(self.schedule, it, self.rewarmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        index = cfg.batch_index(it)  # it itself, unless batches are skipped (skip_batches)
        x, y = self.data.batch(index, cfg.batch_size, self.seq_len, cfg.seed)
        if self.objective is not None:  # masked LM: corrupt x, predict the chosen tokens (y is not used)
            x, y = self.objective.train_batch(x, index, cfg.seed, self.parallel.rank)  # one mask stream per rank
        ce, objective = self.forward_backward(x, y)
        if not math.isfinite(objective):
            raise self._diverged("loss", objective, it + 1)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise self._diverged("gradient norm", grad_norm, it + 1)
        divergence = self.monitor.check_loss(ce, it + 1, cfg)  # a spike or stall: refused before the update
        if divergence is not None:
            raise self._divergence(divergence, lr)
        adamw_step(self.optimizer, self.model, self.lr_multipliers)
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        n_tokens = x.numel() * self.parallel.world_size  # the global batch: every rank takes an equal share
        self.step += 1
        self.tokens += n_tokens
        self.flops += self._step_flops_per_token() * n_tokens
        self.wall_seconds += elapsed
        self.last_train_loss = ce
        self._window["loss"] += ce
        self._window["steps"] += 1
        self._window["tokens"] += n_tokens
        self._window["seconds"] += elapsed
        self._window["lr"] = lr
        if cfg.max_weight_growth > 0:  # after the update: an exploding step shows in the weights
            divergence = self.monitor.check_weights(weight_norm(self.model), self.step, cfg)
            if divergence is not None:
                raise self._divergence(divergence, lr)
        return ce

    def _step_flops_per_token(self) -> int | float:
        """FLOPs per token of the step just taken: the model's fixed count, or for a top-any MoE the
        count measured from its routers' choices in this step (averaged over ranks, so that every
        rank keeps the same FLOP counter)."""
        measured = self.model.routed_flops_per_token(self.seq_len)
        if measured is None:
            return self._flops_per_token
        return round(self.parallel.mean_over_ranks([measured])[0])

    def _reset_window(self) -> None:
        self._window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0, "lr": self.lr}

    def _record(self, **extra: Any) -> dict[str, Any]:
        w = self._window
        record = {"step": self.step, "tokens": self.tokens, "flops": self.flops, "wall_seconds": self.wall_seconds,
                  "lr": w["lr"], "train_loss": w["loss"] / w["steps"] if w["steps"] else self.last_train_loss,
                  "tokens_per_s": w["tokens"] / w["seconds"] if w["seconds"] > 0 else None, **extra}
        self._metrics.write(record)
        self._reset_window()
        return record

    def _after_step(self, final: bool) -> None:
        cfg, step = self.config, self.step
        evaluate = final or (cfg.eval_interval > 0 and step % cfg.eval_interval == 0)
        log = evaluate or step % cfg.log_interval == 0
        record = None
        if log:
            extra = {"val_loss": self.evaluate()} if evaluate else {}
            record = self._record(**extra)
        if self.out_dir is not None and (final or (cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0)):
            self.save()
        self._bar.update(self.step, record)

    def train_steps(self, n: int) -> float | None:
        """Take ``n`` optimizer steps (budget not checked), with interval logging/eval/checkpoints.

        Returns the last step's training cross-entropy. Raises :class:`TrainingDiverged` when the run
        diverges (:mod:`~transformer_grow.train.health`). Returns early when a stop signal arrived
        (:meth:`stop_requested`): the caller checkpoints and stops.
        """
        with self._recovering():
            self._save_initial()
            for _ in range(n):
                if self.stop_requested():
                    break
                self._optimizer_step()
                self._after_step(final=False)
        return self.last_train_loss

    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> TrainSummary:
        """Train until the budget is reached, then evaluate and checkpoint (if ``out_dir``).

        ``on_step(trainer)``, if given, runs after every step (after its logging, evaluation and
        checkpoint); it may e.g. :meth:`replace_model` when a growth condition is met.
        """
        try:
            with self._recovering():
                self._save_initial()
                while not self.done():
                    if self.stop_requested():
                        self._stop()
                    final = self._next_step_is_last()
                    self._optimizer_step()
                    self._after_step(final=final)
                    if on_step is not None:
                        on_step(self)
            if self._evaluated_at != self.step:
                self._record(val_loss=self.evaluate())
            if self.out_dir is not None and self._saved_at != self.step:
                self.save()
        finally:
            self.close_progress()
        return self.summary()

    def summary(self) -> TrainSummary:
        saved = self.out_dir / CHECKPOINT_DIRNAME if self.out_dir is not None and self._saved_at is not None else None
        return TrainSummary(step=self.step, tokens=self.tokens, flops=self.flops, wall_seconds=self.wall_seconds,
                            train_loss=self.last_train_loss, val_loss=self.last_val_loss,
                            tokens_per_s=self.tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0,
                            checkpoint=None if saved is None else str(saved), eval_seconds=self.eval_seconds,
                            checkpoint_seconds=self.checkpoint_seconds)

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> float:
        """Mean validation cross-entropy on the fixed windows (fp32, no grad, eval mode)."""
        start = time.perf_counter()
        key = (self.seq_len, self.config.eval_windows)
        if key not in self._val_windows:
            self._val_windows[key] = self.data.val_windows(*key)
        batch_size = self.config.eval_batch_size or self.config.micro_batch_size
        self.last_val_loss = self.window_loss(self.model, self._val_windows[key], batch_size, self.device)
        self._evaluated_at = self.step
        self.eval_seconds += time.perf_counter() - start
        return self.last_val_loss

    def window_loss(self, model: GPT, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
        """Validation loss of ``model`` on ``windows`` under this run's objective: next-token cross-entropy
        (:func:`evaluate_windows`), or masked LM under the fixed validation mask (:func:`evaluate_masked`)."""
        if self.objective is None:
            return evaluate_windows(model, windows, batch_size, device)
        return evaluate_masked(model, windows, batch_size, device, self.objective)

    def log(self, **fields: Any) -> None:
        """Append a record (with the current step, tokens, FLOPs and time) to the metrics, e.g. an event."""
        self._metrics.write({"step": self.step, "tokens": self.tokens, "flops": self.flops,
                             "wall_seconds": self.wall_seconds, **fields})

    def close_progress(self) -> None:
        self._bar.close()

    def close(self) -> None:
        """Close the progress bar and the metrics writers."""
        self._bar.close()
        self._metrics.close()

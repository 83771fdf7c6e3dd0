"""GrowthManager: trains a :class:`~transformer_grow.plans.plan.GrowthPlan` end to end.

The seed API (:mod:`~transformer_grow.run.api`): a model, a growth strategy, a target size and a
budget; any PyTorch iterable of token batches as data; the trained large model back:

>>> manager = GrowthManager(model=my_model, strategy="g_stack", target_size="7B", budget="100B tokens")
>>> large = manager.grow_and_train(train_data=train_loader, eval_data=val_loader)
>>> manager.result.final_val_loss

The plan API: a target config and a plan name (or :class:`GrowthPlan`) on our token data:

>>> manager = GrowthManager(target=preset("tiny", vocab_size=data.vocab_size), plan="g_stack",
...                         budget_tokens=2_000_000, train_config=TrainConfig(batch_size=16, max_steps=1))
>>> result = manager.run(data)           # train, grow, train on; validation at fixed FLOP intervals
>>> result.final_val_loss, result.record.total_flops

The manager drives one :class:`~transformer_grow.train.Trainer` from outside: it trains in chunks
of steps up to the next evaluation or stage end, grows the model with
:func:`transformer_grow.operators.grow` (AdamW moments carried through the parameter map with
:func:`~transformer_grow.operators.grow_optimizer_state`, or a fresh optimizer), swaps it in with
:meth:`Trainer.replace_model` (LR re-warmup), and keeps the global LR schedule on the budget axis
(:class:`~transformer_grow.run.budget.BudgetSchedule`).

Validation runs every ``budget / n_evals`` (FLOPs or tokens, per ``budget_mode``) on the same fixed
windows of the target's context length, for every run. Wall-clock time counts the training steps
and the growth operations, not evaluation or checkpointing. The run record's entries for finished
stages and for growth and expert events are built by :mod:`~transformer_grow.run.bookkeeping`.

Under ``torchrun`` (``parallel="ddp"`` or ``"fsdp"``) every rank runs the manager with the same
arguments: the trainer's ``parallel`` is a :class:`~transformer_grow.distributed.parallel.DataParallel`,
growth releases the wrapper and wraps the grown model anew (:func:`~transformer_grow.run.event.grow_trainer`,
the same code path as in one process), and only rank 0 logs and writes files.

The manager drives the trainer through its public methods only (train, evaluate, grow, schedule,
time, driver state). With ``out_dir`` the run is resumable: the trainer checkpoint (written after
every evaluation) carries the manager's :class:`~transformer_grow.run.run_state.GrowthRunState`,
and a finished run writes ``result.json``; calling :meth:`run` again returns that result without
training, or continues from the last checkpoint.

A target of a Hugging Face family (a ``transformers`` config as ``target``, or an HF ``model``) trains
as our GPT; the family is recorded in the checkpoints' driver state and ``result.json``
(``hf_family``) so that the run exports to ``save_pretrained`` output
(:func:`~transformer_grow.run.hf_run.export_run`, ``tgrow hf export``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from transformer_grow.data.iterable import IterableTokens
from transformer_grow.distributed.env import check_batch_split
from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_json, read_json
from transformer_grow.model.config import FIXED_FIELDS, GROWABLE_FIELDS
from transformer_grow.plans.accounting import (
    FLOPS_FORMULA,
    PlanAccount,
    account_plan,
    flops_per_token,
    stage_batch_size,
    steps_for_rest,
)
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.plans.plan import GrowthPlan, describe_config
from transformer_grow.run.api import batch_sources, resolve_arguments, weights_digest
from transformer_grow.run.bookkeeping import expert_event_entry, growth_event_entry, stage_entry
from transformer_grow.run.budget import BudgetSchedule
from transformer_grow.run.event import check_growth_events, grow_trainer
from transformer_grow.run.experts import ExpertController, RoutingMonitor
from transformer_grow.run.hf_run import FAMILY_KEY, to_hf_model
from transformer_grow.run.record import EvalPoint, RunRecord
from transformer_grow.run.run_state import Counters, GrowthRunState, ScheduleStart
from transformer_grow.run.trigger import stage_schedule, trigger_fires
from transformer_grow.run.windows import probe_of, window_loss
from transformer_grow.train.checkpoint import resolve_checkpoint_dir
from transformer_grow.train.config import OBSERVATION_FIELDS, TrainConfig
from transformer_grow.train.distributed import DistEnv, make_trainer, resume_trainer
from transformer_grow.train.interrupt import requested as stop_signal
from transformer_grow.train.metrics import METRICS_FILENAME
from transformer_grow.train.resume import check_skip_change
from transformer_grow.train.schedule import LRSchedule
from transformer_grow.train.trainer import Trainer, TrainingInterrupted

RESULT_FILENAME = "result.json"
STATE_KEY = "growth_manager"
# Optimizer settings an explicit resume may change (to recover from a divergence).
RESUME_CHANGEABLE = ("lr", "min_lr_ratio", "warmup_steps", "grad_clip", "skip_batches")
PROBE_WINDOWS = 8  # validation windows of the growth certificate


def log_to_stderr(line: str) -> None:
    """The default progress sink: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class GrowthRunResult:
    """A finished plan: the report record (curve, stages, events) and the final model (if trained now)."""

    record: RunRecord
    model: torch.nn.Module | None = None
    hf_family: dict | None = None  # the Hugging Face family of the run (FamilyInfo as a dict), if any

    @property
    def final_val_loss(self) -> float:
        return self.record.final_val_loss


class GrowthManager:
    """Runs a growth plan (built-in name or :class:`GrowthPlan`) on a shared budget.

    Seed API (keywords; :mod:`~transformer_grow.run.api`): ``model`` (our GPT or a ``transformers``
    model of a supported family: the first stage, trained from its weights), ``strategy`` (``g_stack``,
    ``compound``, ``progressive``, ``adaptive``), ``target_size`` (``"7B"``, ``"350M"``, ``"1.2e8"``, or
    a config) and ``budget`` (``"100B tokens"``, ``"3e21 FLOPs"``); ``seq_len``: the context of an HF
    RoPE model (default ``max_position_embeddings`` capped at 2048). Then :meth:`grow_and_train`. The
    derived target, budget and stages are logged here, before any training. ``batch_size`` (sequences
    per step) and the optimiser come from ``train_config`` (its ``max_steps``/``max_tokens`` need not be
    set: the budget is ``budget``'s). A bidirectional (BERT) model's ``[MASK]`` id: ``train_config``'s,
    ``tokenizer=``'s ``mask_token_id`` or the HF config's (:func:`~transformer_grow.run.api.mask_token_for`).

    Args:
        target: the final model's config (``plan`` built-in names grow into it), or a ``transformers``
            config (or its dict) of a supported family: trained as our GPT, recorded for export.
        plan: ``"scratch"``, ``"g_stack"``, ``"compound"``, ``"progressive"``, ``"adaptive"`` or a plan.
        budget_tokens: the baseline's token budget (needed for a built-in plan name).
        train_config: optimiser, schedule shape, batch (``batch_size`` sequences of the *target's*
            ``seq_len`` per step; stages keep the tokens per step), seed and device. Its
            ``max_steps``/``max_tokens``/intervals are replaced by the plan's.
        plan_options: knobs of the built-in plans.
        n_evals: validation points over the budget (plus one at the start).
        eval_windows: number of fixed validation windows.
        out_dir: run directory (checkpoints, metrics, ``result.json``); ``None``: in memory only.
        name: the run's name in reports (default: the plan's name).
        log: where progress lines go (default: stderr); ``None`` silences them.
        data_config: recorded in checkpoints (so ``tgrow eval``/``sample`` can rebuild the data).
        parallel: ``None`` (one process), ``"ddp"`` or ``"fsdp"`` (under ``torchrun``; every rank
            runs the manager; ``batch_size`` is the global batch).
        env: the process group's :class:`~transformer_grow.distributed.env.DistEnv` (default: the
            initialised one).
    """

    def __init__(self, target=None, plan: str | GrowthPlan = "g_stack", budget_tokens: int | None = None,
                 train_config: TrainConfig | None = None, plan_options: PlanOptions | None = None,
                 n_evals: int = 20, eval_windows: int = 32, out_dir: str | Path | None = None,
                 name: str | None = None, log: Callable[[str], None] | None = log_to_stderr,
                 data_config=None, parallel: str | None = None, env: DistEnv | None = None,
                 allow_optimizer_changes: bool = False, *, model=None, strategy: str | None = None,
                 target_size=None, budget=None, seq_len: int | None = None, hf_family: dict | None = None,
                 tokenizer=None):
        setup = resolve_arguments(target, plan, budget_tokens, plan_options, parallel, env, hf_family, model=model,
                                  strategy=strategy, target_size=target_size, budget=budget, seq_len=seq_len,
                                  tokenizer=tokenizer, mask_token_id=getattr(train_config, "mask_token_id", None))
        plan, parallel, env, hf_family = setup.plan, setup.parallel, setup.env, setup.hf_family
        self.initial_model: torch.nn.Module | None = setup.initial  # the first stage's weights (seed API)
        self.seed_lines: list[str] = setup.lines
        require(isinstance(n_evals, int) and n_evals >= 2, f"n_evals={n_evals!r} must be an integer >= 2")
        require(isinstance(eval_windows, int) and eval_windows >= 1,
                f"eval_windows={eval_windows!r} must be an integer >= 1")
        self.plan = plan
        self.train_config = train_config or TrainConfig(max_steps=1)  # its budget is the plan's (no max_steps asked)
        if setup.mask_token_id is not None:  # a BERT's [MASK] id from tokenizer= or its HF config
            self.train_config = self.train_config.replace(mask_token_id=setup.mask_token_id)
        adaptation = getattr(plan, "expert_adaptation", None)  # the dynamic MoE plan's expert count
        self.experts = None if adaptation is None else ExpertController(adaptation, self.train_config.seed)
        self._routing, self._routing_points = RoutingMonitor(), []  # MoE routing at every evaluation
        self.tokens_per_step = self.train_config.batch_size * plan.target.seq_len
        self.account: PlanAccount = account_plan(plan, self.tokens_per_step)
        world_size = 1 if env is None else env.world_size
        for stage in self.account.stages:  # every stage's batch splits over ranks and micro-batches
            try:
                check_batch_split(stage.batch_size, self.train_config.grad_accum, world_size)
            except ConfigError as e:
                raise ConfigError(f"{stage.name}: {e}") from None
        check_growth_events(plan)
        self.budget = self.account.budget
        self.n_evals = n_evals
        self.eval_windows = eval_windows
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.name = name or plan.name
        self.parallel, self.env = parallel, env
        if hf_family is not None and not isinstance(hf_family, dict):
            hf_family = hf_family.to_dict()  # a FamilyInfo
        self.hf_family = hf_family
        self.is_main = env is None or env.is_main
        # an explicit resume may change RESUME_CHANGEABLE settings (e.g. a lower LR after a divergence)
        self.allow_optimizer_changes = allow_optimizer_changes
        self.log = log if self.is_main else None
        self.data_config = data_config
        self.trainer: Trainer | None = None
        self.state: GrowthRunState | None = None
        self.result: GrowthRunResult | None = None  # set when the run finishes (or was finished)
        self._windows: torch.Tensor | None = None
        self._initial_digest = None if self.initial_model is None else weights_digest(self.initial_model)
        for line in self.seed_lines:  # the derived architecture and budget, before any training
            self._say(line)
        if self.seed_lines:
            for line in self.account.table():
                self._say(line)

    # ------------------------------------------------------------------ setup
    def fingerprint(self, data, train_config: TrainConfig | None = None) -> str:
        """Identity of this run's settings: a checkpoint or result with another one is refused."""
        train = train_config or self.train_config
        train_settings = {k: v for k, v in train.to_dict().items() if k not in OBSERVATION_FIELDS}  # never identity
        ident = {"plan": self.plan.to_dict(), "train": train_settings, "n_evals": self.n_evals,
                 "eval_windows": self.eval_windows, "data": getattr(data, "fingerprint", None)}
        if self._initial_digest is not None:  # keys only when set: fingerprints of other runs stay as they were
            ident["initial_weights"] = self._initial_digest
        if self.hf_family is not None:
            ident["hf_family"] = self.hf_family
        if any(s.growth is not None and "stack" in (s.growth.method, s.growth.options.get("depth"))
               for s in self.plan.stages):
            # depth="stack" became G_stack's whole-model layout on 2026-12-08 (it duplicated blocks in place
            # before): a run checkpointed under the old meaning is refused, never resumed with the other layout.
            ident["stack_layout"] = "whole_model"
        return hashlib.blake2b(json.dumps(ident, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()

    def _stage_train_config(self, stage_index: int) -> TrainConfig:
        return self.train_config.replace(batch_size=self.account.stages[stage_index].batch_size,
                                         max_steps=self.account.total_steps, max_tokens=None,
                                         eval_interval=0, ckpt_interval=0)

    def _spent(self) -> float:
        t = self.trainer
        return float(t.flops if self.plan.budget_mode == "flops" else t.tokens)

    def _unit_cost(self) -> float:
        """Budget units one step of the current model costs."""
        t = self.trainer
        tokens = t.config.batch_size * t.seq_len
        return float(tokens * flops_per_token(t.model.config) if self.plan.budget_mode == "flops" else tokens)

    def _install_schedule(self) -> None:
        """The global schedule on the budget axis (restarted after a growth event with schedule=restart)."""
        cfg, s = self.train_config, self.state.schedule
        last_cost = self.tokens_per_step * (flops_per_token(self.plan.target)
                                            if self.plan.budget_mode == "flops" else 1)
        nominal = max(2, round((self.budget - s.start_spent) / last_cost))
        shape = LRSchedule.from_config(cfg.replace(warmup_steps=0 if s.restart else cfg.warmup_steps), nominal)
        self.trainer.set_schedule(BudgetSchedule(shape, s.start_step, s.start_spent, self.budget - last_cost,
                                                 self._spent))

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(f"[{self.name}] {text}")

    # -------------------------------------------------------------------- run
    def run(self, train_data, eval_data=None, limit_steps: int | None = None) -> GrowthRunResult | None:
        """Train the plan to its budget and return the result.

        ``eval_data`` (default ``train_data``) provides the fixed validation windows (its
        ``val_windows``), or is a ``[n, T + 1]`` tensor of windows. ``limit_steps`` stops early
        (after a checkpoint) once the run reaches that many steps and returns ``None``: a
        time-boxed session, or a test of resuming.
        """
        finished = self.open(train_data, eval_data)
        if finished is not None:
            return finished
        try:
            return self.advance(limit_steps=limit_steps)
        finally:
            self.close()

    def grow_and_train(self, train_data, eval_data=None, limit_steps: int | None = None):
        """Train the plan on ``train_data`` and return the trained large model (``manager.result`` holds
        the run's record): a ``transformers`` model of the family when the model or target was one, our
        GPT otherwise; in eval mode, as ``from_pretrained`` returns models.

        ``train_data``/``eval_data``: our token data, or any iterable of token batches (a DataLoader of
        ``[B, T + 1]`` LongTensors, ``(x, y)`` pairs or dicts in the Hugging Face convention: ``input_ids``
        of ``seq_len`` tokens or more, ``labels`` with -100, ``attention_mask`` padding), read in order
        (:class:`~transformer_grow.data.iterable.IterableTokens`; without ``eval_data`` the first rows of
        ``train_data`` are held out for validation and never trained on). ``limit_steps``: as for :meth:`run`
        (returns ``None``).
        """
        train_data, eval_data = batch_sources(train_data, eval_data, self.plan.target, self.eval_windows)
        result = self.run(train_data, eval_data, limit_steps=limit_steps)
        if result is None:
            return None
        model = result.model
        if model is None:  # finished earlier: the final checkpoint holds the model
            from transformer_grow.train.checkpoint import load_checkpoint, model_from_checkpoint

            require(self.out_dir is not None, "the run finished without a model to return")
            model = model_from_checkpoint(load_checkpoint(resolve_checkpoint_dir(self.out_dir)))
            self.result.model = model
        model.eval()
        return model if self.hf_family is None else to_hf_model(model, self.hf_family)

    def open(self, train_data, eval_data=None) -> GrowthRunResult | None:
        """Start the run, or resume it from ``out_dir``; returns the saved result if it already finished.

        With :meth:`advance` and :meth:`close`, several runs can take turns (``tgrow compare``
        interleaves them so that every run sees the same machine load).
        """
        fingerprint = self.fingerprint(train_data)
        if self.out_dir is not None and (self.out_dir / RESULT_FILENAME).exists():
            saved = read_json(self.out_dir / RESULT_FILENAME)
            if saved.get("fingerprint") != fingerprint:
                raise ConfigError(f"{str(self.out_dir)!r} holds a finished run with other settings; use another "
                                  "output directory or delete it")
            self._say("already finished; using its saved result")
            self.result = GrowthRunResult(RunRecord.from_dict(saved["record"]), hf_family=saved.get(FAMILY_KEY))
            return self.result
        self._prepare_windows(train_data if eval_data is None else eval_data)
        self._start_or_resume(train_data, fingerprint)
        return None

    def advance(self, until_fraction: float | None = None, limit_steps: int | None = None) -> GrowthRunResult | None:
        """Train on; return the result when the run finishes, or ``None`` after pausing (with a
        checkpoint) at the first evaluation where ``until_fraction`` of the budget is spent, or
        at step ``limit_steps``."""
        require(self.trainer is not None, "advance() needs open() first")
        return self._train(limit_steps, until_fraction)

    def close(self) -> None:
        """Release the trainer (progress bars, metric writers)."""
        if self.trainer is not None:
            self.trainer.close()

    def _prepare_windows(self, eval_data) -> None:
        if isinstance(eval_data, torch.Tensor):
            require(eval_data.ndim == 2 and eval_data.shape[1] == self.plan.target.seq_len + 1,
                    f"eval windows must have shape [n, {self.plan.target.seq_len + 1}], got {tuple(eval_data.shape)}")
            self._windows = eval_data
        else:
            labelled = {"labelled": True} if isinstance(eval_data, IterableTokens) else {}  # run/windows.py
            self._windows = eval_data.val_windows(self.plan.target.seq_len, self.eval_windows, **labelled)

    def _start_or_resume(self, data, fingerprint: str) -> None:
        checkpoint = None
        if self.out_dir is not None:
            try:
                checkpoint = resolve_checkpoint_dir(self.out_dir)
            except (ConfigError, FileNotFoundError):
                checkpoint = None
        if checkpoint is not None:
            trainer = resume_trainer(checkpoint, data, strategy=self.parallel, env=self.env, out_dir=self.out_dir,
                                     data_config=self.data_config)
            saved = trainer.driver_state(STATE_KEY)
            if saved is not None and saved.get("fingerprint") != fingerprint and self.allow_optimizer_changes:
                saved = self._accept_optimizer_changes(trainer, data, saved, fingerprint)
            if saved is None or saved.get("fingerprint") != fingerprint:
                raise ConfigError(f"{str(self.out_dir)!r} holds a checkpoint of a run with other settings; use "
                                  "another output directory or delete it")
            self.trainer, self.state = trainer, GrowthRunState.from_dict(saved)
            self._say(f"resuming at step {trainer.step} (stage {self.state.stage + 1}/{len(self.plan.stages)})")
        else:
            if self.out_dir is not None and self.is_main:  # records of a run killed before its first checkpoint
                (self.out_dir / METRICS_FILENAME).unlink(missing_ok=True)
            first = self.plan.stages[0]
            # the seed API's model: a copy, so that the caller's model (and a rerun) starts from its weights
            initial = None if self.initial_model is None else copy.deepcopy(self.initial_model).float()
            self.trainer = make_trainer(first.model, self._stage_train_config(0), data, strategy=self.parallel,
                                        env=self.env, out_dir=self.out_dir, data_config=self.data_config,
                                        model=initial)
            if self.hf_family is not None:  # in every checkpoint: what the run exports to
                self.trainer.set_driver_state(FAMILY_KEY, self.hf_family)
            self.state = GrowthRunState(fingerprint, stage_start=self._counters(),
                                        stage_end_step=self._stage_end_step(0), schedule=ScheduleStart())
            # in the trainer's first checkpoint too: its initial one (step 0), which a divergence may name
            self.trainer.set_driver_state(STATE_KEY, self.state.to_dict())
        self._install_schedule()

    def _accept_optimizer_changes(self, trainer: Trainer, data, saved: dict, fingerprint: str) -> dict:
        """The checkpoint's run state, now under ``fingerprint``, if only RESUME_CHANGEABLE settings
        differ from the checkpoint's (the trainer takes the new ones, logged as an event); else unchanged."""
        old = {name: getattr(trainer.config, name) for name in RESUME_CHANGEABLE}
        if self.fingerprint(data, self.train_config.replace(**old)) != saved.get("fingerprint"):
            return saved
        new = {name: getattr(self.train_config, name) for name in RESUME_CHANGEABLE}
        check_skip_change(trainer.config.replace(**new), trainer.config, trainer.step)
        trainer.config = trainer.config.replace(**new)
        changes = {name: [old[name], new[name]] for name in RESUME_CHANGEABLE if old[name] != new[name]}
        if self.is_main:
            trainer.log(event="optimizer_settings_changed", changes=changes)
        self._say(f"resuming with changed settings: {changes}")
        return {**saved, "fingerprint": fingerprint}

    def _counters(self) -> Counters:
        t = self.trainer
        return Counters(t.step, t.tokens, t.flops, t.wall_seconds)

    def _stage_end_step(self, index: int) -> int:
        """Last step of stage ``index``, fixed at its start; for a trigger stage, its latest end
        (``max_fraction`` of the budget spent), which the trigger may bring forward."""
        stage, start = self.plan.stages[index], self.trainer.step
        if stage.trigger is not None:
            room = stage.trigger.max_fraction * self.budget - self._spent()
            return start + max(1, math.floor(room / self._unit_cost()))
        if index == len(self.plan.stages) - 1:
            return start + steps_for_rest(self.budget, self._spent(), self._unit_cost())
        return start + self.account.stages[index].steps

    def _train(self, limit_steps: int | None, until_fraction: float | None = None) -> GrowthRunResult | None:
        t, state = self.trainer, self.state
        if not state.curve:
            self._evaluate()
        while True:
            if t.stop_requested():  # SIGTERM/SIGINT: checkpoint where the loop stands, as limit_steps does
                self._checkpoint()
                raise TrainingInterrupted(stop_signal() or 0, t.step,
                                          None if self.out_dir is None else str(self.out_dir / "checkpoint"))
            index = state.stage
            stage = self.plan.stages[index]
            self._rebudget_routed_stage()
            end = state.stage_end_step
            threshold = state.next_eval * self.budget / self.n_evals
            to_eval = max(1, math.ceil((threshold - self._spent()) / self._unit_cost() - 1e-9))
            n = min(end - t.step, to_eval)
            if limit_steps is not None:
                n = min(n, limit_steps - t.step)
            if self.experts is not None and self.experts.active(t.model):
                n = min(n, self.experts.steps_to_next(t.step))
            if n > 0:
                t.train_steps(n)
                self._adapt_experts()
            last_stage = index == len(self.plan.stages) - 1
            evaluated = False
            if self._spent() >= threshold - 1e-6 * self.budget and state.next_eval <= self.n_evals:
                self._evaluate()
                evaluated = True
            stage_done = t.step >= end or (evaluated and stage.trigger is not None and self._trigger_says_grow())
            if stage_done and last_stage:
                if state.curve[-1].step != t.step:
                    self._evaluate()
                return self._finish()
            if stage_done:
                self._grow()
                self._checkpoint()
            elif evaluated:
                self._checkpoint()
            if limit_steps is not None and t.step >= limit_steps:
                self._checkpoint()
                self._say(f"stopped at step {t.step} (limit); run again to continue")
                return None
            if evaluated and until_fraction is not None and self._spent() >= until_fraction * self.budget * (1 - 1e-9):
                return None  # paused after a checkpoint

    # ------------------------------------------------------------- evaluation
    def _evaluate(self) -> float:
        t = self.trainer
        batch = t.config.eval_batch_size or t.config.micro_batch_size
        loss = window_loss(t, t.model, self._windows, batch)
        self.state.curve.append(EvalPoint(t.step, t.tokens, float(t.flops), t.wall_seconds, loss, self.state.stage))
        self.state.next_eval = math.floor(self._spent() / self.budget * self.n_evals + 1e-6) + 1
        routing = self._routing.read(t.model)[0] if t.model.config.n_expert else {}
        if routing:  # mean active experts per token and load balance since the last evaluation
            self._routing_points.append({"step": t.step, "flops": float(t.flops), "stage": self.state.stage,
                                         **{k: v for k, v in routing.items() if k != "layers"}})
        self._progress(loss)
        return loss

    def _progress(self, val_loss: float) -> None:
        t = self.trainer
        done = min(1.0, self._spent() / self.budget)
        rate = t.tokens / t.wall_seconds if t.wall_seconds > 0 else 0.0
        eta = f"{t.wall_seconds * (1 - done) / done:.0f}s" if done > 0 else "n/a"
        stage = self.state.stage
        train = "n/a" if t.last_train_loss is None else f"{t.last_train_loss:.3f}"
        self._say(f"stage {stage + 1}/{len(self.plan.stages)} ({describe_config(t.model.config)}) step {t.step} "
                  f"{done:5.1%} of budget | {rate:,.0f} tok/s | train {train} | val {val_loss:.4f} | "
                  f"ETA {eta}")

    def _trigger_says_grow(self) -> bool:
        stage_points = [p for p in self.state.curve if p.stage == self.state.stage and p.step > 0]
        trigger = self.plan.stages[self.state.stage].trigger
        unit = "flops" if self.plan.budget_mode == "flops" else "tokens"
        # The stage's learning rates: the trigger then fits the schedule-aware (multi-power) law. With an anneal
        # prior (PlanOptions.anneal_prior) they run to the end of the budget, where the prior is centred.
        prior = getattr(self.plan, "anneal_prior", None)
        schedule = stage_schedule(self.trainer, self.state.stage_start.step, [p.step for p in stage_points],
                                  self._spent(), self._unit_cost(), trigger, self.budget,
                                  to_budget_end=prior is not None)
        fires, note = trigger_fires([getattr(p, unit) for p in stage_points], [p.val_loss for p in stage_points],
                                    trigger, self.budget, schedule, prior)
        if fires:
            self.state.trigger_notes.append(note)
            self._say(f"trigger: {note}")
        return fires

    # ----------------------------------------------------------------- growth
    def _grow(self) -> None:
        t, state = self.trainer, self.state
        index = state.stage
        new_stage = self.plan.stages[index + 1]
        event = new_stage.growth
        finished_stage = self._stage_record()  # appended only once growth succeeded: after a failure the stage goes on
        loss_before = state.curve[-1].val_loss if state.curve[-1].step == t.step \
            else window_loss(t, t.model, self._windows, t.config.micro_batch_size)
        with t.timed():  # growth counts as training time; grow_trainer re-wraps a DDP/FSDP model
            # The certificate is measured on real validation windows at the target's full length
            # (also covering the new positions after context growth).
            result = grow_trainer(t, new_stage.model, event.method, optimizer=event.optimizer,
                                  rewarmup_steps=event.rewarmup_steps,
                                  seed=self.train_config.seed + 1000 * (index + 1),
                                  batch_size=stage_batch_size(new_stage.model, self.tokens_per_step),
                                  preserve=event.preserve, dynamics_relax=event.dynamics_relax,
                                  probe=probe_of(self._windows[:PROBE_WINDOWS]), **event.options)
            new_config = result.model.config
            for name in FIXED_FIELDS + GROWABLE_FIELDS:  # grow() reached the planned stage's sizes
                require(getattr(new_config, name) == getattr(new_stage.model, name),
                        f"growth by {event.method} produced {name}={getattr(new_config, name)}, the plan's stage "
                        f"wants {getattr(new_stage.model, name)}")
        state.stages.append(finished_stage)
        if event.schedule == "restart":
            state.schedule = ScheduleStart(t.step, self._spent(), restart=True)
            self._install_schedule()
        state.stage = index + 1
        state.stage_start = self._counters()
        state.stage_end_step = self._stage_end_step(index + 1)
        loss_after = window_loss(t, t.model, self._windows, t.config.micro_batch_size)
        report = result.report
        state.events.append(growth_event_entry(t, index, event, report, loss_before, loss_after))
        t.log(event="growth", operator=report.method, val_loss_before=loss_before, val_loss_after=loss_after)
        self._say(f"grew to {describe_config(new_config)} at step {t.step}: val loss {loss_before:.4f} -> "
                  f"{loss_after:.4f} ({report.method})")

    def _rebudget_routed_stage(self) -> None:
        """The last stage of a top-any MoE in FLOPs mode ends where its *measured* FLOPs (the routers'
        actual choices, not the planned ``moe_top_k``) bring the run closest to the budget."""
        t, state = self.trainer, self.state
        done = t.step - state.stage_start.step
        if (state.stage != len(self.plan.stages) - 1 or self.plan.budget_mode != "flops" or done <= 0
                or t.model.config.moe_router != "topany" or not t.model.config.n_expert):
            return
        measured = (t.flops - state.stage_start.flops) / done  # FLOPs per step so far in this stage
        state.stage_end_step = t.step + max(0, round((self.budget - self._spent()) / measured))

    def _adapt_experts(self) -> None:
        """The dynamic expert count (:mod:`~transformer_grow.run.experts`); a change of the experts is
        recorded like a growth event (its certificate measured on the validation windows)."""
        if self.experts is None:
            return
        t = self.trainer
        with t.timed():
            event = self.experts.after_steps(t, probe=probe_of(self._windows[:PROBE_WINDOWS]))
        if event is None:
            return
        self.state.events.append(expert_event_entry(t, self.state.stage, event))
        t.log(event="experts", operator=event["operator"], experts=event["experts"])
        self._say(f"step {t.step}: {event['description']}")

    def _stage_record(self) -> dict:
        """The current stage's entry of the run record (model, steps, tokens, FLOPs, time so far)."""
        return stage_entry(self.trainer, self.plan, self.state.stage, self.state.stage_start, self._routing_points)

    # ---------------------------------------------------------------- results
    def _checkpoint(self) -> None:
        if self.out_dir is None:
            return
        self.trainer.set_driver_state(STATE_KEY, self.state.to_dict())
        self.trainer.save()

    def _finish(self) -> GrowthRunResult:
        t = self.trainer
        self.state.stages.append(self._stage_record())
        curve = [EvalPoint.from_dict(p.to_dict()) for p in self.state.curve]  # a copy
        notes = list(self.plan.notes) + list(self.state.trigger_notes)
        record = RunRecord(self.name, curve, float(t.flops), t.tokens, t.wall_seconds,
                           stages=self.state.stages, events=self.state.events, notes=notes)
        if self.out_dir is not None:
            self._checkpoint()
        if self.out_dir is not None and self.is_main:
            family = {} if self.hf_family is None else {FAMILY_KEY: self.hf_family}
            atomic_write_json(self.out_dir / RESULT_FILENAME, {
                "fingerprint": self.state.fingerprint, "record": record.to_dict(),
                "plan": self.plan.to_dict(), "account": self.account.to_dict(), "flops_formula": FLOPS_FORMULA,
                **family})
        self._say(f"done: val loss {record.final_val_loss:.4f}, {record.total_flops:.3g} FLOPs, "
                  f"{record.total_tokens:,} tokens, {record.wall_seconds:.1f}s")
        self.result = GrowthRunResult(record, t.model, self.hf_family)
        return self.result

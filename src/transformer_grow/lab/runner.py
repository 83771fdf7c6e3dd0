"""Grid runs on the real trainer: the ``train_fn`` of :func:`~transformer_grow.lab.grid.run_grid`.

:class:`GridRunner` turns a :class:`~transformer_grow.lab.grid.RunSpec` into a training run and a
results record:

- ``scratch`` runs train with :class:`~transformer_grow.train.Trainer` (cosine schedule over the run's
  own length, ``n_evals`` evaluations on fixed validation windows);
- growth plans (``g_stack``, ``compound``, ...) run through
  :class:`~transformer_grow.run.manager.GrowthManager` with the same training settings, the run's
  model as the target and the run's tokens as the baseline budget (so in the default
  ``budget_mode="flops"`` a grown run spends the FLOPs of the scratch run of the same size and budget).
  Both evaluate the same windows the same way, and the budget-axis schedule of the manager equals the
  step schedule for a single-stage run, so a grid's scratch and grown runs are measured alike.

Records hold ``n_params_nonembedding``, ``n_params`` (the final model's), ``tokens``, ``flops``
(everything trained, small stages included), ``final_val_loss``, ``val_curve``, ``wall_seconds``
(training steps and growth only), ``config``, ``plan`` and, for early-stopped runs, the prediction.

Early stopping (scratch runs only; a growth run's curve jumps at growth, so extrapolating its early
part says nothing about the end): at every evaluation after ``min_fraction`` of the run, the partial
curve is fitted with the schedule-aware multi-power law of Luo et al. 2025 (:func:`fit_learning_curve`
with the run's learning rates; the best law in ``benchmarks/learning_curves.py``) and the run stops
when :func:`should_stop_early` says that even the optimistic end of the interval at the last step is
worse than the best loss any finished run of the same plan and settings reached at the same number of
tokens, plus ``margin``. "Reached at the same tokens" reads the other runs' validation curves (linear
interpolation); a longer run's mid-curve loss has not been annealed yet, so this comparison is
conservative. An early-stopped record has ``early_stopped: true``, ``final_val_loss: null`` (it was
not trained to its budget), ``predicted_final_loss`` and its interval; fits leave it out by default
(:func:`~transformer_grow.lab.grid.select_records`).

The annealing bonus (``EarlyStopRule.use_prior``, on by default): the law's ``B w`` term, the loss the
schedule's decay will still pay, is identified only by a curve that has seen its learning rate fall.
Before a warmup-stable-decay run's decay nothing in its curve says what the decay will pay, and early
in a cosine run very little does. Luo et al. 2025 ("A Multi-Power Law for Loss Curve Prediction Across
Learning Rate Schedules", ICLR 2025, sec. 4) fit their law on a few completed runs and predict other
schedules with it; here the one parameter a partial curve cannot see is carried over the same way. The
completed (not early-stopped) runs of the grid with the same plan and settings (:meth:`GridRunner.settings_key`,
the same for every size) are the references: each one's learning rates are rebuilt from its recorded
train config as the trainer builds them (:func:`record_lrs`), runs whose curve stops before the end of
their schedule or whose schedule never decays are left out, and
:func:`~transformer_grow.scaling.anneal_prior.fit_anneal_prior` pools their bonus ratios ``B / L(T)``
into a log-normal prior (:func:`pooled_anneal_prior`). The partial curve's fit then holds ``B`` near that
ratio times its own fitted final loss. On micro-scale curves this cut the error of predicting a WSD
run's final loss from its first 50-75% from ~8% to ~2% (``multi_power+prior`` in
``benchmarks/learning_curves.py``). With no usable reference the fit runs without a prior, as before.
An early-stopped record keeps the prior used (``early_stop_prior``, ``null`` if none).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_grow.errors import require
from transformer_grow.lab.grid import SCRATCH, GridSpec, RunSpec, read_results
from transformer_grow.model import ModelConfig
from transformer_grow.plans.builders import PlanOptions, build_plan
from transformer_grow.scaling.anneal_prior import AnnealPrior, fit_anneal_prior, reference_problem
from transformer_grow.scaling.curve import DEFAULT_SCHEDULE_FORM, MIN_POINTS, fit_learning_curve, should_stop_early
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.schedule import LRSchedule, lr_at
from transformer_grow.train.trainer import Trainer


@dataclass(frozen=True)
class EarlyStopRule:
    """When to stop a scratch run early (see the module docstring)."""

    margin: float = 0.01  # nats: stop only when even the optimistic prediction is this much worse
    level: float = 0.95  # interval level of the prediction
    min_fraction: float = 0.25  # never judge before this share of the run's steps
    n_bootstrap: int = 50  # residual-bootstrap refits for the interval
    use_prior: bool = True  # fit with the annealing-bonus prior pooled over the grid's completed runs

    def __post_init__(self) -> None:
        require(self.margin >= 0, f"early-stop margin={self.margin} must be >= 0")
        require(0 < self.level < 1, f"early-stop level={self.level} must lie in (0, 1)")
        require(0 <= self.min_fraction < 1, f"early-stop min_fraction={self.min_fraction} must lie in [0, 1)")
        require(self.n_bootstrap >= 2, f"early-stop n_bootstrap={self.n_bootstrap} must be >= 2")
        require(isinstance(self.use_prior, bool), f"early-stop use_prior={self.use_prior!r} must be true or false")


@dataclass(frozen=True)
class EarlyStopDecision:
    stop: bool
    step: int
    predicted_final_loss: float
    interval: tuple[float, float]
    best_known_loss: float


def decide_early_stop(steps, losses, lrs, total_steps: int, best_known_loss: float,
                      rule: EarlyStopRule, prior: AnnealPrior | None = None) -> EarlyStopDecision | None:
    """Fit the partial curve and decide; ``None`` when it is too early to judge (too few points or steps).

    ``prior``: the annealing-bonus prior of the fit (:func:`pooled_anneal_prior`); ``lrs`` must then run to
    the end of the run's schedule (``total_steps``), where the prior is centred.
    """
    steps, losses = list(steps), list(losses)
    if len(steps) < MIN_POINTS or steps[-1] < rule.min_fraction * total_steps or steps[-1] >= total_steps:
        return None
    fit = fit_learning_curve(steps, losses, lrs, n_bootstrap=rule.n_bootstrap, prior=prior)
    lo, hi = fit.predict_interval(total_steps, rule.level)
    stop = should_stop_early(fit, total_steps, best_known_loss, rule.margin, rule.level)
    return EarlyStopDecision(stop, int(steps[-1]), float(fit.predict(total_steps)), (lo, hi), best_known_loss)


def loss_at_tokens(curve: list[dict[str, Any]], tokens: float) -> float | None:
    """Validation loss of ``curve`` at ``tokens`` (linear interpolation); ``None`` outside the curve."""
    points = sorted((float(p["tokens"]), float(p["val_loss"])) for p in curve or [])
    if not points or tokens > points[-1][0] or tokens < points[0][0]:
        return None
    for (t0, l0), (t1, l1) in itertools.pairwise(points):
        if t0 <= tokens <= t1:
            return l1 if t1 == t0 else l0 + (tokens - t0) / (t1 - t0) * (l1 - l0)
    return points[-1][1]


def best_known_loss(records: list[dict[str, Any]], tokens: float, plan: str, settings_key: str) -> float | None:
    """The lowest loss any finished run (same plan and settings) reached at ``tokens``; ``None`` if none did."""
    losses = []
    for record in records:
        if record.get("plan") != plan or record.get("settings_key") != settings_key or record.get("early_stopped"):
            continue
        loss = loss_at_tokens(record.get("val_curve") or [], tokens)
        if loss is not None:
            losses.append(loss)
    return min(losses) if losses else None


def record_lrs(record: dict[str, Any]) -> list[float] | None:
    """The learning rate of every step of a record's run (``lrs[i]``: step ``i + 1``), or ``None``.

    Rebuilt from the recorded train config (``record["config"]["train"]``) and the model's ``seq_len`` the
    way :class:`~transformer_grow.train.trainer.Trainer` builds ``trainer.schedule``:
    ``LRSchedule.from_config(train, train.total_steps(seq_len))``, read with :func:`lr_at` (no re-warmup: a
    scratch run never grows). ``None`` when the record has no usable config (e.g. written by hand or by an
    older version with other train settings).
    """
    try:
        config = record["config"]
        train = TrainConfig.from_dict(dict(config["train"]))
        total = train.total_steps(int(config["model"]["seq_len"]))
        schedule = LRSchedule.from_config(train, total)
    except (KeyError, TypeError, ValueError):  # ValueError: ConfigError of unknown settings, no budget at all
        return None
    if not isinstance(total, int) or total < 2:
        return None
    return [lr_at(schedule, i) for i in range(total)]


def reference_curve(record: dict[str, Any]) -> tuple[list[float], list[float], list[float]] | None:
    """``(steps, val_losses, lrs)`` of a record that can serve :func:`fit_anneal_prior`, else ``None``.

    Kept: a curve of ``MIN_POINTS`` or more evaluations that reaches the end of the run's schedule (within
    one evaluation interval, as :func:`fit_anneal_prior` asks) under a schedule that decays
    (:func:`~transformer_grow.scaling.anneal_prior.reference_problem`). Whether the record was early-stopped, and its
    plan and settings, are :func:`pooled_anneal_prior`'s to check.
    """
    points = []
    for point in record.get("val_curve") or []:
        step, loss = point.get("step"), point.get("val_loss")
        if isinstance(step, (int, float)) and isinstance(loss, (int, float)) and step >= 1 \
                and math.isfinite(loss) and loss > 0:
            points.append((float(step), float(loss)))
    points.sort()
    steps = [step for step, _ in points]
    if len(steps) < MIN_POINTS or any(b <= a for a, b in itertools.pairwise(steps)):
        return None
    lrs = record_lrs(record)
    if lrs is None or steps[-1] > len(lrs) or reference_problem(steps, lrs) is not None:
        return None
    return steps, [loss for _, loss in points], lrs


def pooled_anneal_prior(records: list[dict[str, Any]], plan: str, settings_key: str) -> AnnealPrior | None:
    """The annealing-bonus prior pooled over the completed runs of ``plan`` with ``settings_key``; ``None`` if none.

    Early-stopped records (their curve stops before the decay), records of other plans or settings and
    curves :func:`reference_curve` refuses are left out before :func:`fit_anneal_prior` sees them.
    """
    curves = []
    for record in records:
        if record.get("plan") != plan or record.get("settings_key") != settings_key or record.get("early_stopped"):
            continue
        curve = reference_curve(record)
        if curve is not None:
            curves.append(curve)
    return fit_anneal_prior(curves, form=DEFAULT_SCHEDULE_FORM) if curves else None


class _StopRun(Exception):
    """Raised from the trainer's step hook to end an early-stopped run."""


class GridRunner:
    """Trains the runs of ``spec`` on ``data`` (a :class:`~transformer_grow.data.TokenData`); call it with a run.

    ``check()`` builds every run's model, training and plan settings (raising ConfigError) without
    data; ``settings_key(run)`` identifies the settings a finished record must share to be reused.
    """

    def __init__(self, spec: GridSpec, data_config, results_path: str | Path, *,
                 plan_options: PlanOptions | None = None, early_stop: EarlyStopRule | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = print, data=None):
        self.spec = spec
        self.data_config = data_config
        self.results_path = Path(results_path)
        self.plan_options = plan_options or PlanOptions()
        self.early_stop = early_stop
        self.progress = progress
        self.log = log
        self.data = data  # the prepared TokenData; needed to train, not to check()

    # ---------------------------------------------------------------- settings
    def model_config(self, run: RunSpec, vocab_size: int | None = None) -> ModelConfig:
        vocab = vocab_size or (self.data.vocab_size if self.data is not None else run.model["vocab_size"])
        return ModelConfig.from_dict({**run.model, "vocab_size": int(vocab)})

    def train_config(self, run: RunSpec) -> TrainConfig:
        t, seq_len = self.spec.training, run.model["seq_len"]
        steps = math.ceil(run.tokens / (t.batch_size * seq_len))
        eval_interval = max(1, steps // t.n_evals)
        return TrainConfig(batch_size=t.batch_size, max_tokens=run.tokens, lr=t.lr, min_lr_ratio=t.min_lr_ratio,
                           warmup_steps=min(max(1, round(t.warmup_fraction * steps)), max(0, steps - 1)),
                           schedule="cosine", weight_decay=t.weight_decay, eval_interval=eval_interval,
                           eval_windows=t.eval_windows, log_interval=eval_interval, ckpt_interval=0, seed=run.seed,
                           device=t.device, dtype=t.dtype)

    def build_plan(self, run: RunSpec, vocab_size: int | None = None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = build_plan(run.plan, self.model_config(run, vocab_size), run.tokens, self.plan_options)
        return plan, sorted({str(w.message) for w in caught})

    def _manager(self, run: RunSpec, plan, train_config: TrainConfig, log=None):
        from transformer_grow.run.manager import GrowthManager

        t = self.spec.training
        return GrowthManager(plan.target, plan, train_config=train_config, n_evals=t.n_evals,
                             eval_windows=t.eval_windows, name=run.run_id, log=log, data_config=self.data_config)

    def check(self) -> list[str]:
        """Build every run's settings (and growth plan, checked by the manager) before any work;
        returns the plans' warnings (e.g. G_stack's growth timing clamped to the budget), one per plan."""
        caught_by_plan: dict[str, list[str]] = {}
        for run in self.spec.runs():
            self.model_config(run)
            train_config = self.train_config(run)
            if run.plan != SCRATCH:
                plan, caught = self.build_plan(run)
                self._manager(run, plan, train_config)
                caught_by_plan.setdefault(run.plan, []).extend(f"{run.run_id}: {m}" for m in caught)
        notes = []
        for caught in caught_by_plan.values():
            if caught:
                more = f" (and {len(caught) - 1} more run(s) like it)" if len(caught) > 1 else ""
                notes.append(caught[0] + more)
        return notes

    def settings_key(self, run: RunSpec) -> str:
        """Hash of what a finished run's result depends on besides its run_id (L, d, tokens, seed, plan).

        The same for every size of a grid, so runs of different sizes can be compared (early stopping)."""
        ident = {"training": self.spec.training.to_dict(), "seq_len": run.model["seq_len"],
                 "data": getattr(self.data, "fingerprint", None), "plan": run.plan,
                 "plan_options": None if run.plan == SCRATCH else dataclasses.asdict(self.plan_options)}
        return hashlib.blake2b(json.dumps(ident, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()

    def _config_record(self, run: RunSpec, model_config: ModelConfig, train_config: TrainConfig) -> dict[str, Any]:
        config = {"model": model_config.to_dict(), "train": train_config.to_dict(),
                  "grid_training": self.spec.training.to_dict(), "data_fingerprint": self.data.fingerprint,
                  "data": None if self.data_config is None else dataclasses.asdict(self.data_config)}
        if run.plan != SCRATCH:
            config["plan_options"] = dataclasses.asdict(self.plan_options)
        return config

    # -------------------------------------------------------------------- runs
    def __call__(self, run: RunSpec) -> dict[str, Any]:
        require(self.data is not None, "GridRunner.data is not set: assign the prepared TokenData first")
        started = time.perf_counter()
        record = self._train_scratch(run) if run.plan == SCRATCH else self._train_growth(run)
        record["elapsed_seconds"] = time.perf_counter() - started
        record["planned_tokens"] = run.tokens
        if self.log:
            final = record["final_val_loss"]
            outcome = (f"early-stopped at step {record['stopped_at_step']} (predicted final loss "
                       f"{record['predicted_final_loss']:.4f})" if record.get("early_stopped")
                       else f"final val loss {final:.4f}")
            self.log(f"  {run.run_id}: {outcome}, {record['tokens']:,} tokens, {record['flops']:.3g} FLOPs, "
                     f"{record['elapsed_seconds']:.1f}s")
        return record

    def _early_stop_hook(self, run: RunSpec, trainer: Trainer, state: dict[str, Any]):
        if self.early_stop is None:
            return None
        records = read_results(self.results_path)
        best = best_known_loss(records, run.tokens, run.plan, self.settings_key(run))
        if best is None:
            return None
        total = trainer.total_steps
        lrs = [lr_at(trainer.schedule, i) for i in range(total)]  # the whole schedule: the prior is centred at its end
        prior = pooled_anneal_prior(records, run.plan, self.settings_key(run)) if self.early_stop.use_prior else None
        state["prior"] = prior

        def on_step(t: Trainer) -> None:
            last = t.history[-1] if t.history else None
            if last is None or last.get("step") != t.step or last.get("val_loss") is None or t.done():
                return
            curve = [r for r in t.history if r.get("val_loss") is not None]
            decision = decide_early_stop([r["step"] for r in curve], [r["val_loss"] for r in curve], lrs, total,
                                         best, self.early_stop, prior)
            if decision is not None and decision.stop:
                state["decision"] = decision
                raise _StopRun

        return on_step

    def _train_scratch(self, run: RunSpec) -> dict[str, Any]:
        model_config, train_config = self.model_config(run), self.train_config(run)
        trainer = Trainer(model_config, train_config, self.data, data_config=self.data_config, progress=self.progress)
        state: dict[str, Any] = {}
        try:
            trainer.fit(on_step=self._early_stop_hook(run, trainer, state))
        except _StopRun:
            pass
        finally:
            trainer.close()
        model = trainer.model
        curve = [{k: r[k] for k in ("step", "tokens", "flops", "wall_seconds", "val_loss")}
                 for r in trainer.history if r.get("val_loss") is not None]
        record = {
            "n_params_nonembedding": model.num_params(non_embedding=True),
            "n_params": model.num_params(non_embedding=False),
            "tokens": trainer.tokens, "flops": trainer.flops, "final_val_loss": trainer.last_val_loss,
            "val_curve": curve, "wall_seconds": trainer.wall_seconds, "steps": trainer.step,
            "tokens_per_s": trainer.tokens / trainer.wall_seconds if trainer.wall_seconds > 0 else None,
            "config": self._config_record(run, model_config, train_config), "early_stopped": False,
        }
        decision: EarlyStopDecision | None = state.get("decision")
        if decision is not None:
            planned_tokens = trainer.total_steps * trainer.tokens_per_step
            record.update({
                "early_stopped": True, "final_val_loss": None, "val_loss_at_stop": trainer.last_val_loss,
                "stopped_at_step": trainer.step, "planned_steps": trainer.total_steps,
                "planned_flops": model.flops_per_token(model_config.seq_len) * planned_tokens,
                "predicted_final_loss": decision.predicted_final_loss,
                "predicted_final_loss_ci": list(decision.interval), "best_known_loss": decision.best_known_loss,
                "early_stop_rule": dataclasses.asdict(self.early_stop),
                "early_stop_prior": None if state.get("prior") is None else state["prior"].to_dict()})
        return record

    def _train_growth(self, run: RunSpec) -> dict[str, Any]:
        from transformer_grow.run.manager import log_to_stderr

        plan, _ = self.build_plan(run, self.data.vocab_size)
        train_config = self.train_config(run)
        manager = self._manager(run, plan, train_config, log=log_to_stderr if self.progress else None)
        result = manager.run(self.data)
        record, model = result.record, result.model
        config = self._config_record(run, plan.target, train_config)
        config["account"] = manager.account.to_dict()
        return {
            "n_params_nonembedding": model.num_params(non_embedding=True),
            "n_params": model.num_params(non_embedding=False),
            "tokens": record.total_tokens, "flops": record.total_flops, "final_val_loss": record.final_val_loss,
            "val_curve": [p.to_dict() for p in record.curve], "wall_seconds": record.wall_seconds,
            "steps": record.curve[-1].step, "stages": record.stages,
            "growth_events": [e.get("description") for e in record.events], "config": config,
            "early_stopped": False,
        }

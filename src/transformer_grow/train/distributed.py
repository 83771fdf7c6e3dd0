"""Training and growth under ``torchrun`` with DDP or FSDP2.

>>> with distributed_session(device="auto") as env:             # torchrun --nproc_per_node 2 ...
...     trainer = DistributedTrainer(config, TrainConfig(batch_size=32, max_steps=200), data,
...                                  out_dir="run", strategy="fsdp", env=env)
...     trainer.train_steps(100)
...     grow_trainer(trainer, config.replace(n_layer=2 * config.n_layer), method="stack", rewarmup_steps=20)
...     trainer.fit()

:class:`DistributedTrainer` is a :class:`~transformer_grow.train.Trainer` whose model lives in a
:class:`~transformer_grow.distributed.wrap.DistributedModel` (DDP or FSDP2). What changes:

- **Data**: rank ``r`` takes its contiguous slice of every global batch (``data.batch(..., rank,
  world_size)``), so the ranks together see exactly the single-process batch.
- **Logging and accounting**: the step's loss is all-reduced (mean over ranks = the global batch
  mean); tokens and FLOPs count the global batch. Metrics, progress bars and checkpoints are written
  by rank 0 only; every rank keeps the same counters and the same in-memory history.
- **Checkpoints**: full model and optimizer state (FSDP: gathered to rank 0), in the single-process
  checkpoint format, so a distributed run resumes with or without distribution.
- **Growth**: never on a live wrapper. :meth:`DistributedTrainer.unwrap` returns the plain full
  model and AdamW state by name; :func:`grow_trainer` grows it identically on every rank and
  :meth:`~DistributedTrainer.replace_model` wraps the grown model anew with a new optimizer holding
  the grown state. Before every step the wrapped parameter set is compared with the one recorded at
  wrap time; a change raises :class:`~transformer_grow.distributed.guard.WrappedModelChanged`.

:func:`make_trainer`, :func:`resume_trainer` and :func:`maybe_distributed_session` pick plain or
distributed training from ``strategy`` (``None``/``"none"``, ``"ddp"``, ``"fsdp"``), for the CLI.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transformer_grow.device import resolve_device
from transformer_grow.distributed.env import (
    DistEnv,
    RankData,
    check_batch_split,
    distributed_session,
    init_distributed,
    main_rank_first,
    shutdown_distributed,
)
from transformer_grow.distributed.guard import WrappedModelChanged, ensure_unwrapped
from transformer_grow.distributed.wrap import STRATEGIES, DistributedModel, StateByName, empty_gpt_like
from transformer_grow.errors import choice, require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import load_optimizer_state_by_name, optimizer_state_by_name
from transformer_grow.train.checkpoint import CHECKPOINT_DIRNAME, Checkpoint
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.optim import build_optimizer
from transformer_grow.train.trainer import Trainer

__all__ = [
    "STRATEGIES", "DistEnv", "DistributedModel", "DistributedTrainer", "RankData", "WrappedModelChanged",
    "distributed_session", "ensure_unwrapped", "grow_trainer", "init_distributed", "main_rank_first",
    "make_trainer", "maybe_distributed_session", "resume_trainer", "shutdown_distributed",
]

# Strategy and env for trainers built by Trainer.resume (which calls cls(...) with the base arguments).
_PENDING: contextvars.ContextVar[tuple[str, DistEnv | None] | None] = contextvars.ContextVar("pending", default=None)


class DistributedTrainer(Trainer):
    """A :class:`Trainer` on ``env.world_size`` ranks with ``strategy`` ``"ddp"`` or ``"fsdp"``.

    Takes the :class:`Trainer` arguments (``data`` is the full data; each rank takes its slice) plus
    ``strategy`` and ``env`` (default: :meth:`DistEnv.current`, the initialised process group).
    ``batch_size`` is the global batch and must divide into ``world_size * grad_accum`` equal parts.
    Every rank must make the same calls in the same order (train, evaluate, save, grow).
    """

    def __init__(self, model_config: ModelConfig | None, train_config: TrainConfig, data: Any,
                 out_dir: str | os.PathLike | None = None, model: GPT | None = None, data_config=None,
                 progress: bool = False, *, strategy: str | None = None, env: DistEnv | None = None):
        pending = _PENDING.get()
        if strategy is None and pending is not None:
            strategy, env = pending[0], env or pending[1]
        require(strategy is not None, f"DistributedTrainer needs strategy= one of {', '.join(map(repr, STRATEGIES))}")
        choice("strategy", strategy, STRATEGIES)
        train_config.validate()
        env = env or DistEnv.current()
        check_batch_split(train_config.batch_size, train_config.grad_accum, env.world_size)
        require(train_config.device in ("auto", env.device.type),
                f"device={train_config.device!r} does not match the process group's device {str(env.device)!r} "
                f"(backend {env.backend}); use device='auto' or {env.device.type!r}")
        if model is not None:
            ensure_unwrapped(model, action="train (pass the plain model; the trainer wraps it)")
        self.strategy, self.env = strategy, env
        self.dist_model: DistributedModel | None = None
        if not isinstance(data, RankData):
            data = RankData(data, env.rank, env.world_size)
        if resolve_device(train_config.device).type != env.device.type:  # e.g. "auto" on a GPU host, gloo job
            train_config = train_config.replace(device=env.device.type)
        # Only rank 0 gets a metrics file (and TensorBoard writer); the others keep records in memory
        # but know the run directory, so that they take part in every checkpoint's gather.
        super().__init__(model_config, train_config, data, out_dir=out_dir if env.is_main else None, model=model,
                         data_config=data_config, progress=progress and env.is_main)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.device = env.device

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and console output (rank 0)."""
        return self.env.is_main

    # ----------------------------------------------------------------- model
    def _install_model(self, model: GPT) -> None:
        """Wrap ``model`` (releasing the previous wrapper) and build its optimizer (fresh state)."""
        if self.dist_model is not None:
            self._forward_model = None
            self.dist_model.release()
        ensure_unwrapped(model, action="train (pass the plain model; the trainer wraps it)")
        self.dist_model = DistributedModel(model, self.strategy, self.env)
        super()._install_model(self.dist_model.local)
        if self.strategy == "ddp":  # the base class calls the model itself; DDP's forward syncs gradients
            module = self.dist_model.module
            self._forward_model = torch.compile(module) if self.config.compile else _SyncOnLastMicroBatch(module)

    def _check_wrapper(self) -> None:
        if self.dist_model is None or self.model is not self.dist_model.local:
            raise WrappedModelChanged("trainer.model was replaced without replace_model(); the new model is not "
                                      "wrapped and its gradients would not be synchronised")
        self.dist_model.check_unchanged()

    def unwrap(self) -> tuple[GPT, StateByName]:
        """Release the wrapper; return the plain full model and the AdamW state by name (every rank).

        Training refuses to step until :meth:`replace_model` installs a model again (the grown one,
        or this one to continue unchanged).
        """
        self._check_wrapper()
        state = self.dist_model.full_optimizer_state(self.optimizer)
        return self.dist_model.unwrap(), state

    def replace_model(self, new_model: GPT, optimizer_state: StateByName | None = None,
                      rewarmup_steps: int = 0) -> None:
        """Wrap ``new_model`` (plain, identical on every rank) and train it from the current step;
        ``optimizer_state`` (full tensors by name) is sharded/loaded into the new optimizer."""
        check_batch_split(self.config.batch_size, self.config.grad_accum, self.env.world_size)  # e.g. a new stage batch
        super().replace_model(new_model, None, rewarmup_steps)
        if optimizer_state:
            self.dist_model.load_optimizer_state(self.optimizer, optimizer_state)

    # -------------------------------------------------------------- training
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """This rank's share of the step, then the losses averaged over ranks (the global batch mean)."""
        self._check_wrapper()
        if isinstance(self._forward_model, _SyncOnLastMicroBatch):
            self._forward_model.start_step(self.config.grad_accum)
        ce, objective = super().forward_backward(x, y)
        ce, objective = self.env.all_reduce_mean([ce, objective])
        return ce, objective

    def _optimizer_step(self) -> float:
        tokens, flops, window = self.tokens, self.flops, self._window["tokens"]
        ce = super()._optimizer_step()
        counted = self.tokens - tokens
        if counted * self.env.world_size == self.tokens_per_step and self.env.world_size > 1:
            # The base class counted this rank's share of the batch: count the global batch.
            extra = self.env.world_size - 1
            self.tokens += extra * counted
            self.flops += extra * (self.flops - flops)
            self._window["tokens"] += extra * (self._window["tokens"] - window)
        return ce

    # ----------------------------------------------------------- checkpoints
    def checkpoint(self) -> Checkpoint | None:
        """The full state as a :class:`Checkpoint` on rank 0 (FSDP: gathered; every rank must call
        it); ``None`` on the other ranks under FSDP."""
        if self.strategy == "ddp":
            return super().checkpoint()
        model_state = self.dist_model.full_model_state(main_only=True)
        optimizer_state = self.dist_model.full_optimizer_state(self.optimizer, main_only=True)
        if not self.env.is_main:
            return None
        # The base class reads self.model / self.optimizer: show it a plain CPU copy of the full state.
        plain = empty_gpt_like(self.model, torch.device("cpu"))
        plain.load_state_dict(model_state)
        plain_optimizer = build_optimizer(plain, self.config, torch.device("cpu"))
        load_optimizer_state_by_name(plain, plain_optimizer, optimizer_state)
        sharded = self.model, self.optimizer
        self.model, self.optimizer = plain, plain_optimizer
        try:
            return super().checkpoint()
        finally:
            self.model, self.optimizer = sharded

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Rank 0 writes the checkpoint (atomically); all ranks take part in gathering it, then meet at
        a barrier. Returns the checkpoint path on every rank."""
        if path is None and self.out_dir is None:
            raise ValueError("Trainer.save() needs a path when the trainer has no out_dir")
        if self.env.is_main:
            written = super().save(path)
        else:
            if self.strategy == "fsdp":
                self.checkpoint()  # join the collectives of the gather
            if path is None:
                self._saved_at = self.step
            written = Path(path) if path is not None else self.out_dir / CHECKPOINT_DIRNAME
        self.env.barrier()
        return written

    @classmethod
    def resume(cls, path: str | os.PathLike, data: Any, train_config: TrainConfig | None = None,
               out_dir: str | os.PathLike | None = None, data_config=None, progress: bool = False, *,
               strategy: str = "ddp", env: DistEnv | None = None) -> DistributedTrainer:
        """:meth:`Trainer.resume` on every rank (each reads the checkpoint), wrapped with ``strategy``."""
        choice("strategy", strategy, STRATEGIES)
        token = _PENDING.set((strategy, env))
        try:
            trainer = super().resume(path, data, train_config=train_config, out_dir=out_dir,
                                     data_config=data_config, progress=progress)
        finally:
            _PENDING.reset(token)
        trainer.dist_model.shard_plain_optimizer_state(trainer.optimizer)
        return trainer


class _SyncOnLastMicroBatch:
    """Calls a DDP module so that only the last of a step's ``grad_accum`` micro-batches all-reduces
    gradients in its backward (what ``DistributedDataParallel.no_sync()`` does for the others)."""

    def __init__(self, ddp: torch.nn.Module):
        self.ddp, self.micro_batches, self.calls = ddp, 1, 0

    def start_step(self, micro_batches: int) -> None:
        self.micro_batches, self.calls = micro_batches, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.ddp.require_backward_grad_sync = self.calls >= self.micro_batches
        return self.ddp(*args, **kwargs)


@contextlib.contextmanager
def maybe_distributed_session(strategy: str | None, device: str = "auto") -> Iterator[DistEnv | None]:
    """``None`` for ``strategy`` ``None``/``"none"`` (one process); else a :func:`distributed_session`."""
    if strategy in (None, "none"):
        yield None
        return
    choice("strategy", strategy, STRATEGIES)
    with distributed_session(device=device) as env:
        yield env


def make_trainer(model_config: ModelConfig | None, train_config: TrainConfig, data: Any, *,
                 strategy: str | None = None, env: DistEnv | None = None, **kwargs: Any) -> Trainer:
    """A plain :class:`Trainer` (``strategy`` ``None`` or ``"none"``) or a :class:`DistributedTrainer`."""
    if strategy in (None, "none"):
        return Trainer(model_config, train_config, data, **kwargs)
    return DistributedTrainer(model_config, train_config, data, strategy=strategy, env=env, **kwargs)


def resume_trainer(path: str | os.PathLike, data: Any, *, strategy: str | None = None, env: DistEnv | None = None,
                   **kwargs: Any) -> Trainer:
    """:meth:`Trainer.resume` (``strategy=None``) or :meth:`DistributedTrainer.resume`."""
    if strategy in (None, "none"):
        return Trainer.resume(path, data, **kwargs)
    return DistributedTrainer.resume(path, data, strategy=strategy, env=env, **kwargs)


def grow_trainer(trainer: Trainer, target: ModelConfig | dict | str, method: str | None = None, *,
                 optimizer: str = "carry", rewarmup_steps: int = 0, seed: int = 0, **grow_options: Any):
    """Grow the trainer's model to ``target`` and continue training the grown model; returns the
    :class:`~transformer_grow.grow.GrowthResult`.

    Works for a plain :class:`Trainer` and a :class:`DistributedTrainer` alike. Distributed: the
    wrapper is released first (:meth:`DistributedTrainer.unwrap`), every rank grows the same plain
    model with the same ``seed``, and the grown model is wrapped anew with a new optimizer.
    ``optimizer="carry"`` grows the AdamW moments through the parameter map, ``"fresh"`` starts with
    none. If growth fails (e.g. a bad target), the old model is wrapped again and the error re-raised.
    """
    from transformer_grow.grow import grow, grow_optimizer_state

    choice("optimizer", optimizer, ("carry", "fresh"))
    require(isinstance(rewarmup_steps, int) and rewarmup_steps >= 0,
            f"rewarmup_steps={rewarmup_steps!r} is not allowed; it must be an integer >= 0")
    if isinstance(trainer, DistributedTrainer):
        plain, state = trainer.unwrap()
    else:
        plain, state = trainer.model, optimizer_state_by_name(trainer.model, trainer.optimizer)
    try:
        result = grow(plain, target, method, seed=seed, **grow_options)
    except BaseException:
        if isinstance(trainer, DistributedTrainer):  # re-wrap the old model; keep an ongoing re-warmup
            rewarmup = trainer.rewarmup
            trainer.replace_model(plain, state)
            trainer.rewarmup = rewarmup
        raise
    grown_state = grow_optimizer_state(state, result.param_map) if optimizer == "carry" else None
    trainer.replace_model(result.model, grown_state, rewarmup_steps=rewarmup_steps)
    return result

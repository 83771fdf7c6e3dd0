"""What a :class:`~transformer_grow.train.trainer.Trainer` does around its steps to keep a run safe:
checkpoints (the run's own and the ring of :mod:`~transformer_grow.train.ring`, with the initial state),
a clean stop on SIGINT/SIGTERM (:mod:`~transformer_grow.train.interrupt`), and on a divergence
(:mod:`~transformer_grow.train.health`) the checkpoint to resume (:mod:`~transformer_grow.train.recovery`).

:class:`RunLifecycle` is a base class of the trainer, kept apart so that the training loop stays short;
it uses the trainer's attributes (``config``, ``out_dir``, ``parallel``, ``step``, counters).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from transformer_grow.data import DataConfig
from transformer_grow.distributed.parallel import Parallel
from transformer_grow.train.checkpoint import CHECKPOINT_DIRNAME, Checkpoint, save_checkpoint
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.health import Divergence
from transformer_grow.train.interrupt import active as stop_signals_active
from transformer_grow.train.interrupt import requested as stop_signal
from transformer_grow.train.outcome import TrainingDiverged, TrainingInterrupted
from transformer_grow.train.recovery import find_recovery
from transformer_grow.train.resume import resume_from_checkpoint, trainer_checkpoint
from transformer_grow.train.ring import add_to_ring, clear_ring, entry_path

if TYPE_CHECKING:
    from transformer_grow.train.trainer import Trainer


class RunLifecycle:
    """Checkpoints, stop signals and divergence handling of a :class:`Trainer` (see the module docstring)."""

    # ------------------------------------------------------------ divergence
    def _diverged(self, what: str, value: float, step_number: int) -> TrainingDiverged:
        return self._divergence(Divergence("non-finite", step_number, step_number,
                                           f"non-finite {what} {value} at step {step_number}"))

    def _divergence(self, div: Divergence, lr: float | None = None) -> TrainingDiverged:
        """The error for ``div``; ``lr``: the rate of its step (default: of the step being taken)."""
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr if lr is None else lr
        applied = "its update was applied" if div.applied else "no update was applied"
        return TrainingDiverged(f"{div.text} (lr {lr:.3g}); {applied}", div, lr)

    @contextlib.contextmanager
    def _recovering(self) -> Iterator[None]:
        """On a divergence, find the checkpoint to resume (main process, run with a directory)."""
        try:
            yield
        except TrainingDiverged as e:
            if self.is_main and e.recovery is None:
                try:
                    e.recovery = find_recovery(self, e)
                except Exception:  # noqa: BLE001 - the divergence is the error to report; its line then says less
                    e.recovery = None
            raise

    def _save_initial(self) -> None:
        """A new run's initial state as the checkpoint ring's first entry (step 0): a run that diverges
        before its first checkpoint then resumes (with a lower learning rate) like any other."""
        if not self._fresh:
            return
        self._fresh = False
        if self.out_dir is None or self.step != 0 or self.config.keep_checkpoints == 0:
            return
        start = time.perf_counter()
        checkpoint = self.checkpoint()
        if checkpoint is not None:
            clear_ring(self.out_dir)  # entries of an earlier attempt in this directory are no part of this run
            save_checkpoint(entry_path(self.out_dir, 0), checkpoint)
        self.parallel.barrier()
        self.checkpoint_seconds += time.perf_counter() - start

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived (within :func:`~transformer_grow.train.interrupt.stop_on_signals`),
        agreed by every process, so that all of them stop after the same step."""
        if not stop_signals_active():
            return False
        asked = stop_signal() is not None
        if self.parallel.world_size > 1:
            asked = self.parallel.mean_over_ranks([float(asked)])[0] > 0
        return asked

    def _stop(self) -> None:
        """Checkpoint (unless this step's is written) and raise :class:`TrainingInterrupted`."""
        if self.out_dir is not None and self._saved_at != self.step:
            self.save()
        saved = None if self.out_dir is None else str(self.out_dir / CHECKPOINT_DIRNAME)
        raise TrainingInterrupted(stop_signal() or 0, self.step, saved)

    def held_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of two fixed validation windows (CPU), e.g. to check a checkpoint's health."""
        windows = self.data.val_windows(self.seq_len, 2)
        if self.objective is not None:
            return self.objective.eval_batch(windows)
        return windows[:, :-1], windows[:, 1:]

    # ----------------------------------------------------------- checkpoints
    def checkpoint(self) -> Checkpoint | None:
        """A snapshot of the current state as a :class:`Checkpoint` (CPU copies: training on does not change it).

        The full state, in the same format for every ``parallel``; under :class:`DataParallel` every
        rank must call it (FSDP gathers the shards) and ranks other than 0 get ``None``.
        """
        return trainer_checkpoint(self)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint to ``path`` (default ``<out_dir>/checkpoint``) atomically; returns its path.

        Under :class:`DataParallel` every rank calls it (gathering the state), rank 0 writes, and the
        ranks then meet at a barrier.
        """
        ring = path is None and self.config.keep_checkpoints > 0  # the run's own checkpoint also enters the ring
        if path is None:
            if self.out_dir is None:
                raise ValueError("Trainer.save() needs a path when the trainer has no out_dir")
            path = self.out_dir / CHECKPOINT_DIRNAME
            self._saved_at = self.step
        start = time.perf_counter()
        checkpoint = self.checkpoint()
        if checkpoint is not None:
            save_checkpoint(path, checkpoint)
            if ring:
                add_to_ring(self.out_dir, path, self.step, self.config.keep_checkpoints)
        self.parallel.barrier()
        self.checkpoint_seconds += time.perf_counter() - start
        return Path(path)

    @classmethod
    def resume(cls, path: str | os.PathLike, data: Any, train_config: TrainConfig | None = None,
               out_dir: str | os.PathLike | None = None, data_config: DataConfig | None = None,
               progress: bool = False, parallel: Parallel | None = None) -> Trainer:
        """Continue the run checkpointed at ``path``: a checkpoint or run directory, or an entry of a run's
        ring, ``<run>/checkpoints/step-N`` (the steps after it are then abandoned: :mod:`.ring`).

        ``train_config`` defaults to the checkpointed one (pass a copy with a larger ``max_steps``
        to extend the run). ``out_dir`` defaults to the run directory holding the checkpoint; its
        metrics past the checkpoint's step (written before a crash) are dropped. ``parallel``: as
        for the constructor (every rank reads the checkpoint; any checkpoint resumes under any).
        """
        return resume_from_checkpoint(cls, path, data, train_config=train_config, out_dir=out_dir,
                                      data_config=data_config, progress=progress, parallel=parallel)

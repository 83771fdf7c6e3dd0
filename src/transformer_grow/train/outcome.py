"""How a training run ends: :class:`TrainSummary` (where it stopped), :class:`TrainingDiverged` (a
non-finite loss, a loss spike or stall, exploding weights) or :class:`TrainingInterrupted` (a stop signal).
All are re-exported by :mod:`transformer_grow.train.trainer` and :mod:`transformer_grow.train`."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any


class TrainingDiverged(RuntimeError):
    """The run diverged (see :mod:`~transformer_grow.train.health`). Before a NaN, a spike or a stall no
    update was applied for that step; exploding weights are seen after it.

    ``divergence`` (a :class:`~transformer_grow.train.health.Divergence`) says what and where; the trainer
    sets ``lr`` (the step's learning rate) and, on the main process of a run with a directory,
    ``recovery`` (a :class:`~transformer_grow.train.recovery.Recovery`: the checkpoint to resume from).
    """

    def __init__(self, message: str, divergence: Any = None, lr: float | None = None):
        super().__init__(message)
        self.divergence = divergence
        self.lr = lr
        self.recovery: Any = None


class TrainingInterrupted(RuntimeError):
    """A stop signal (SIGINT, SIGTERM: see :mod:`~transformer_grow.train.interrupt`) ended the run after a
    whole step; ``checkpoint`` is where its state was saved (``None`` without a run directory)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint (no run directory)"
        super().__init__(f"stopped by {signal_name(signum)} after step {step}; {where}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class TrainSummary:
    """Where a run ended: counters, final losses, throughput and the checkpoint written.

    ``wall_seconds`` is the time of the training steps (and growth), which ``tokens_per_s`` divides;
    ``eval_seconds`` and ``checkpoint_seconds`` the time evaluating and writing checkpoints, so that
    :attr:`total_seconds` is the time the run took (all counted over every resumed part).
    """

    step: int
    tokens: int
    flops: int
    wall_seconds: float
    train_loss: float | None
    val_loss: float | None
    tokens_per_s: float
    checkpoint: str | None
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.wall_seconds + self.eval_seconds + self.checkpoint_seconds

    def line(self) -> str:
        val = "n/a" if self.val_loss is None else f"{self.val_loss:.4f}"
        where = self.checkpoint or "(not saved)"
        return (f"done: step {self.step}, final val_loss {val}, {self.tokens:,} tokens, "
                f"{self.tokens_per_s:,.0f} tokens/s, wall {self.total_seconds:.1f}s (training "
                f"{self.wall_seconds:.1f}s, evaluation {self.eval_seconds:.1f}s, checkpoints "
                f"{self.checkpoint_seconds:.1f}s), checkpoint {where}")

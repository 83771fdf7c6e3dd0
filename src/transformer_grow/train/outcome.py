"""How a training run ends: :class:`TrainSummary` (where it stopped) or :class:`TrainingDiverged` (a
non-finite loss). Both are re-exported by :mod:`transformer_grow.train.trainer` and :mod:`transformer_grow.train`."""

from __future__ import annotations

from dataclasses import dataclass


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; no update was applied for that step."""


@dataclass
class TrainSummary:
    """Where a run ended: counters, final losses, throughput and the checkpoint written."""

    step: int
    tokens: int
    flops: int
    wall_seconds: float
    train_loss: float | None
    val_loss: float | None
    tokens_per_s: float
    checkpoint: str | None

    def line(self) -> str:
        val = "n/a" if self.val_loss is None else f"{self.val_loss:.4f}"
        where = self.checkpoint or "(not saved)"
        return (f"done: step {self.step}, final val_loss {val}, {self.tokens:,} tokens, "
                f"{self.tokens_per_s:,.0f} tokens/s, wall {self.wall_seconds:.1f}s, checkpoint {where}")

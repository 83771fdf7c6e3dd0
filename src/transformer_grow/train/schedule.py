"""Learning-rate schedules as small pure objects.

Steps are counted from 0: ``lr(it)`` is the rate used by the optimizer step with index ``it``
(the ``it + 1``-th step; after it, ``trainer.step == it + 1``).

* Warmup: linear, ``lr * (it + 1) / warmup_steps`` for ``it < warmup_steps``, so the last warmup
  step runs at the peak rate and no step runs at zero.
* ``"cosine"``: half a cosine from ``lr`` down to ``min_lr = lr * min_lr_ratio`` between the end of
  warmup and the last step ``total_steps - 1`` (Loshchilov & Hutter 2017, SGDR, eq. 5, one cycle).
* ``"wsd"``: warmup-stable-decay (Hu et al. 2024, MiniCPM, Sec. 4): constant peak rate, then a
  linear decay to ``min_lr`` over the last ``decay_frac * total_steps`` steps, reaching it at the
  last step (linear cooldown as in Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
  Beyond Fixed Training Durations").
* ``"constant"``: the peak rate after warmup.

Past ``total_steps`` (a run extended on resume) the decaying schedules stay at ``min_lr``.

After growth the model may re-warm (:class:`Rewarmup`): the global schedule continues and is
multiplied by ``min(1, (it + 1 - grow_step) / rewarmup_steps)``, where ``grow_step`` is the number
of steps completed when the grown model was swapped in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transformer_grow.train.config import TrainConfig


@dataclass(frozen=True)
class LRSchedule:
    """Warmup followed by cosine, warmup-stable-decay or constant; ``schedule(it) -> lr``."""

    kind: str
    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay_steps: int = 0  # wsd only: length of the final decay phase

    @classmethod
    def from_config(cls, config: TrainConfig, total_steps: int) -> LRSchedule:
        decay_steps = max(1, round(config.decay_frac * total_steps)) if config.schedule == "wsd" else 0
        return cls(kind=config.schedule, peak_lr=config.lr, min_lr=config.lr * config.min_lr_ratio,
                   warmup_steps=config.warmup_steps, total_steps=total_steps, decay_steps=decay_steps)

    def __call__(self, it: int) -> float:
        if it < self.warmup_steps:
            return self.peak_lr * (it + 1) / self.warmup_steps
        last = self.total_steps - 1
        if self.kind == "cosine":
            span = last - self.warmup_steps
            progress = 1.0 if span <= 0 else min(1.0, (it - self.warmup_steps) / span)
            return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            decay_start = max(self.warmup_steps, self.total_steps - self.decay_steps)
            if it < decay_start:
                return self.peak_lr
            span = last - decay_start
            progress = 1.0 if span <= 0 else min(1.0, (it - decay_start) / span)
            return self.peak_lr + (self.min_lr - self.peak_lr) * progress
        return self.peak_lr  # constant


@dataclass(frozen=True)
class Rewarmup:
    """Linear re-warmup after the model was replaced at ``grow_step`` (steps completed then)."""

    grow_step: int
    steps: int

    def factor(self, it: int) -> float:
        if self.steps <= 0:
            return 1.0
        return max(0.0, min(1.0, (it + 1 - self.grow_step) / self.steps))

    def to_dict(self) -> dict[str, Any]:
        return {"grow_step": self.grow_step, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Rewarmup | None:
        return None if d is None else cls(grow_step=int(d["grow_step"]), steps=int(d["steps"]))


def lr_at(schedule: LRSchedule, it: int, rewarmup: Rewarmup | None = None) -> float:
    """Learning rate of step index ``it``: the global schedule times the re-warmup factor, if any."""
    lr = schedule(it)
    return lr if rewarmup is None else lr * rewarmup.factor(it)

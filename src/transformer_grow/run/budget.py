"""The learning-rate schedule of a growth run, on the budget axis, and the fixed-window evaluation.

A growth run's steps do not cost the same: a small stage's step is cheaper than the target's. The
global schedule therefore advances with the share of the *budget* spent (FLOPs in ``"flops"`` mode,
tokens in ``"tokens"`` mode), not with the step count: the learning rate at any point depends only
on how much of the shared budget is gone, and every plan of a comparison (the baseline included)
anneals at the same pace. For the baseline, whose steps all cost the same, this is exactly the
step-based schedule of :class:`~transformer_grow.train.schedule.LRSchedule`.

Warmup stays in steps (it protects the first updates of a fresh model). The shape (cosine, WSD,
constant) is :class:`LRSchedule`'s, evaluated at the *equivalent step*
``progress * (nominal_steps - 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from transformer_grow.train.evaluate import evaluate_windows
from transformer_grow.train.schedule import LRSchedule


@dataclass
class BudgetSchedule:
    """``schedule(it) -> lr`` with progress measured in the budget spent (see the module docstring).

    Attributes:
        shape: the schedule's shape over ``nominal_steps = shape.total_steps`` equivalent steps.
        start_step: the step this schedule starts at (0, or the growth step of a restart).
        start_spent: budget spent at ``start_step``.
        end_spent: budget spent before the run's last step (where the decay reaches its minimum).
        spent: reads the budget spent so far (before the step about to run).
    """

    shape: LRSchedule
    start_step: int
    start_spent: float
    end_spent: float
    spent: Callable[[], float]

    @property
    def total_steps(self) -> int:
        return self.shape.total_steps

    def progress(self) -> float:
        """Share of this schedule's span of the budget already spent, in [0, 1]."""
        span = self.end_spent - self.start_spent
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.spent() - self.start_spent) / span))

    def __call__(self, it: int) -> float:
        local = it - self.start_step
        if local < self.shape.warmup_steps:
            return self.shape(local)
        equivalent = self.progress() * (self.shape.total_steps - 1)
        return self.shape(max(float(self.shape.warmup_steps), equivalent))


@torch.no_grad()
def evaluate_fixed_windows(model: torch.nn.Module, windows: torch.Tensor, batch_size: int,
                           device: torch.device, evaluate=evaluate_windows) -> float:
    """Mean validation cross-entropy of ``model`` on ``windows`` (``[n, T + 1]``), whatever its stage.

    Every run of a comparison is measured on the same windows (the target's context length). A
    model with learned positions and a shorter context reads each window as consecutive chunks of
    its own length (each chunk predicts its tokens from the chunk only); the mean is still over
    all ``n * T`` predictions. RoPE models read the whole window. ``evaluate``: the loss of one set of
    windows (default next-token cross-entropy; a run's :meth:`Trainer.window_loss` for its objective, e.g.
    masked LM for a bidirectional model).
    """
    config = model.config
    length = windows.shape[1] - 1
    if config.pos != "learned" or config.seq_len >= length:
        return evaluate(model, windows, batch_size, device)
    size = config.seq_len
    pieces = [windows[:, start:min(start + size, length) + 1] for start in range(0, length, size)]
    total = 0.0
    for piece in pieces:
        total += evaluate(model, piece, batch_size, device) * (piece.shape[1] - 1)
    return total / length

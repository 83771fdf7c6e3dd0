"""A growth run: one plan trained end to end (the training loop, growth events, evaluation, checkpoints
and ``result.json``), and :class:`GrowthManager`, its front door."""

from transformer_grow.run.manager import GrowthManager, GrowthRunResult

__all__ = ["GrowthManager", "GrowthRunResult"]

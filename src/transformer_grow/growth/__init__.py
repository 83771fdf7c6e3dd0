"""Staged growth training: plans (stages and growth events), timing rules, triggers, exact FLOP
accounting and :class:`GrowthManager`, which trains a plan end to end."""

from transformer_grow.growth.manager import GrowthManager, GrowthRunResult

__all__ = ["GrowthManager", "GrowthRunResult"]

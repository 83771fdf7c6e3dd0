"""When to grow: G_stack's fitted timing rule, clamped to the budget.

Du et al. 2024, "Stacking Your Transformers: A Closer Look at Model Growth for Efficient LLM
Pre-Training" (NeurIPS 2024), Sec. 4 / Eq. (1), fit the best number of tokens ``d`` to train the
small model before stacking it (growth factor ``g = 4``) as

    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74

with ``N`` the target model's parameter count and ``C`` the total training FLOPs, ``C = 6 N D``
for ``D`` training tokens. The fit covers 410M to 3B parameter models; at the tiny budgets of a CPU
run the ``163.27 / log10(C)`` term dominates and the rule asks for more tokens than the whole run.
:func:`g_stack_timing` then clamps ``d`` to ``max_fraction`` of the budget and warns.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from transformer_grow.errors import require

# Coefficients of Du et al. 2024, Eq. (1).
G_STACK_SLOPE = 0.88
G_STACK_NUMERATOR = 163.27
G_STACK_INTERCEPT = -5.74
DEFAULT_MAX_FRACTION = 0.5


class GrowthTimingWarning(UserWarning):
    """The fitted timing rule asked for a growth point outside the run; it was clamped."""


def g_stack_log10_tokens(target_params: float, total_flops: float) -> float:
    """``log10(d)`` of Du et al. 2024, Eq. (1), for ``N = target_params`` and ``C = total_flops``."""
    require(target_params > 0, f"target_params={target_params!r} must be > 0")
    require(total_flops > 1, f"total_flops={total_flops!r} must be > 1 (log10(C) is a divisor)")
    return (G_STACK_SLOPE * math.log10(target_params) + G_STACK_NUMERATOR / math.log10(total_flops)
            + G_STACK_INTERCEPT)


@dataclass(frozen=True)
class GStackTiming:
    """The timing computation of a ``g_stack`` plan, with every intermediate for printing."""

    target_params: int  # N: parameters of the target model (all, embeddings included, as in the paper)
    budget_tokens: int  # D: the run's total tokens
    total_flops: float  # C = 6 N D
    log10_tokens: float  # log10(d) from the formula
    formula_tokens: float  # d = 10 ** log10(d)
    growth_tokens: int  # tokens of the small model actually used
    clamped: bool
    max_fraction: float
    explicit_fraction: float | None = None  # set when the user chose the fraction instead of the formula

    @property
    def fraction(self) -> float:
        """Share of the budget's tokens spent before growing."""
        return self.growth_tokens / self.budget_tokens

    def explain(self) -> list[str]:
        """Human-readable lines showing the computation (``tgrow plan`` prints them)."""
        if self.explicit_fraction is not None:
            return [(f"growth point: explicit fraction {self.explicit_fraction:g} of {self.budget_tokens:,} tokens "
                    f"= {self.growth_tokens:,} tokens (G_stack formula not used)")]
        lines = [
            "G_stack timing (Du et al. 2024, Eq. 1): log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74",
            (f"  N = {self.target_params:,} target parameters, D = {self.budget_tokens:,} tokens, "
            f"C = 6 N D = {self.total_flops:.4g} FLOPs"),
            (f"  log10(d) = 0.88 * {math.log10(self.target_params):.4f} + 163.27 / {math.log10(self.total_flops):.4f}"
            f" - 5.74 = {self.log10_tokens:.4f}  ->  d = {self.formula_tokens:.4g} tokens"),
        ]
        if self.clamped:
            lines.append(f"  d exceeds {self.max_fraction:g} of the budget (the rule was fitted on 410M-3B models): "
                         f"clamped to {self.growth_tokens:,} tokens ({self.fraction:.0%} of the budget)")
        else:
            lines.append(f"  growth after {self.growth_tokens:,} tokens ({self.fraction:.1%} of the budget)")
        return lines


def g_stack_timing(target_params: int, budget_tokens: int, max_fraction: float = DEFAULT_MAX_FRACTION,
                   fraction: float | None = None, warn: bool = True) -> GStackTiming:
    """Tokens to train the small model before growing, by G_stack's rule or an explicit ``fraction``.

    The formula's ``d`` is clamped to ``max_fraction * budget_tokens`` (with a
    :class:`GrowthTimingWarning` when ``warn``); an explicit ``fraction`` of the budget replaces the
    formula altogether.
    """
    require(isinstance(budget_tokens, int) and budget_tokens > 0, f"budget_tokens={budget_tokens!r} must be > 0")
    require(0 < max_fraction < 1, f"max_fraction={max_fraction!r} must lie strictly between 0 and 1")
    total_flops = 6.0 * target_params * budget_tokens
    log10_d = g_stack_log10_tokens(target_params, total_flops)
    if fraction is not None:
        require(0 < fraction < 1, f"growth fraction={fraction!r} must lie strictly between 0 and 1")
        return GStackTiming(target_params, budget_tokens, total_flops, log10_d, 10.0**log10_d,
                            max(1, round(fraction * budget_tokens)), False, max_fraction, fraction)
    formula_tokens = 10.0**log10_d
    limit = max_fraction * budget_tokens
    clamped = formula_tokens > limit
    timing = GStackTiming(target_params, budget_tokens, total_flops, log10_d, formula_tokens,
                          max(1, round(min(formula_tokens, limit))), clamped, max_fraction)
    if clamped and warn:
        warnings.warn(f"G_stack's timing rule asks for d = {formula_tokens:.3g} tokens before growing, more than "
                      f"{max_fraction:g} of the {budget_tokens:,}-token budget (the rule was fitted on 410M-3B "
                      f"models); clamped to {timing.growth_tokens:,} tokens", GrowthTimingWarning, stacklevel=2)
    return timing

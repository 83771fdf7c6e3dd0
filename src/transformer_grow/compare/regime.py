"""The regime of a comparison: is the target compute-optimal for its budget?

Growth "wins" trivially when the target is far too large for the budget: a smaller model trained
on the same FLOPs would also win (the small-only control shows it). The report therefore prints
the target's tokens per non-embedding parameter and the compute-optimal size for the budget from
a fitted law ``N_opt(C) = G * C^a`` (Hoffmann et al. 2022, "Training Compute-Optimal Large
Language Models", Approach 1-3: ``N_opt`` grows as ``C^a`` with ``a ~ 0.5``), and warns when the
target is larger than that.

The CPU presets carry :data:`STDLIB_BYTES_LAW`, measured on this library's own runs (an IsoFLOP
grid on the stdlib corpus with the byte tokenizer, fitted with ``tgrow scaling fit``); a comparison
with other settings falls back to :data:`CHINCHILLA_RULE`: ``C = 6 N D`` with ``D = 20 N`` (about
20 tokens per parameter, Hoffmann et al. 2022 Table 3) gives ``N_opt = sqrt(C / 120)``. At these tiny
scales the two differ a lot: the measured optimum sits at ~100 tokens per parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import require


@dataclass(frozen=True)
class ComputeOptimalLaw:
    """``N_opt(C) = coefficient * C ** exponent``: the compute-optimal non-embedding parameter count
    for a budget of ``C`` training FLOPs.

    Attributes:
        coefficient: ``G`` of the law.
        exponent: ``a`` of the law (about 0.5 in Hoffmann et al. 2022).
        source: where the numbers come from (a fit, a paper), printed in the report.
    """

    coefficient: float
    exponent: float
    source: str

    def validate(self) -> None:
        for name in ("coefficient", "exponent"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0, f"compute_optimal {name}={value!r} is not allowed; it must be a positive number")
        require(self.exponent < 1, f"compute_optimal exponent={self.exponent!r} is not allowed; it must be below 1 "
                                   "(N_opt grows more slowly than the compute)")
        require(isinstance(self.source, str) and self.source.strip() != "",
                f"compute_optimal source={self.source!r} is not allowed; say where the law comes from")

    def n_opt(self, flops: float) -> float:
        """Compute-optimal parameter count for ``flops`` training FLOPs."""
        return self.coefficient * flops ** self.exponent


CHINCHILLA_RULE = ComputeOptimalLaw(
    coefficient=120 ** -0.5, exponent=0.5,
    source="Hoffmann et al. 2022 rule of thumb, C = 6ND at ~20 tokens per parameter, N_opt = sqrt(C / 120); "
           "not measured on this library's runs")

# Measured 2026-12-02: 14 runs (1 to 8 layers, d_model 32 to 96, 28k to 443k non-embedding parameters) at
# C = 1e12, 2e12 and 4e12 FLOPs (C = flops_per_token x tokens, output head and attention included) on the
# stdlib corpus, byte tokenizer, seq_len 128, batch 32, AdamW lr 3e-3, cosine; final validation loss fitted
# with `tgrow scaling fit` (Approach 3, Huber on log-loss): N_opt = 41.2k at 1e12 (95% CI 24.6k-52.3k) and
# 66.8k at 4e12, a = 0.349. Valid near these budgets and settings only.
STDLIB_BYTES_LAW = ComputeOptimalLaw(
    coefficient=2.672, exponent=0.349,
    source="measured: IsoFLOP grid of 14 runs at 1e12-4e12 FLOPs, stdlib corpus, byte tokenizer, seq 128, "
           "batch 32, lr 3e-3, Approach 3 fit (Hoffmann et al. 2022); N_opt(1e12) = 41.2k [24.6k, 52.3k]")


def regime(law: ComputeOptimalLaw | None, params_nonembedding: int, budget_tokens: int,
           budget_flops: float) -> dict[str, Any]:
    """Tokens per parameter of the target and, with a law, ``N_opt(C)`` and ``N / N_opt``."""
    out: dict[str, Any] = {"params_nonembedding": params_nonembedding, "budget_tokens": budget_tokens,
                           "budget_flops": budget_flops,
                           "tokens_per_param": budget_tokens / params_nonembedding if params_nonembedding else None,
                           "law": None, "n_opt": None, "target_over_n_opt": None, "too_large": None}
    if law is not None:
        n_opt = law.n_opt(budget_flops)
        out.update(law={"coefficient": law.coefficient, "exponent": law.exponent, "source": law.source},
                   n_opt=n_opt, target_over_n_opt=params_nonembedding / n_opt, too_large=params_nonembedding > n_opt)
    return out


def regime_lines(r: dict[str, Any]) -> list[str]:
    """Report lines: tokens per parameter, ``N_opt`` and a warning when the target is too large."""
    lines = [f"Target: {r['params_nonembedding']:,} non-embedding parameters, {r['budget_tokens']:,} tokens: "
             f"{r['tokens_per_param']:.3g} tokens per parameter; budget {r['budget_flops']:.4g} FLOPs."]
    if r.get("law") is None:
        return [*lines, "No compute-optimal law given: the regime is not checked."]
    law = r["law"]
    lines.append(f"Compute-optimal size for this budget: N_opt(C) = {law['coefficient']:.4g} * C^{law['exponent']:.3g}"
                 f" = {r['n_opt']:,.0f} parameters; target N / N_opt = {r['target_over_n_opt']:.3g} "
                 f"(law: {law['source']}).")
    if r["too_large"]:
        lines.append(f"WARNING: the target is {r['target_over_n_opt']:.3g}x larger than compute-optimal for its "
                     "budget: a smaller model is expected to beat it, so a speedup over the baseline can come from "
                     "training a smaller model rather than from growth (see the small-only controls).")
    return lines

"""Synthetic scaling data from known laws: for tests, demos and checking a fit before trusting it.

:func:`synthetic_records` draws runs whose final loss follows ``L(N, D) = E + A/N^alpha + B/D^beta``
times log-normal noise, laid out as IsoFLOP budgets (several model sizes per compute budget, so
Approach 2 has profiles to fit) and returned as results-JSONL records (``flops = 6 N D``).
"""

from __future__ import annotations

import numpy as np

from transformer_grow.scaling.chinchilla import ChinchillaParams

# Hoffmann et al. 2022, Approach 3 estimates (eq. 10).
CHINCHILLA_PAPER = ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic_records(
    params: ChinchillaParams = CHINCHILLA_PAPER,
    *,
    budgets: tuple[float, ...] = (1e18, 1e19, 1e20, 1e21),
    sizes_per_budget: int = 8,
    size_span: float = 30.0,
    noise: float = 0.01,
    seed: int = 0,
) -> list[dict]:
    """Records of ``len(budgets) * sizes_per_budget`` runs; ``noise`` is the std of the log-loss noise.

    At each budget C, N spans ``size_span`` (geometrically) around the law's compute-optimal N, and
    ``D = C / (6 N)``.
    """
    rng = np.random.default_rng(seed)
    records = []
    for flops in budgets:
        n_center = float(params.compute_optimal(flops)[0])
        sizes = n_center * np.geomspace(1.0 / np.sqrt(size_span), np.sqrt(size_span), sizes_per_budget)
        for n_params in sizes:
            tokens = flops / (6.0 * n_params)
            loss = float(params.loss(n_params, tokens)) * float(np.exp(rng.normal(0.0, noise)))
            records.append(
                {
                    "run_id": f"C{flops:.0e}-N{n_params:.3e}",
                    "n_params_nonembedding": float(n_params),
                    "n_params": float(n_params) * 1.1,
                    "tokens": float(tokens),
                    "flops": float(flops),
                    "final_val_loss": loss,
                }
            )
    return records

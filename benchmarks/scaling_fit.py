"""Scaling-law fit speed and prediction-interval coverage, on synthetic data that look like real grids.

``time``: the default Approach-3 fit (4,500-start grid, projected; polish included) on 250 points with
2% log-normal noise and a few broken runs (+30% loss), then the bootstrap of the Chinchilla fit alone.
Target: the fit in under 5 s on a 2-core CPU.

``coverage``: fit the runs at the smaller budgets of simulated grids, predict runs at the same and at
3x-30x larger budgets, and count how many fall inside the 90% and 95% prediction intervals (and inside
the 95% band of the mean law, for contrast).

    python benchmarks/scaling_fit.py time
    python benchmarks/scaling_fit.py coverage --sims 50
    python benchmarks/scaling_fit.py time --points 60 --repeats 1     # a quick check
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from transformer_grow.scaling.bootstrap import interval, resample_counts
from transformer_grow.scaling.chinchilla import ChinchillaConfig, fit_chinchilla
from transformer_grow.scaling.predict import prediction_interval, safe_log
from transformer_grow.scaling.synthetic import synthetic_records


def _arrays(records):
    return tuple(np.array([r[k] for r in records]) for k in ("n_params_nonembedding", "tokens", "final_val_loss"))


def realistic(points: int, seed: int):
    budgets = tuple(np.geomspace(1e17, 1e21, 10))
    records = synthetic_records(budgets=budgets, sizes_per_budget=max(1, points // 10), noise=0.02, seed=seed)
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(records), max(1, len(records) // 40), replace=False):
        records[i]["final_val_loss"] *= 1.3
    return _arrays(records)


def bench_time(args) -> None:
    n, d, loss = realistic(args.points, 0)
    config = ChinchillaConfig(objective=args.objective, project=not args.no_projection)
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        fit = fit_chinchilla(n, d, loss, config)
        seconds = time.perf_counter() - t0
        print(f"fit {repeat}: {n.size} points, {fit.search.grid_starts}-start grid -> {fit.search.starts_run} L-BFGS "
              f"runs, {seconds:.2f} s; alpha={fit.params.alpha:.3f} beta={fit.params.beta:.3f}")
    if args.bootstrap:
        t0 = time.perf_counter()
        fit.refit(resample_counts(n.size, args.bootstrap, np.random.default_rng(0)))
        print(f"bootstrap: {args.bootstrap} refits in {time.perf_counter() - t0:.2f} s")


def bench_coverage(args) -> None:
    hits = {0.9: [], 0.95: []}
    mean_hits = []
    for sim in range(args.sims):
        n, d, loss = _arrays(synthetic_records(budgets=(1e18, 3e18, 1e19, 3e19), sizes_per_budget=6, noise=0.02,
                                               seed=sim))
        fit = fit_chinchilla(n, d, loss, ChinchillaConfig.reduced())
        samples = fit.refit(resample_counts(n.size, args.bootstrap or 100, np.random.default_rng(sim)))
        new_n, new_d, new_loss = _arrays(synthetic_records(budgets=(1e19, 1e20, 1e21), sizes_per_budget=4,
                                                           noise=0.02, seed=10_000 + sim))
        mean = samples.column().loss(new_n[None, :], new_d[None, :])
        for level in hits:
            lo, hi = prediction_interval(safe_log(mean), fit.log_residuals, fit.n_free, level, seed=sim)
            hits[level] += list((lo <= new_loss) & (new_loss <= hi))
        bands = [interval(mean[:, j], 0.95) for j in range(new_n.size)]
        mean_hits += [b is not None and b[0] <= y <= b[1] for b, y in zip(bands, new_loss)]
    for level, values in hits.items():
        rate = float(np.mean(values))
        print(f"{level:.0%} prediction interval: {rate:.1%} of {len(values)} new runs "
              f"(binomial s.e. {np.sqrt(level * (1 - level) / len(values)):.1%})")
    print(f"95% band of the mean law (no residual noise): {np.mean(mean_hits):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("time", "coverage"))
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits (0: skip)")
    parser.add_argument("--objective", default="huber", choices=("huber", "huber-mle", "mse", "mae"))
    parser.add_argument("--no-projection", action="store_true", help="run all 4,500 starts (the old search)")
    parser.add_argument("--sims", type=int, default=50, help="coverage: simulated grids")
    args = parser.parse_args()
    bench_time(args) if args.what == "time" else bench_coverage(args)


if __name__ == "__main__":
    main()

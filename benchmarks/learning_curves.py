"""Learning-curve extrapolation: the schedule-aware law vs the plain power law, on curves from our trainer.

Trains micro models (the ``micro`` preset on bytes of a few standard-library modules) with cosine,
warmup-stable-decay and constant schedules (several seeds and peak LRs), records the validation loss
every ``--eval-every`` steps, then predicts each run's final loss from its first 25%, 50% and 75% with

- ``power``: ``L(t) = E + A t^-alpha`` in steps (:func:`fit_learning_curve` without learning rates);
- ``power_after_warmup``: the same, fitted to the points after the LR warmup only;
- ``lr_area``: the LR-annealing law (Tissue et al. 2024) with the run's schedule;
- ``multi_power``: the multi-power law (Luo et al. 2025) with the run's schedule, from the curve alone;
- ``multi_power+prior(...)``: the same with the annealing bonus pooled over *other* completed runs
  (:func:`fit_anneal_prior`), never the run itself, in three protocols: ``same`` (other seeds and peak
  LRs of the same schedule, as in a grid), ``other`` (runs of the other decaying schedules only: WSD
  learns from cosine and cosine from WSD, as Luo et al. fit on some schedules and predict others),
  ``all`` (every other decaying run). The constant schedule never decays, so the prior plays no part there.

Reports per schedule, form and fraction: median absolute and median signed relative error of the final
loss, the worst error, the share of runs where the form beats the plain power law and the power law
after warmup (smaller |error|), and how often the 90% prediction interval held the final loss (with and
without the backtest widening, :meth:`CurveFit.drift_rate`). Curves are cached in ``--cache`` so the fits
can be rerun without training.

    python benchmarks/learning_curves.py --cache curves.json   # 48 runs of 1000 steps, ~25 min on 2 cores
    python benchmarks/learning_curves.py --steps 120 --seeds 1 --lrs 3e-3   # a quick check
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import tempfile
from pathlib import Path

import numpy as np

SCHEDULES = ("cosine", "wsd", "constant")
FRACTIONS = (0.25, 0.5, 0.75)
PRIOR_PROTOCOLS = ("same", "other", "all")
FORMS = ("power", "power_after_warmup", "lr_area", "multi_power",
         *(f"multi_power+prior({protocol})" for protocol in PRIOR_PROTOCOLS))
CORPUS_MODULES = ("json.decoder", "json.encoder", "argparse", "textwrap", "string", "calendar")


def train_curves(steps: int, eval_every: int, seeds: list[int], lrs: list[float],
                 eval_windows: int = 128) -> list[dict]:
    import torch

    from transformer_grow.data import DataConfig, prepare_data
    from transformer_grow.model import preset
    from transformer_grow.train import TrainConfig, Trainer
    from transformer_grow.train.schedule import lr_at

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tgrow-curves-"))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(inspect.getsource(importlib.import_module(m)) for m in CORPUS_MODULES))
    data = prepare_data(DataConfig(corpus=str(corpus), tokenizer="bytes", cache_dir=str(root / "cache")),
                        progress=False)
    curves = []
    for schedule in SCHEDULES:
        for lr in lrs:
            for seed in seeds:
                config = TrainConfig(batch_size=8, max_steps=steps, lr=lr, warmup_steps=max(1, steps // 20),
                                     schedule=schedule, min_lr_ratio=0.1, decay_frac=0.2, eval_interval=eval_every,
                                     eval_windows=eval_windows, log_interval=eval_every, ckpt_interval=0, device="cpu",
                                     dtype="fp32", seed=seed)
                trainer = Trainer(preset("micro", vocab_size=256), config, data)
                trainer.fit()
                points = [(r["step"], r["val_loss"]) for r in trainer.history if r.get("val_loss") is not None]
                lrs_run = [lr_at(trainer.schedule, i) for i in range(trainer.total_steps)]
                curves.append({"schedule": schedule, "lr": lr, "seed": seed, "steps": [p[0] for p in points],
                               "val_loss": [p[1] for p in points], "lrs": lrs_run})
                print(f"trained {schedule} lr={lr:g} seed={seed}: final val loss {points[-1][1]:.4f}", flush=True)
    return curves


def _arrays(curve: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps, losses = np.array(curve["steps"], dtype=float), np.array(curve["val_loss"])
    keep = steps >= 1
    return steps[keep], losses[keep], np.array(curve["lrs"])


def priors_for(curves: list[dict], index: int):
    """The pooled annealing priors for run ``index``, from other runs only (module docstring)."""
    from transformer_grow.scaling.anneal_prior import fit_anneal_prior, has_decay

    schedule = curves[index]["schedule"]
    decaying = [i for i, c in enumerate(curves) if i != index and has_decay(c["lrs"])]
    chosen = {"same": [i for i in decaying if curves[i]["schedule"] == schedule],
              "other": [i for i in decaying if curves[i]["schedule"] != schedule], "all": decaying}
    return {protocol: fit_anneal_prior([_arrays(curves[i]) for i in members]) if members else None
            for protocol, members in chosen.items()}


def evaluate(curves: list[dict], level: float = 0.9, n_bootstrap: int = 50) -> dict:
    from transformer_grow.scaling.curve import fit_learning_curve

    rows: dict[tuple[str, str, float], list[dict]] = {}
    for index, curve in enumerate(curves):
        steps, losses, lrs = _arrays(curve)
        final_step, final = steps[-1], losses[-1]
        priors = priors_for(curves, index)
        warmup_end = int(np.argmax(lrs >= lrs.max())) + 1
        for fraction in FRACTIONS:
            seen = steps <= fraction * final_step
            if seen.sum() < 5:
                continue
            # A reference the schedule-aware law must also face: the power law fitted after the warmup only.
            after = seen & (steps > warmup_end)
            fits = {"power": (seen, {}), "power_after_warmup": (after, {}),
                    "lr_area": (seen, {"lrs": lrs, "form": "lr_area"}),
                    "multi_power": (seen, {"lrs": lrs, "form": "multi_power"})}
            for protocol, prior in priors.items():
                if prior is not None:
                    fits[f"multi_power+prior({protocol})"] = (seen, {"lrs": lrs, "form": "multi_power", "prior": prior})
            errors = {}
            for form, (points, kwargs) in fits.items():
                if points.sum() < 5:
                    continue
                fit = fit_learning_curve(steps[points], losses[points], n_bootstrap=n_bootstrap, **kwargs)
                lo, hi = fit.predict_interval(final_step, level)
                raw_lo, raw_hi = fit.predict_interval(final_step, level, calibrated=False)
                errors[form] = (fit.predict(final_step) - final) / final
                rows.setdefault((curve["schedule"], form, fraction), []).append(
                    {"error": errors[form], "held": lo <= final <= hi, "held_raw": raw_lo <= final <= raw_hi,
                     "errors": errors})
    report = {}
    for (schedule, form, fraction), values in sorted(rows.items()):
        errors = np.array([v["error"] for v in values])
        wins = {ref: float(np.mean([abs(v["error"]) < abs(v["errors"][ref]) for v in values if ref in v["errors"]]))
                for ref in ("power", "power_after_warmup")}
        report[f"{schedule} {form} {fraction:.0%}"] = {
            "runs": len(values),
            "median_abs_error": float(np.median(np.abs(errors))),
            "median_signed_error": float(np.median(errors)),
            "worst_error": float(errors[np.argmax(np.abs(errors))]),
            "beats_power": wins["power"],
            "beats_power_after_warmup": wins["power_after_warmup"],
            f"pi{level:.0%}_coverage": float(np.mean([v["held"] for v in values])),
            f"pi{level:.0%}_coverage_uncalibrated": float(np.mean([v["held_raw"] for v in values])),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between validation points (default 20)")
    parser.add_argument("--eval-windows", type=int, default=128, help="validation windows per evaluation (128)")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per schedule and LR (default 8)")
    parser.add_argument("--lrs", default="3e-3,1e-2", help="peak learning rates (default 3e-3,1e-2)")
    parser.add_argument("--bootstrap", type=int, default=50, help="bootstrap refits per fit (default 50)")
    parser.add_argument("--cache", default=None, help="JSON file of curves: read if it exists, else written")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        curves = json.loads(cache.read_text())
        print(f"read {len(curves)} curves from {cache}")
    else:
        curves = train_curves(args.steps, args.eval_every, list(range(args.seeds)),
                              [float(v) for v in args.lrs.split(",")], args.eval_windows)
        if cache is not None:
            cache.write_text(json.dumps(curves))
    seen = ", ".join(f"{f:.0%}" for f in FRACTIONS)
    print(f"settings: {len(curves)} runs; final loss predicted from the first {seen}; "
          f"{args.bootstrap} bootstrap refits per fit; 90% prediction intervals")
    report = evaluate(curves, n_bootstrap=args.bootstrap)
    print(f"{'schedule form seen':44s} {'runs':>4s} {'median |err|':>12s} {'median err':>10s} {'worst':>8s} "
          f"{'beats power':>11s} {'beats p.a.w.':>12s} {'PI90 cover':>10s} {'uncalibrated':>12s}")
    for name, r in report.items():
        print(f"{name:44s} {r['runs']:4d} {r['median_abs_error']:12.2%} {r['median_signed_error']:10.2%} "
              f"{r['worst_error']:8.2%} {r['beats_power']:11.0%} {r['beats_power_after_warmup']:12.0%} "
              f"{r['pi90%_coverage']:10.0%} {r['pi90%_coverage_uncalibrated']:12.0%}")
    for form in FORMS:
        for schedule in (*SCHEDULES, None):
            cells = [r for name, r in report.items()
                     if f" {form} " in name and (schedule is None or name.startswith(f"{schedule} "))]
            if cells:
                print(f"{form} on {schedule or 'all schedules'}: PI90 coverage "
                      f"{np.mean([r['pi90%_coverage'] for r in cells]):.0%} "
                      f"(uncalibrated {np.mean([r['pi90%_coverage_uncalibrated'] for r in cells]):.0%})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

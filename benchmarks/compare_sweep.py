"""What moves the growth speedup? A sweep of growth-plan settings, over seeds, against the baseline
and the small-only controls.

    PYTHONPATH=src python benchmarks/compare_sweep.py --preset quick --seeds 0,1,2 --out runs/sweep
    PYTHONPATH=src python benchmarks/compare_sweep.py --preset quick --variants g2_f50,g2_f50_fresh --seeds 0,1

Per seed, trains the ``scratch`` baseline of the compare preset once, each variant (a built-in plan
with changed options: growth timing, growth factor, operator, optimizer state carried or fresh, LR
re-warmup, depth vs width vs compound growth, and ``preserve`` when the plan options have it) and
the small-only control of each distinct first-stage model (that model trained alone on the
baseline's FLOPs, :func:`~transformer_grow.plans.builders.small_only_plan`), all on the same data
order and budget. It prints the settings and, per variant, the mean and 90% Student t interval over
seeds of the FLOPs / wall-clock / tokens speedup to reach the baseline's final validation loss, and
of the loss difference at equal FLOPs against the baseline and against the variant's control
(negative: the variant is better). Every run is cached in ``OUT/seed{S}/<name>`` (rerunning only
trains what is missing). FLOPs and tokens ratios do not depend on the machine's load; wall-clock
ratios do (run alone for those).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from transformer_grow.compare.report import loss_at, speedup
from transformer_grow.compare.run import compare_preset
from transformer_grow.compare.stats import INTERVAL_METHOD, NO_INTERVAL, fmt, summarize
from transformer_grow.data import prepare_data
from transformer_grow.io import atomic_write_json
from transformer_grow.plans.builders import build_plan, small_only_model, small_only_plan
from transformer_grow.run.manager import GrowthManager

# name -> (plan, PlanOptions changes relative to the preset's options)
VARIANTS: dict[str, tuple[str, dict]] = {
    # growth timing (fraction of the budget's tokens before growing)
    "g2_f25": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.25}),
    "g2_f50": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5}),
    "g2_f75": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.75}),
    "g2_formula": ("g_stack", {"growth_factor": 2, "growth_fraction": None, "max_fraction": 0.5}),
    # growth factor
    "g4_f50": ("g_stack", {"growth_factor": 4, "growth_fraction": 0.5}),
    # operator
    "g2_f50_interleave": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "method": "interleave"}),
    "g2_f50_insert_zero": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "method": "insert_zero"}),
    # optimizer state and learning rate after growth
    "g2_f50_fresh": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "optimizer": "fresh"}),
    "g2_f50_rewarm": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "rewarmup_steps": 30}),
    "g2_f50_restart": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "schedule": "restart",
                                   "rewarmup_steps": 30}),
    # depth vs width vs compound
    "width_f50": ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.5}),
    "depth_width_f50": ("compound", {"compound_stages": [{"depth": 2, "width": 2}], "growth_fraction": 0.5}),
    "compound_f50": ("compound", {"growth_fraction": 0.5}),
    "progressive_f50": ("progressive", {"growth_fraction": 0.5}),
    "adaptive": ("adaptive", {"growth_factor": 2}),
    # function- vs dynamics-preserving growth: only width cloning and FFN splitting store weights as W/k,
    # so the comparison is on width growth (depth stacking copies whole blocks: nothing to rescale)
    "width_f50_dynamics": ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.5,
                                         "preserve": "dynamics"}),
    "width_f50_dynamics_w100": ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.5,
                                              "preserve": "dynamics", "dynamics_relax": "window:100"}),
    "width_f50_dynamics_now": ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.5,
                                             "preserve": "dynamics", "dynamics_relax": "immediate"}),
}


def _seeds(text: str) -> list[int]:
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct non-negative integers, e.g. 0,1,2")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="compare preset supplying target, budget and training")
    parser.add_argument("--out", default="runs/sweep", help="cache directory of the runs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="seeds of every run (default 0,1,2)")
    parser.add_argument("--budget-tokens", type=int, default=None, help="override the preset's budget")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
    parser.add_argument("--n-layer", type=int, default=None, help="override the target's depth (a smoke test)")
    parser.add_argument("--d-model", type=int, default=None, help="override the target's width (a smoke test)")
    parser.add_argument("--corpus", default=None, help="override the preset's corpus (text file or directory)")
    parser.add_argument("--tokenizer", default=None, choices=("bpe", "bytes"), help="override the preset's tokenizer")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = compare_preset(args.preset)
    if args.budget_tokens:
        config = dataclasses.replace(config, budget_tokens=args.budget_tokens)
    if args.lr:
        config = dataclasses.replace(config, train=config.train.replace(lr=args.lr))
    sizes = {k: v for k, v in (("n_layer", args.n_layer), ("d_model", args.d_model)) if v}
    if sizes:
        config = dataclasses.replace(config, target=config.target.replace(**sizes))
    data_changes = {k: v for k, v in (("corpus", args.corpus), ("tokenizer", args.tokenizer)) if v}
    if data_changes:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data_changes))
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    data = prepare_data(config.data)
    target = config.target.replace(vocab_size=int(data.vocab_size))
    out = Path(args.out)
    plans = {name: build_plan(VARIANTS[name][0], target, config.budget_tokens,
                              dataclasses.replace(config.plan_options, **VARIANTS[name][1])) for name in names}
    controls = {name: small_only_plan(plan, config.budget_tokens) for name, plan in plans.items()
                if small_only_model(plan) != plan.target}
    print(f"settings: preset {config.name}, target {target.n_layer}x{target.d_model} seq {target.seq_len}, "
          f"budget {config.budget_tokens:,} tokens ({config.plan_options.budget_mode} held equal), batch "
          f"{config.train.batch_size}, lr {config.train.lr}, schedule {config.train.schedule}, warmup "
          f"{config.train.warmup_steps}, n_evals {config.n_evals}, eval windows {config.eval_windows}, seeds "
          f"{args.seeds}, threads {torch.get_num_threads()}, corpus {config.data.corpus} ({config.data.tokenizer})")
    print(f"preset plan options: {json.dumps(dataclasses.asdict(config.plan_options), default=str)}")
    print(f"intervals: {INTERVAL_METHOD if len(args.seeds) > 1 else NO_INTERVAL}")

    def run(seed: int, name: str, plan):
        manager = GrowthManager(target, plan, train_config=config.train.replace(seed=seed), n_evals=config.n_evals,
                                eval_windows=config.eval_windows, out_dir=out / f"seed{seed}" / name.replace(":", "-"),
                                name=f"{name} seed{seed}", log=None)
        started = time.perf_counter()
        record = manager.run(data).record
        print(f"  [{name} seed{seed}] {time.perf_counter() - started:.0f}s (cached runs ~0s)", file=sys.stderr,
              flush=True)
        return record

    per_seed: dict[str, list[dict]] = {name: [] for name in [*names, *sorted({c.name for c in controls.values()})]}
    for seed in args.seeds:
        base = run(seed, "scratch", build_plan("scratch", target, config.budget_tokens, config.plan_options))
        control_records = {c.name: run(seed, c.name, c) for c in {c.name: c for c in controls.values()}.values()}
        for name in per_seed:
            record = control_records[name] if name in control_records else run(seed, name, plans[name])
            equal = min(base.curve[-1].flops, record.curve[-1].flops)
            mine = loss_at(record.curve, equal)
            control = controls.get(name)
            other = None if control is None else control_records[control.name]
            ctrl_eq = None if other is None else loss_at(other.curve, min(equal, other.curve[-1].flops))
            per_seed[name].append({"seed": seed, **speedup(base.curve, record.curve), "final_val_loss":
                                   record.final_val_loss, "val_loss_at_equal_flops": mine,
                                   "vs_baseline": None if mine is None else mine - loss_at(base.curve, equal),
                                   "vs_control": None if mine is None or ctrl_eq is None else mine - ctrl_eq})

    print(f"{'variant':<26} {'FLOPs x':<22} {'wall x':<22} {'tokens x':<22} {'dL vs baseline':<26} "
          f"{'dL vs control':<26} control / options")
    rows = []
    for name, seeds in per_seed.items():
        stats = {key: summarize([s[key] for s in seeds]) for key in ("flops", "wall_clock", "tokens", "vs_baseline",
                                                                     "vs_control", "final_val_loss")}
        extra = (f"{controls[name].name if name in controls else '-'} / {json.dumps(VARIANTS[name][1])}"
                 if name in VARIANTS else "(small-only control)")
        print(f"{name:<26} {fmt(stats['flops'], suffix='x'):<22} {fmt(stats['wall_clock'], suffix='x'):<22} "
              f"{fmt(stats['tokens'], suffix='x'):<22} {fmt(stats['vs_baseline'], '+.4f'):<26} "
              f"{fmt(stats['vs_control'], '+.4f'):<26} {extra}", flush=True)
        rows.append({"variant": name, "plan": VARIANTS.get(name, ("control", {}))[0],
                     "options": VARIANTS.get(name, (None, {}))[1], "per_seed": seeds, "summary": stats})
    atomic_write_json(out / "sweep.json", {"seeds": args.seeds, "interval": INTERVAL_METHOD, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What moves the growth speedup? A sweep of growth-plan settings against one baseline.

    PYTHONPATH=src python benchmarks/compare_sweep.py --preset quick --out runs/sweep
    PYTHONPATH=src python benchmarks/compare_sweep.py --preset quick --variants g2_f50,g2_f50_fresh

Trains the ``scratch`` baseline of the compare preset once, then every variant (a built-in plan
with changed options) on the same data order and budget, and prints the settings and, per
variant, the FLOPs / wall-clock / tokens speedup to reach the baseline's final validation loss
(``None``: never reached) and the loss at equal FLOPs. Every run is cached in ``OUT/<name>``
(rerunning the script only trains what is missing). FLOPs and tokens ratios do not depend on the
machine's load; wall-clock ratios do (run alone for those).
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
from transformer_grow.data import prepare_data
from transformer_grow.growth.builders import PlanOptions
from transformer_grow.growth.manager import GrowthManager
from transformer_grow.io import atomic_write_json

# name -> (plan, PlanOptions changes relative to the preset's options)
VARIANTS: dict[str, tuple[str, dict]] = {
    "g2_f50": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5}),
    "g2_f25": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.25}),
    "g2_f75": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.75}),
    "g2_f90": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.9}),
    "g2_f75_fresh": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.75, "optimizer": "fresh"}),
    "g2_f75_rewarm": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.75, "rewarmup_steps": 30}),
    "g2_formula": ("g_stack", {"growth_factor": 2, "growth_fraction": None, "max_fraction": 0.5}),
    "g4_f50": ("g_stack", {"growth_factor": 4, "growth_fraction": 0.5}),
    "g2_f50_fresh": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "optimizer": "fresh"}),
    "g2_f50_rewarm": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "rewarmup_steps": 30}),
    "g2_f50_restart": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "schedule": "restart",
                                   "rewarmup_steps": 30}),
    "g2_f50_interleave": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "method": "interleave"}),
    "g2_f50_insert_zero": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "method": "insert_zero"}),
    "g2_f50_tokens": ("g_stack", {"growth_factor": 2, "growth_fraction": 0.5, "budget_mode": "tokens"}),
    "compound_f25": ("compound", {"growth_fraction": 0.25}),
    "compound_f50": ("compound", {"growth_fraction": 0.5}),
    "compound_1stage_f50": ("compound", {"compound_stages": [{"depth": 2, "width": 2}], "growth_fraction": 0.5}),
    "width_f50": ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.5}),
    "progressive_f50": ("progressive", {"growth_fraction": 0.5}),
    "adaptive": ("adaptive", {"growth_factor": 2}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="compare preset supplying target, budget and training")
    parser.add_argument("--out", default="runs/sweep", help="cache directory of the runs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--budget-tokens", type=int, default=None, help="override the preset's budget")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = compare_preset(args.preset)
    if args.budget_tokens:
        config = dataclasses.replace(config, budget_tokens=args.budget_tokens)
    if args.lr:
        config = dataclasses.replace(config, train=config.train.replace(lr=args.lr))
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    data = prepare_data(config.data)
    target = config.target.replace(vocab_size=int(data.vocab_size))
    out = Path(args.out)
    print(f"settings: preset {config.name}, target {target.n_layer}x{target.d_model} seq {target.seq_len}, "
          f"budget {config.budget_tokens:,} tokens, batch {config.train.batch_size}, lr {config.train.lr}, "
          f"schedule {config.train.schedule}, warmup {config.train.warmup_steps}, threads {torch.get_num_threads()}")

    def run(name: str, plan: str, options: PlanOptions):
        manager = GrowthManager(target, plan, budget_tokens=config.budget_tokens, train_config=config.train,
                                plan_options=options, n_evals=config.n_evals, eval_windows=config.eval_windows,
                                out_dir=out / name, name=name, log=None)
        started = time.perf_counter()
        record = manager.run(data).record
        print(f"  [{name}] {time.perf_counter() - started:.0f}s (cached runs ~0s)", file=sys.stderr, flush=True)
        return record

    base = run("scratch", "scratch", config.plan_options)
    print(f"baseline: final val loss {base.final_val_loss:.4f}, {base.total_flops:.4g} FLOPs, "
          f"{base.wall_seconds:.1f}s")
    print(f"{'variant':<22} {'plan':<12} {'final':>7} {'@eqFLOPs':>8} {'FLOPs x':>8} {'wall x':>7} {'tokens x':>8}  "
          "options")
    rows = []
    for name in names:
        plan, changes = VARIANTS[name]
        options = dataclasses.replace(config.plan_options, **changes)
        record = run(name, plan, options)
        s = speedup(base.curve, record.curve)
        equal = loss_at(record.curve, min(base.curve[-1].flops, record.curve[-1].flops))

        def fmt(v: float | None) -> str:
            return "None" if v is None else f"{v:.2f}"

        print(f"{name:<22} {plan:<12} {record.final_val_loss:>7.4f} {fmt(equal):>8} {fmt(s['flops']):>8} "
              f"{fmt(s['wall_clock']):>7} {fmt(s['tokens']):>8}  {json.dumps(changes)}", flush=True)
        rows.append({"variant": name, "plan": plan, "options": changes, "final_val_loss": record.final_val_loss,
                     "val_loss_at_equal_flops": equal, **s})
    atomic_write_json(out / "sweep.json", {"baseline": base.final_val_loss, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tgrow compare`: the from-scratch baseline and growth plans side by side, with speedups.

    tgrow compare --preset quick                   # <= 10 minutes on a 2-core CPU
    tgrow compare --preset dev --out runs/dev      # about an hour
    tgrow compare --preset quick --plans g_stack,compound --optimizer-state fresh --out runs/q2

Writes ``OUT/report.json`` (runs, speedups: FLOPs, wall-clock and tokens to reach the baseline's
final validation loss; losses at equal FLOPs), ``OUT/report.md``, ``OUT/loss_vs_flops.png`` and
``OUT/loss_vs_wall.png``, and prints the speedup table. Killed midway, the same command resumes in ``OUT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

from transformer_grow.cli.common import (
    DATA_FLAG_FIELDS,
    MODEL_FLAG_FIELDS,
    add_data_options,
    add_model_options,
    check_device,
    flag_values,
    parse_count,
)
from transformer_grow.cli.plan import add_plan_options, plan_options_from_args
from transformer_grow.compare.run import PRESETS, compare_preset, run_compare
from transformer_grow.data import DataConfig
from transformer_grow.errors import require
from transformer_grow.growth.timing import GrowthTimingWarning
from transformer_grow.model import PRESETS as MODEL_PRESETS
from transformer_grow.model import ModelConfig

# Training flags a comparison accepts (budget and intervals come from the comparison itself).
TRAIN_FLAGS = [
    ("--batch-size", "batch_size", int, "sequences of the target's seq_len per step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps"),
    ("--schedule", "schedule", str, "LR schedule: cosine, wsd or constant"),
    ("--min-lr-ratio", "min_lr_ratio", float, "final LR as a fraction of the peak"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--seed", "seed", int, "seed of initialisation and data order (the same for every run)"),
    ("--device", "device", str, "auto, cpu, cuda or mps"),
    ("--dtype", "dtype", str, "auto, fp32 or bf16"),
]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="baseline vs growth plans on one budget: speedups, plots, report",
        description="Train the target from scratch (the baseline) and each growth plan on the same data order "
                    "and budget, evaluate all on the same fixed validation windows at fixed FLOP intervals, and "
                    "report the FLOPs, wall-clock and tokens speedup to reach the baseline's final validation "
                    "loss. Resumable: rerun the same command to continue.")
    parser.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                        help="comparison preset: quick (<= 10 min on a 2-core CPU), dev (~1 hour), full (GPU)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (report.json, report.md, loss_vs_flops.png, loss_vs_wall.png, "
                             "runs/); default runs/compare-PRESET")
    parser.add_argument("--plans", default=None,
                        help="comma-separated growth plans to compare with the baseline (g_stack, compound, "
                             "progressive, adaptive); default: the preset's")
    parser.add_argument("--target", default=None, choices=tuple(MODEL_PRESETS),
                        help="model preset of the target (then refined by the model flags); default: the preset's")
    parser.add_argument("--budget-tokens", type=parse_count, default=None,
                        help="the baseline's token budget, e.g. 2M; default: the preset's")
    parser.add_argument("--n-evals", type=int, default=None, help="validation points over the budget")
    parser.add_argument("--sequential", action="store_true",
                        help="run the plans one after another (default: they take turns every evaluation interval, "
                             "so changes in machine load hit every run alike and wall-clock ratios stay fair)")
    parser.add_argument("--eval-windows", type=int, default=None, help="number of fixed validation windows")
    group = parser.add_argument_group("training (every run)")
    for flag, name, kind, text in TRAIN_FLAGS:
        group.add_argument(flag, dest=name, type=kind, default=None, help=text)
    add_plan_options(parser, with_plan=False)
    add_model_options(parser)
    add_data_options(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The preset's :class:`CompareConfig` with every flag given applied (validated)."""
    config = compare_preset(args.preset)
    target = config.target
    if args.target is not None:
        target = ModelConfig.from_dict({**target.to_dict(), **MODEL_PRESETS[args.target], "head_dim": None,
                                        "n_kv_head": None, "d_ff": None})
    model_flags = flag_values(args, MODEL_FLAG_FIELDS)
    if model_flags:
        derived = {k: None for k in ("head_dim", "n_kv_head", "d_ff") if k not in model_flags}
        target = ModelConfig.from_dict({**target.to_dict(), **derived, **model_flags})
    train_changes = {name: getattr(args, name) for _, name, _, _ in TRAIN_FLAGS if getattr(args, name) is not None}
    train = config.train.replace(**train_changes)
    train.validate()
    check_device(train)
    data = DataConfig(**{**dataclasses.asdict(config.data), **flag_values(args, DATA_FLAG_FIELDS)})
    data.validate()
    plans = config.plans if args.plans is None else [p.strip() for p in args.plans.split(",") if p.strip()]
    for name in ("n_evals", "eval_windows"):
        value = getattr(args, name)
        require(value is None or value >= (2 if name == "n_evals" else 1), f"--{name.replace('_', '-')}={value} "
                f"must be >= {2 if name == 'n_evals' else 1}")
    config = dataclasses.replace(
        config, target=target, train=train, data=data, plans=plans,
        budget_tokens=args.budget_tokens or config.budget_tokens,
        plan_options=plan_options_from_args(args, config.plan_options),
        n_evals=args.n_evals or config.n_evals, eval_windows=args.eval_windows or config.eval_windows)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:  # e.g. G_stack's timing clamped: one clean line
        warnings.simplefilter("always", GrowthTimingWarning)
        config = config_from_args(args)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    out = args.out or f"runs/compare-{config.name}"
    print(f"tgrow compare: preset {config.name}, plans scratch + {', '.join(config.plans)}, output {out}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)  # already shown
        report = run_compare(config, out, interleave=not args.sequential)
    print(f"report: {out}/report.json, {out}/report.md, {out}/loss_vs_flops.png, {out}/loss_vs_wall.png")
    return 0 if report is not None else 1

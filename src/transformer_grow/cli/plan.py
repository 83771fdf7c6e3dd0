"""`tgrow plan`: show a growth plan's stages, parameters, tokens and FLOPs before training it.

    tgrow plan --plan g_stack --preset tiny --budget-tokens 20M --batch-size 16
    tgrow plan --plan compound --preset small --budget-tokens 200M --stage-fractions 0.1,0.1

For ``g_stack`` the G_stack timing computation is printed (and its clamping, if any).

This module also provides the plan options shared with ``tgrow compare`` and ``tgrow train
--plan`` (:func:`add_plan_options`, :func:`plan_options_from_args`) and :func:`run_plan_from_args`,
which trains a plan with the settings of ``tgrow train``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from transformer_grow.cli.common import (
    add_config_options,
    add_model_options,
    load_config_file,
    model_settings,
    parse_count,
)
from transformer_grow.errors import require
from transformer_grow.growth.accounting import FLOPS_FORMULA, account_plan
from transformer_grow.growth.builders import PLAN_NAMES, PlanOptions, build_plan
from transformer_grow.growth.plan import BUDGET_MODES, OPTIMIZER_POLICIES, SCHEDULE_POLICIES
from transformer_grow.growth.timing import GrowthTimingWarning
from transformer_grow.model import ModelConfig


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        message = f"{text!r} is not a comma-separated list of fractions (e.g. 0.1,0.2)"
        raise argparse.ArgumentTypeError(message) from None


def add_plan_options(parser: argparse.ArgumentParser, with_plan: bool = True) -> None:
    """The growth-plan flags (all default to ``None``: "not given", the plan's defaults apply)."""
    group = parser.add_argument_group("growth plan")
    if with_plan:
        group.add_argument("--plan", default=None, choices=PLAN_NAMES,
                           help="growth plan: scratch (baseline), g_stack, compound, progressive or adaptive")
    group.add_argument("--budget-mode", default=None, choices=BUDGET_MODES,
                       help="what every plan holds equal: flops (default; growth runs get more tokens) or tokens")
    group.add_argument("--growth-factor", type=int, default=None,
                       help="g: the small model of g_stack/adaptive has n_layer/g layers (default 2)")
    group.add_argument("--growth-fraction", type=float, default=None,
                       help="g_stack: grow after this fraction of the budget's tokens instead of G_stack's formula; "
                            "compound/progressive: total fraction of the smaller stages")
    group.add_argument("--max-growth-fraction", type=float, default=None,
                       help="clamp G_stack's formula to this fraction of the budget (default 0.5)")
    group.add_argument("--growth-method", default=None,
                       help="depth operator: stack (default), repeat, interleave, insert_zero, insert_random")
    group.add_argument("--width-method", default=None, help="width operator (compound): clone (default), net2net, "
                                                            "zero_pad, random_pad")
    group.add_argument("--optimizer-state", default=None, choices=OPTIMIZER_POLICIES,
                       help="AdamW state after growth: carry (mapped through the growth, default) or fresh")
    group.add_argument("--rewarmup-steps", type=int, default=None, help="LR re-warmup steps after growth (default 0)")
    group.add_argument("--schedule-policy", default=None, choices=SCHEDULE_POLICIES,
                       help="after growth the global LR schedule continues (default) or restarts")
    group.add_argument("--stage-fractions", type=_fractions, default=None,
                       help="compound/progressive: token fraction of each stage before the last, e.g. 0.1,0.15")
    group.add_argument("--progressive-steps", type=int, default=None,
                       help="progressive: number of depth doublings (default 2: e.g. 2 -> 4 -> 8 layers)")


_OPTION_FIELDS = {"budget_mode": "budget_mode", "growth_factor": "growth_factor", "growth_fraction": "growth_fraction",
                  "max_growth_fraction": "max_fraction", "growth_method": "method", "width_method": "width_method",
                  "optimizer_state": "optimizer", "rewarmup_steps": "rewarmup_steps",
                  "schedule_policy": "schedule", "stage_fractions": "stage_fractions",
                  "progressive_steps": "progressive_steps"}


def plan_options_from_args(args: argparse.Namespace, base: PlanOptions | None = None) -> PlanOptions:
    """``base`` (default :class:`PlanOptions`) with the plan flags given on the command line applied."""
    import dataclasses

    changes = {field: getattr(args, flag) for flag, field in _OPTION_FIELDS.items()
               if getattr(args, flag, None) is not None}
    return dataclasses.replace(base or PlanOptions(), **changes)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan", help="print a growth plan: stages, parameters, tokens, FLOPs (and G_stack's timing)",
        description="Build a growth plan for a target model and budget and print every stage's model, "
                    "parameters, steps, tokens and FLOPs. Nothing is trained.")
    parser.add_argument("--budget-tokens", type=parse_count, required=True,
                        help="the baseline's token budget (the target trained from scratch), e.g. 20M")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="sequences of the target's seq_len per optimizer step (default 16)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of the models (default 8192)")
    add_plan_options(parser)
    add_config_options(parser)
    add_model_options(parser)
    parser.set_defaults(func=run)
    return parser


def target_from_args(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """The target model from ``--preset``/``--config``/model flags, with ``vocab_size``."""
    file = load_config_file(args.config) if getattr(args, "config", None) else {"preset": None, "model": {}}
    settings = model_settings(args, file)
    settings.setdefault("vocab_size", vocab_size)
    return ModelConfig.from_dict(settings)


def run(args: argparse.Namespace) -> int:
    require(args.batch_size >= 1, f"--batch-size={args.batch_size} must be >= 1")
    target = target_from_args(args, args.vocab_size)
    options = plan_options_from_args(args)
    name = args.plan or "g_stack"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = build_plan(name, target, args.budget_tokens, options)
    account = account_plan(plan, args.batch_size * target.seq_len)
    print(f"plan {plan.name}: target {target.n_layer} layers, d_model {target.d_model}, "
          f"budget {args.budget_tokens:,} tokens ({plan.budget_mode} held equal)")
    for note in plan.notes:
        print(note)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print()
    print("\n".join(account.table()))
    for i, stage in enumerate(plan.stages[1:], start=1):
        print(f"-> {stage.label(i)}: {stage.growth.describe()}")
    print(FLOPS_FORMULA)
    return 0


def run_plan_from_args(args: argparse.Namespace) -> int:
    """Train ``args.plan`` with the settings of ``tgrow train`` (the hook for ``tgrow train --plan``).

    The model flags/preset describe the target; the budget is ``--max-tokens`` (or ``--max-steps``
    times the batch); ``--out`` is the run directory (resumable: run the same command again).
    """
    from transformer_grow.cli.common import build_run_setup
    from transformer_grow.data import prepare_data
    from transformer_grow.growth.manager import GrowthManager
    from transformer_grow.train.distributed import main_rank_first

    require(getattr(args, "out", None) is not None, "--out DIR is required with --plan (the run directory)")
    setup = build_run_setup(args)
    train = setup.train
    seq_len = setup.model.seq_len
    budget = train.max_tokens if train.max_tokens is not None else train.max_steps * train.batch_size * seq_len
    options = plan_options_from_args(args)
    with warnings.catch_warnings(record=True) as caught:  # refuse a bad plan before preparing data
        warnings.simplefilter("always", GrowthTimingWarning)
        build_plan(args.plan, setup.model, budget, options)
    env = getattr(args, "dist_env", None)
    main = env is None or env.is_main
    for warning in caught if main else ():
        print(f"warning: {warning.message}", file=sys.stderr)
    with main_rank_first(env):  # under torchrun, rank 0 fills the token cache first
        data = prepare_data(setup.data, progress=not getattr(args, "no_progress", False) and main)
    target = setup.model_for(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)  # already shown
        manager = GrowthManager(target, args.plan, budget_tokens=budget, train_config=train, plan_options=options,
                                out_dir=args.out, data_config=setup.data, strategy=getattr(args, "strategy", None),
                                env=env)
    record = manager.run(data).record
    if main:
        print(f"done: plan {args.plan}, final val_loss {record.final_val_loss:.4f}, {record.total_tokens:,} tokens, "
              f"{record.total_flops:.4g} FLOPs, wall {record.wall_seconds:.1f}s; result in {args.out}/result.json")
    return 0

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
import contextlib
import dataclasses
import sys
import warnings

from transformer_grow.cli.common import MODEL_FLAGS, TRAIN_FLAGS, add_config_options, load_config_file, model_settings
from transformer_grow.cli.flags import ConfigFlags, parse_count
from transformer_grow.errors import require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.composite import CHOICES
from transformer_grow.plans.accounting import FLOPS_FORMULA, account_plan
from transformer_grow.plans.builders import PLAN_NAMES, PlanOptions, build_plan, check_plan_options_apply
from transformer_grow.plans.plan import BUDGET_MODES, OPTIMIZER_POLICIES, SCHEDULE_POLICIES
from transformer_grow.plans.timing import GrowthTimingWarning
from transformer_grow.train.config import MAX_COUNTS, TrainConfig

# PlanOptions' short field names would be ambiguous next to the training flags (--schedule,
# --optimizer...), so its flags say "growth".
PLAN_FLAGS = ConfigFlags(
    PlanOptions, "growth plan",
    rename={"max_fraction": "max-growth-fraction", "method": "growth-method", "optimizer": "optimizer-state",
            "schedule": "schedule-policy", "options": "growth-options"},
    choices={"budget_mode": BUDGET_MODES, "method": CHOICES["depth"], "width_method": CHOICES["width"],
             "optimizer": OPTIMIZER_POLICIES, "schedule": SCHEDULE_POLICIES})
# `tgrow plan` has no data flags: --vocab-size is the model's; of the training settings only the batch.
PLAN_MODEL_FLAGS = MODEL_FLAGS.variant(
    rename={"vocab_size": "vocab-size"},
    default_notes={k: v for k, v in MODEL_FLAGS.default_notes.items() if k != "vocab_size"})
PLAN_BATCH_FLAGS = TRAIN_FLAGS.variant(exclude=frozenset(f.name for f in dataclasses.fields(TrainConfig)
                                                         if f.name != "batch_size"))


def add_plan_options(parser: argparse.ArgumentParser, with_plan: bool = True,
                     flags: ConfigFlags = PLAN_FLAGS) -> None:
    """``--plan`` and one flag per :class:`PlanOptions` field (default ``None``: the plan's defaults apply)."""
    group = flags.add_to(parser)
    if with_plan:
        group.add_argument("--plan", default=None, choices=PLAN_NAMES,
                           help="growth plan: scratch (the baseline) or " + ", ".join(PLAN_NAMES[1:]))


def plan_options_from_args(args: argparse.Namespace, base: PlanOptions | None = None) -> PlanOptions:
    """``base`` (default :class:`PlanOptions`) with the plan flags given on the command line applied."""
    return dataclasses.replace(base or PlanOptions(), **PLAN_FLAGS.given(args))


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan", help="print a growth plan: stages, parameters, tokens, FLOPs (and G_stack's timing)",
        description="Build a growth plan for a target model and budget and print every stage's model, "
                    "parameters, steps, tokens and FLOPs. Nothing is trained.")
    parser.add_argument("--budget-tokens", type=parse_count, required=True,
                        help="the baseline's token budget (the target trained from scratch), e.g. 20M")
    PLAN_BATCH_FLAGS.add_to(parser)
    add_plan_options(parser)
    add_config_options(parser)
    PLAN_MODEL_FLAGS.add_to(parser)
    parser.set_defaults(func=run)
    return parser


def target_from_args(args: argparse.Namespace, file: dict) -> ModelConfig:
    """The target model from ``--preset``/``--config``/model flags (``--vocab-size`` included)."""
    settings = {**model_settings(args, file), **PLAN_MODEL_FLAGS.given(args)}
    return ModelConfig.from_dict(settings)


def run(args: argparse.Namespace) -> int:
    file = load_config_file(args.config) if getattr(args, "config", None) else {"preset": None, "model": {},
                                                                                 "train": {}}
    # the batch: flag, else the file's train section, else TrainConfig's default (one source)
    batch = {"batch_size": TrainConfig.batch_size, **file["train"], **PLAN_BATCH_FLAGS.given(args)}["batch_size"]
    require(isinstance(batch, int) and 1 <= batch <= MAX_COUNTS["batch_size"],
            f"batch_size={batch!r} is not allowed; it must be an integer from 1 to {MAX_COUNTS['batch_size']:,}")
    target = target_from_args(args, file)
    options = plan_options_from_args(args)
    name = args.plan or "g_stack"
    check_plan_options_apply([name], PLAN_FLAGS.given(args), PLAN_FLAGS.flag)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = build_plan(name, target, args.budget_tokens, options)
    account = account_plan(plan, batch * target.seq_len)
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


def run_plan_from_args(args: argparse.Namespace, resume: bool = False) -> int:
    """Train ``args.plan`` with the settings of ``tgrow train`` (the hook for ``tgrow train --plan``).

    The model flags/preset describe the target; the budget is ``--max-tokens`` (or ``--max-steps``
    times the batch); ``--out`` is the run directory (resumable: run the same command again).
    """
    from transformer_grow.cli.common import build_run_setup
    from transformer_grow.cli.train import diverged_message
    from transformer_grow.data import prepare_data
    from transformer_grow.io import lock_run_dir
    from transformer_grow.run.manager import GrowthManager
    from transformer_grow.train.distributed import main_rank_first
    from transformer_grow.train.interrupt import stop_on_signals
    from transformer_grow.train.memory import check_training_memory
    from transformer_grow.train.trainer import TrainingDiverged, TrainingInterrupted

    require(getattr(args, "out", None) is not None, "--out DIR is required with --plan (the run directory)")
    setup = build_run_setup(args)
    train = setup.train
    seq_len = setup.model.seq_len
    budget = train.max_tokens if train.max_tokens is not None else train.max_steps * train.batch_size * seq_len
    options = plan_options_from_args(args)
    check_plan_options_apply([args.plan], PLAN_FLAGS.given(args), PLAN_FLAGS.flag)
    with warnings.catch_warnings(record=True) as caught:  # refuse a bad plan before preparing data
        warnings.simplefilter("always", GrowthTimingWarning)
        build_plan(args.plan, setup.model, budget, options)
    check_training_memory(setup.model, train)
    env = getattr(args, "dist_env", None)
    main = env is None or env.is_main
    for warning in caught if main else ():
        print(f"warning: {warning.message}", file=sys.stderr)
    with lock_run_dir(args.out, "run directory") if main else contextlib.nullcontext():
        with main_rank_first(env):  # under torchrun, rank 0 fills the token cache first
            data = prepare_data(setup.data, progress=not getattr(args, "no_progress", False) and main)
        target = setup.model_for(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GrowthTimingWarning)  # already shown
            manager = GrowthManager(target, args.plan, budget_tokens=budget, train_config=train,
                                    plan_options=options, out_dir=args.out, data_config=setup.data,
                                    parallel=getattr(args, "parallel", None), env=env,
                                    allow_optimizer_changes=resume)
        try:
            with stop_on_signals():  # SIGTERM (schedulers) and SIGINT: finish the step, checkpoint, stop
                record = manager.run(data).record
        except TrainingDiverged as e:
            if main:  # the ring's newest healthy checkpoint, resumed with a lower learning rate
                argv = getattr(args, "argv", None) or ["train", "--plan", args.plan]
                print(f"tgrow train: error: {diverged_message(e, argv, plan=True)}", file=sys.stderr)
            return 1
        except TrainingInterrupted as e:
            if main:
                print(f"tgrow train: {e}; continue by running the same command again", file=sys.stderr)
            return e.exit_code
    if main:
        print(f"done: plan {args.plan}, final val_loss {record.final_val_loss:.4f}, {record.total_tokens:,} tokens, "
              f"{record.total_flops:.4g} FLOPs, wall {record.wall_seconds:.1f}s; result in {args.out}/result.json")
    return 0

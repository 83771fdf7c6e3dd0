"""`tgrow compare`: the from-scratch baseline and growth plans side by side, with speedups.

    tgrow compare --preset quick                   # <= 10 minutes on a 2-core CPU
    tgrow compare --preset dev --out runs/dev      # about an hour
    tgrow compare --preset quick --plans g_stack,compound --optimizer-state fresh --out runs/q2
    tgrow compare --preset quick --seeds 0,1,2 --budgets 0.25,0.5 --out runs/q3   # intervals, multiplier
    tgrow compare --preset quick --corpus my_texts/ --tokenizer bpe --out runs/q4  # any text file or directory
    tgrow compare --preset quick --hf-config ./llama-config.json --seq-len 128 --out runs/q5  # a Llama-shaped target

Besides the baseline and the plans, every comparison trains each plan's first-stage model alone on
the baseline's FLOPs (a ``small-only`` control; ``--no-controls`` turns them off), and prints the
target's tokens per parameter against the compute-optimal size (``--compute-optimal``).

Writes ``OUT/report.json`` (runs, speedups: FLOPs, wall-clock and tokens to reach the baseline's
final validation loss; losses at equal FLOPs), ``OUT/report.md``, ``OUT/loss_vs_flops.png`` and
``OUT/loss_vs_wall.png``, and prints the speedup table. Killed midway, the same command resumes in ``OUT``.

``--hf-config`` makes the target a Hugging Face architecture (GPT-2, Llama, Mistral, Qwen2, Mixtral,
Qwen2-MoE; a ``config.json``, a ``save_pretrained`` directory or inline JSON): it trains as our GPT
(same FLOP accounting, checkpoints and report), keeps its own vocabulary (the tokenizer's must fit in
it), and every run exports with ``tgrow hf export OUT/runs/seed0/NAME --out DIR``. Of the model flags
only ``--seq-len`` applies (the context of a RoPE model; default ``max_position_embeddings``, at most 2048).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

from transformer_grow.cli.common import DATA_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, check_device
from transformer_grow.cli.flags import ConfigFlags
from transformer_grow.cli.plan import PLAN_FLAGS, add_plan_options, plan_options_from_args
from transformer_grow.compare.run import PRESETS, CompareConfig, compare_preset, run_compare
from transformer_grow.data import DataConfig
from transformer_grow.errors import require
from transformer_grow.io import check_directory_path
from transformer_grow.model import PRESETS as MODEL_PRESETS
from transformer_grow.model import ModelConfig
from transformer_grow.plans.builders import check_plan_options_apply
from transformer_grow.plans.timing import GrowthTimingWarning

# A comparison preset supplies every default; the flags refine it. The budget, evaluation and
# checkpoint intervals are the comparison's own (budget_tokens, n_evals, eval_windows).
_PRESET = "the comparison preset's"
COMPARE_FLAGS = ConfigFlags(CompareConfig, "comparison", defaults_from=_PRESET,
                            exclude=frozenset({"name", "target", "train", "data", "plan_options", "hf_family"}))
COMPARE_TRAIN_FLAGS = TRAIN_FLAGS.variant(
    title="training (every run)", defaults_from=_PRESET,
    exclude=frozenset({"max_steps", "max_tokens", "eval_interval", "eval_windows", "ckpt_interval"}))
COMPARE_MODEL_FLAGS = MODEL_FLAGS.variant(title="target model (override --target)", defaults_from=_PRESET,
                                          exclude=frozenset({"vocab_size"}))  # the data's vocabulary
COMPARE_DATA_FLAGS = DATA_FLAGS.variant(defaults_from=_PRESET)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="baseline vs growth plans on one budget: speedups, plots, report",
        description="Train the target from scratch (the baseline) and each growth plan on the same data order "
                    "and budget, evaluate all on the same fixed validation windows at fixed FLOP intervals, and "
                    "report the FLOPs, wall-clock and tokens speedup to reach the baseline's final validation "
                    "loss. Also trains, on the same FLOPs, each plan's first-stage model alone (small-only "
                    "controls: a plan that does not beat its control gains nothing from growing), once per seed "
                    "(--seeds 0,1,2: mean and 90% Student t interval) and, with --budgets 0.25,0.5, at fractions "
                    "of the budget for the schedule-fair effective compute multiplier. Any text corpus: --corpus "
                    "FILE|DIR (with --tokenizer bpe or bytes). Resumable: rerun the same command to continue.")
    parser.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                        help="comparison preset: quick (<= 10 min on a 2-core CPU), dev (~1 hour), full (GPU)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (report.json, report.md, loss_vs_flops.png, loss_vs_wall.png, "
                             "runs/); default runs/compare-PRESET")
    parser.add_argument("--target", default=None, choices=tuple(MODEL_PRESETS),
                        help="model preset of the target (then refined by the model flags); default: the preset's")
    parser.add_argument("--hf-config", default=None, metavar="PATH_OR_JSON",
                        help="a Hugging Face architecture as the target: a transformers config.json, a "
                             "save_pretrained directory or inline JSON (model_type llama, mistral, qwen2, mixtral, "
                             "qwen2_moe or gpt2); replaces --target and the model flags except --seq-len")
    parser.add_argument("--sequential", action="store_true",
                        help="run the plans one after another (default: they take turns every evaluation interval, "
                             "so changes in machine load hit every run alike and wall-clock ratios stay fair)")
    for flags in (COMPARE_FLAGS, COMPARE_TRAIN_FLAGS):
        flags.add_to(parser)
    add_plan_options(parser, with_plan=False, flags=PLAN_FLAGS.variant(defaults_from=_PRESET))
    for flags in (COMPARE_MODEL_FLAGS, COMPARE_DATA_FLAGS):
        flags.add_to(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The preset's :class:`CompareConfig` with every flag given applied (validated)."""
    config = compare_preset(args.preset)
    target, hf_family = config.target, None
    if getattr(args, "hf_config", None) is not None:
        from transformer_grow.run.hf_run import hf_target

        extra = (["--target"] if args.target else []) + [COMPARE_MODEL_FLAGS.flag(name) for name in
                                                         sorted(set(COMPARE_MODEL_FLAGS.given(args)) - {"seq_len"})]
        require(not extra, f"--hf-config gives the whole target; drop {', '.join(extra)} (of the model flags only "
                           "--seq-len applies)")
        target, hf_family = hf_target(args.hf_config, COMPARE_MODEL_FLAGS.given(args).get("seq_len"))
    elif args.target is not None:
        target = ModelConfig.from_dict({**target.to_dict(), **MODEL_PRESETS[args.target], "head_dim": None,
                                        "n_kv_head": None, "d_ff": None})
    model_flags = COMPARE_MODEL_FLAGS.given(args)
    if model_flags and hf_family is None:
        derived = {k: None for k in ("head_dim", "n_kv_head", "d_ff") if k not in model_flags}
        target = ModelConfig.from_dict({**target.to_dict(), **derived, **model_flags})
    train = config.train.replace(**COMPARE_TRAIN_FLAGS.given(args))
    train.validate()
    check_device(train)
    data = DataConfig(**{**dataclasses.asdict(config.data), **COMPARE_DATA_FLAGS.given(args)})
    data.validate()
    changes = COMPARE_FLAGS.given(args)
    if changes.get("budgets") == []:  # --budgets "": the full budget only, whatever the preset says
        changes["budgets"] = None
    seed = COMPARE_TRAIN_FLAGS.given(args).get("seed")
    if seed is not None:  # --seed S is --seeds S; every run's seed comes from seeds
        require(changes.get("seeds", [seed]) == [seed],
                f"--seed {seed} and --seeds {changes.get('seeds')} disagree; give --seeds only (e.g. --seeds 0,1,2)")
        changes["seeds"] = [seed]
    config = dataclasses.replace(config, **changes, target=target, train=train, data=data,
                                 plan_options=plan_options_from_args(args, config.plan_options), hf_family=hf_family)
    check_plan_options_apply(config.plans, PLAN_FLAGS.given(args), PLAN_FLAGS.flag)
    config.validate()
    if args.out is not None:
        check_directory_path(args.out, "--out")
    return config


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:  # e.g. G_stack's timing clamped: one clean line
        warnings.simplefilter("always", GrowthTimingWarning)
        config = config_from_args(args)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    out = args.out or f"runs/compare-{config.name}"
    extras = (", small-only controls" if config.controls else "") + f", seeds {','.join(map(str, config.seeds))}"
    if config.budgets:
        extras += f", budget fractions {','.join(f'{f:g}' for f in config.fractions())}"
    print(f"tgrow compare: preset {config.name}, plans scratch + {', '.join(config.plans)}{extras}, output {out}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)  # already shown
        report = run_compare(config, out, interleave=not args.sequential)
    print(f"report: {out}/report.json, {out}/report.md, {out}/loss_vs_flops.png, {out}/loss_vs_wall.png")
    return 0 if report is not None else 1

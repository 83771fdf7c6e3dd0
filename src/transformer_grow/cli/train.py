"""`tgrow train`: train a model from scratch, or continue a run with `--resume DIR`.

    tgrow train --preset micro --max-steps 300 --out runs/micro
    tgrow train --config run.yaml --lr 1e-3 --out runs/a
    tgrow train --resume runs/micro --max-steps 600
    tgrow train --plan g_stack --preset tiny --max-tokens 2M --out runs/grown   # train small, grow, train on

The run directory receives ``config.json`` (the resolved settings), ``metrics.jsonl`` and the latest
checkpoint in ``checkpoint/``. A final line summarises the run. With ``--plan`` the model settings
describe the *target* and the budget (``--max-tokens``, or ``--max-steps`` times the batch) is the
from-scratch baseline's; the plan's stages are trained by :class:`~transformer_grow.train.GrowthManager`
(evaluation at fixed FLOP intervals, ``result.json``); rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
from pathlib import Path

from transformer_grow.cli.common import (
    DATA_FLAGS,
    MODEL_FLAGS,
    TRAIN_FLAGS,
    add_config_options,
    build_run_setup,
    check_device,
    load_config_file,
)
from transformer_grow.cli.plan import PLAN_FLAGS, add_plan_options, run_plan_from_args
from transformer_grow.data import DataConfig, prepare_data
from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_json, lock_run_dir
from transformer_grow.model import ModelConfig
from transformer_grow.train import TrainConfig, Trainer, TrainingDiverged
from transformer_grow.train.checkpoint import read_checkpoint_meta, resolve_checkpoint_dir
from transformer_grow.train.distributed import (
    main_rank_first,
    make_trainer,
    maybe_distributed_session,
    resume_trainer,
)
from transformer_grow.train.interrupt import stop_on_signals
from transformer_grow.train.memory import check_training_memory
from transformer_grow.train.metrics import METRICS_FILENAME
from transformer_grow.train.outcome import TrainingInterrupted
from transformer_grow.train.recovery import recovery_line
from transformer_grow.train.ring import is_ring_entry, rewind, run_dir_of


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model (from scratch or resumed from a checkpoint)",
        description="Train a GPT model on a corpus. Settings come from the dataclass defaults, a preset, "
                    "--config FILE and the flags (flags win). Leaves metrics.jsonl and a resumable "
                    "checkpoint in the run directory.")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory for config.json, metrics.jsonl and checkpoint/ (required unless "
                             "--resume, which defaults to the resumed run's directory)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the run whose checkpoint is in DIR (a run or checkpoint directory, e.g. "
                             "RUN/checkpoints/step-N of the ring a divergence names: the steps after it are then "
                             "abandoned); the model comes from the checkpoint, train/data flags (e.g. a larger "
                             "--max-steps) override the checkpointed settings. With --plan: the plan run in DIR (or "
                             "a checkpoint of its ring), whose lr, min-lr-ratio, warmup-steps, grad-clip and "
                             "skip-batches may change (e.g. after a divergence)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars on stderr")
    parser.add_argument("--parallel", "--strategy", dest="parallel", choices=("none", "ddp", "fsdp"), default="none",
                        help="data parallelism under torchrun: ddp (DistributedDataParallel) or fsdp (FSDP2), e.g. "
                             "torchrun --nproc_per_node 2 -m transformer_grow.cli.main train --parallel ddp ...; "
                             "--batch-size is the global batch (default: none, one process). --strategy is an alias "
                             "(GrowthManager's parallel=; its strategy= names the growth plan)")
    add_config_options(parser)
    for flags in (MODEL_FLAGS, TRAIN_FLAGS, DATA_FLAGS):
        flags.add_to(parser)
    add_plan_options(parser)
    parser.set_defaults(func=run)
    return parser


# Optimizer settings a resumed run may change (to recover from a divergence), logged as an event.
RECOVERY_SETTINGS = ("lr", "min_lr_ratio", "warmup_steps", "grad_clip", "weight_decay", "beta1", "beta2",
                     "skip_batches")


def argv_without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without ``flags`` and their values (``--flag VALUE`` or ``--flag=VALUE``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in flags)):
            kept.append(arg)
    return kept


def diverged_message(error: TrainingDiverged, argv: list[str] | None, plan: bool = False) -> str:
    """The error line of a diverged run: the checkpoint to resume, the command and the lower learning rate
    (:func:`~transformer_grow.train.recovery.recovery_line`)."""
    if plan:  # a plan run resumes with its own command line (the optimizer settings may change)
        base = argv_without(list(argv or ["train"]), "--lr", "--resume", "--out", "--skip-batches")
        return recovery_line(error, lambda path: shlex.join(["tgrow", *base, "--resume", str(path)]))
    return recovery_line(error, lambda path: f"tgrow train --resume {shlex.quote(str(path))}")


def interrupted_message(error: TrainingInterrupted, command: str) -> str:
    """The line of a run a stop signal ended: where it stopped and the command that continues it."""
    text = " ".join(str(error).split())
    return text if error.checkpoint is None else f"{text}; continue with: {command}"


def _print_start(trainer: Trainer, data, resumed: bool) -> None:
    model = trainer.model
    verb = f"resuming at step {trainer.step}" if resumed else "training"
    print(f"{verb}: {model.num_params():,} non-embedding parameters "
          f"({model.num_params(non_embedding=False):,} total), {model.flops_per_token():,} FLOPs/token, "
          f"{trainer.total_steps:,} steps of {trainer.tokens_per_step:,} tokens on {trainer.device} "
          f"| data: {getattr(data, 'description', '')}", file=sys.stderr)


def _fit(trainer: Trainer, main: bool, argv: list[str] | None, command: str) -> int:
    try:
        with stop_on_signals():  # SIGTERM (schedulers) and SIGINT: finish the step, checkpoint, stop
            summary = trainer.fit()
    except TrainingDiverged as e:
        if main:
            print(f"tgrow train: error: {diverged_message(e, argv)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        if main:
            print(f"tgrow train: {interrupted_message(e, command)}", file=sys.stderr)
        return e.exit_code
    finally:
        trainer.close()
    if main:
        print(summary.line())
    return 0


def _run_new(args: argparse.Namespace) -> int:
    require(args.out is not None, "--out DIR is required (the run directory), unless --resume DIR is given")
    out = Path(args.out)
    try:
        resolve_checkpoint_dir(out)
    except ConfigError:
        pass
    else:
        raise ConfigError(f"--out {args.out!r} already holds a checkpoint; continue it with --resume {args.out} "
                          "or choose another directory")
    setup = build_run_setup(args)
    env = args.dist_env
    main = env is None or env.is_main
    with _locked(out, main):
        if main:  # records of a run killed before its first checkpoint would read as this run's
            (out / METRICS_FILENAME).unlink(missing_ok=True)
        with main_rank_first(env):  # under torchrun, rank 0 fills the token cache first
            data = prepare_data(setup.data, progress=not args.no_progress and main)
        model_config = setup.model_for(data)
        check_training_memory(model_config, setup.train)
        trainer = make_trainer(model_config, setup.train, data, strategy=args.parallel, env=env, out_dir=out,
                               data_config=setup.data, progress=not args.no_progress)
        if main:
            atomic_write_json(out / "config.json", {"model": model_config.to_dict(), "train": setup.train.to_dict(),
                                                    "data": dataclasses.asdict(setup.data),
                                                    "data_fingerprint": data.fingerprint})
            _print_start(trainer, data, resumed=False)
        return _fit(trainer, main, getattr(args, "argv", None), f"tgrow train --resume {shlex.quote(str(out))}")


def _run_resume(args: argparse.Namespace) -> int:
    meta = read_checkpoint_meta(args.resume)
    file = load_config_file(args.config) if args.config else {"preset": None, "model": {}, "train": {}, "data": {}}
    model_flags = sorted(MODEL_FLAGS.given(args)) + (["preset"] if args.preset else [])
    model_file = sorted(file["model"]) + (["preset"] if file["preset"] else [])
    require(not model_flags and not model_file,
            f"model settings ({', '.join(model_flags + model_file)}) cannot change when resuming; the model "
            f"comes from the checkpoint in {args.resume!r}")
    state = meta["train_state"]
    train = TrainConfig.from_dict({**state["train_config"], **file["train"], **TRAIN_FLAGS.given(args)})
    data_settings = {**(state.get("data_config") or {}), **file["data"], **DATA_FLAGS.given(args)}
    check_device(train)
    data_config = DataConfig(**data_settings)
    data_config.validate()
    check_training_memory(ModelConfig.from_dict(meta["model_config"]), train)
    env = args.dist_env
    main = env is None or env.is_main
    ckpt_dir = resolve_checkpoint_dir(args.resume)
    out = Path(args.out) if args.out else run_dir_of(ckpt_dir)
    with _locked(out, main):
        with main_rank_first(env):
            data = prepare_data(data_config, progress=not args.no_progress and main)
        trainer = resume_trainer(args.resume, data, strategy=args.parallel, env=env, train_config=train,
                                 out_dir=args.out, data_config=data_config, progress=not args.no_progress)
        if main:
            saved = TrainConfig.from_dict(state["train_config"])  # its defaults where the file leaves fields out
            changes = {name: [getattr(saved, name), getattr(train, name)] for name in RECOVERY_SETTINGS
                       if getattr(saved, name) != getattr(train, name)}
            if changes:  # e.g. a lower learning rate after a divergence: on the record, next to the losses
                trainer.log(event="optimizer_settings_changed", changes=changes)
            _print_start(trainer, data, resumed=True)
        return _fit(trainer, main, getattr(args, "argv", None),
                    f"tgrow train --resume {shlex.quote(str(out if out is not None else args.resume))}")


def _plan_run_dir(args: argparse.Namespace) -> Path:
    """The run directory of ``--resume`` with ``--plan``: the directory itself, or the run of a checkpoint of
    its ring (which then becomes the latest, the steps after it abandoned: see train/ring.py)."""
    path = Path(args.resume)
    if not is_ring_entry(path):
        return path
    entry = resolve_checkpoint_dir(path)  # refuses a missing or damaged one in one line
    run_dir = run_dir_of(entry)
    read_checkpoint_meta(entry)
    env = args.dist_env
    with main_rank_first(env):
        if env is None or env.is_main:
            with lock_run_dir(run_dir, "run directory"):
                rewind(entry)
    return run_dir


def _locked(out: Path | None, main: bool):
    """The run directory's lock, held by the main process (other ranks write nothing there)."""
    return lock_run_dir(out, "run directory") if out is not None and main else contextlib.nullcontext()


def run(args: argparse.Namespace) -> int:
    with maybe_distributed_session(args.parallel, args.device or "auto") as env:
        args.dist_env = env
        given = sorted(PLAN_FLAGS.given(args))
        require(args.plan is not None or not given,
                f"{PLAN_FLAGS.flag(given[0]) if given else ''} is a growth-plan option; it applies only with --plan")
        if args.plan is not None:
            if args.resume is not None:  # explicit: the optimizer settings (e.g. --lr) may change
                run_dir = _plan_run_dir(args)
                require(args.out is None or Path(args.out) == run_dir,
                        f"--resume {args.resume!r} and --out {args.out!r} differ; a plan run resumes in its own "
                        "directory (give one of them)")
                args.out = str(run_dir)
            return run_plan_from_args(args, resume=args.resume is not None)
        return _run_resume(args) if args.resume else _run_new(args)

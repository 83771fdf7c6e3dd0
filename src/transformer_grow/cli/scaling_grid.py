"""`tgrow scaling estimate` and `tgrow scaling run`: a grid's runs, their expected time, and training them.

    tgrow scaling estimate --mode quick
    tgrow scaling run --mode quick --out runs/scaling-quick
    tgrow scaling run --mode quick --plans scratch,g_stack --out runs/scaling-growth
"""

from __future__ import annotations

import math
import sys

from transformer_grow.errors import require

SCRATCH_PLAN = "scratch"


def _grid_options(p, command: str) -> None:
    p.add_argument("--mode", default="quick", help="grid: quick (about 20 min on a 2-core CPU), dev or full "
                                                   "(default: quick); the flags below refine it")
    p.add_argument("--plans", default=SCRATCH_PLAN, help="comma-separated plans, each run for every size and budget: "
                                                        "scratch and/or growth plans (those of tgrow plan), e.g. "
                                                        "scratch,g_stack (default: scratch)")
    g = p.add_argument_group("grid (override the mode's)")
    g.add_argument("--models", default=None, help="model sizes as n_layer x d_model, e.g. 2x64,4x128")
    g.add_argument("--tokens", default=None, help="token budgets, e.g. 100k,1M (replace the mode's budgets)")
    g.add_argument("--tokens-per-param", default=None, help="budgets as tokens per non-embedding parameter, e.g. "
                                                            "5,20 (replace the mode's budgets)")
    g.add_argument("--seeds", default=None, help="seeds, e.g. 0,1")
    g.add_argument("--seq-len", type=int, default=None, help="context length of every model")
    t = p.add_argument_group("training (every run; override the mode's)")
    for flag, kind, text in (("--batch-size", int, "sequences per step"), ("--lr", float, "peak learning rate"),
                             ("--warmup-fraction", float, "share of each run's steps spent in linear warmup"),
                             ("--n-evals", int, "validation points per run (>= 2)"),
                             ("--eval-windows", int, "fixed validation windows"),
                             ("--device", str, "auto, cpu, cuda or mps"), ("--dtype", str, "auto, fp32 or bf16")):
        t.add_argument(flag, type=kind, default=None, help=text)
    d = p.add_argument_group("data (as in tgrow train)")
    d.add_argument("--corpus", default=None,
                   help="'stdlib' (default), a text file or directory, a token file or hf:NAME")
    d.add_argument("--tokenizer", default=None, help="bpe or bytes (default: bytes for quick, bpe for dev and full)")
    d.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default: 8192)")
    d.add_argument("--cache-dir", default=None, help="tokenizer and token cache (default: $TGROW_CACHE or "
                                                     "~/.cache/transformer_grow)")
    g = p.add_argument_group("growth plans (as in tgrow plan)")
    for flag, kind, text in (("--budget-mode", str,
                              "flops (default: growth runs spend the scratch run's FLOPs) or tokens"),
                             ("--growth-factor", int, "g_stack: the small model has n_layer / g layers (default 2)"),
                             ("--growth-fraction", float, "grow after this fraction of the budget's tokens"),
                             ("--max-growth-fraction", float, "clamp G_stack's timing to this fraction"),
                             ("--growth-method", str, "depth operator (default: stack)"),
                             ("--optimizer-state", str, "carry (default) or fresh AdamW state after growth"),
                             ("--rewarmup-steps", int, "LR re-warmup steps after growth"),
                             ("--schedule-policy", str, "continue (default) or restart the LR schedule at growth")):
        g.add_argument(flag, type=kind, default=None, help=text)
    if command == "estimate":
        p.add_argument("--out", default=None, metavar="FILE_OR_DIR",
                       help="results of `tgrow scaling run --out`: mark finished runs and give the remaining time")
        p.add_argument("--no-measure", action="store_true", help="list the runs and FLOPs without timing anything")
        p.add_argument("--measure-steps", type=int, default=3, help="timed training steps per model, at least "
                                                                    "(default: 3, after one warm-up step)")
        p.add_argument("--measure-seconds", type=float, default=1.0,
                       help="time each model for at least this long (default: 1.0; at most 50 steps)")
        return
    p.add_argument("--out", required=True, metavar="FILE_OR_DIR",
                   help="results JSONL (a .jsonl path) or a directory for results.jsonl; finished runs in it are "
                        "skipped (resume)")
    p.add_argument("--early-stop", action="store_true",
                   help="stop a scratch run when its extrapolated learning curve (the multi-power law of Luo et al. "
                        "2025, its annealing bonus held near a prior pooled over the grid's finished runs) cannot beat "
                        "the best loss of a finished run at equal tokens; recorded as early-stopped")
    p.add_argument("--early-stop-margin", type=float, default=0.01,
                   help="stop only if even the optimistic prediction is this many nats worse (default: 0.01)")
    p.add_argument("--early-stop-level", type=float, default=0.95, help="prediction interval level (default: 0.95)")
    p.add_argument("--early-stop-min-fraction", type=float, default=0.25,
                   help="judge a run only after this share of its steps (default: 0.25)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after training this many runs (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no per-run progress bars on stderr")


def add_grid_commands(sub) -> None:
    p = sub.add_parser("estimate", help="a grid's runs and expected time, from throughput measured here",
                       description="List a grid's runs (size, tokens, FLOPs) and, from a few timed training steps "
                                   "per model size on this machine, the expected time of every run and in total.")
    _grid_options(p, "estimate")
    p.set_defaults(func=run_estimate)
    p = sub.add_parser("run", help="train a grid's missing runs into a results JSONL (resumable)",
                       description="Train every run of the grid (model sizes x token budgets x seeds x plans) "
                                   "missing from the results file, appending one record per run (N, D, C, final "
                                   "and curve of the validation loss, wall time, config). Run it again to resume.")
    _grid_options(p, "run")
    p.set_defaults(func=run_grid_command)


def _grid_setup(args):
    """(GridSpec, DataConfig, PlanOptions) from the mode and every flag, validated before any work."""
    import dataclasses

    from transformer_grow.cli.plan import PLAN_FLAGS, plan_options_from_args
    from transformer_grow.data import DataConfig
    from transformer_grow.data.config import BYTE_VOCAB_SIZE, DEFAULT_VOCAB_SIZE
    from transformer_grow.lab.grid import GridSpec, parse_list
    from transformer_grow.plans.builders import check_plan_options_apply

    base = GridSpec.from_mode(args.mode)
    overrides: dict = {}
    for key, kind in (("models", "sizes"), ("seeds", "integers"), ("plans", "names"), ("tokens", "counts"),
                      ("tokens_per_param", "numbers")):
        if getattr(args, key) is not None:
            overrides[key] = parse_list(getattr(args, key), "--" + key.replace("_", "-"), kind)
    if {"models", "tokens", "tokens_per_param"} & set(overrides):
        overrides["name"] = "custom"
    if "tokens" in overrides or "tokens_per_param" in overrides:  # given budgets replace the mode's
        overrides = {"tokens": (), "tokens_per_param": (), **overrides}
    if args.seq_len is not None:
        overrides["seq_len"] = args.seq_len
    training = {k: getattr(args, k) for k in ("batch_size", "lr", "warmup_fraction", "n_evals", "eval_windows",
                                              "device", "dtype") if getattr(args, k) is not None}
    overrides["training"] = dataclasses.replace(base.training, **training)
    tokenizer = args.tokenizer or base.tokenizer
    bpe_vocab = args.vocab_size or (base.vocab_size if base.tokenizer == "bpe" else DEFAULT_VOCAB_SIZE)
    data = DataConfig(corpus=args.corpus or "stdlib", tokenizer=tokenizer, vocab_size=bpe_vocab,
                      cache_dir=args.cache_dir)
    data.validate()
    overrides["tokenizer"] = tokenizer
    overrides["vocab_size"] = BYTE_VOCAB_SIZE if tokenizer == "bytes" else bpe_vocab
    spec = dataclasses.replace(base, **overrides)
    from transformer_grow.plans.builders import PLAN_NAMES

    for plan in spec.plans:
        require(plan in PLAN_NAMES, f"plan={plan!r} is not allowed; choose from {', '.join(map(repr, PLAN_NAMES))}")
    options = plan_options_from_args(args)
    check_plan_options_apply(spec.plans, PLAN_FLAGS.given(args), PLAN_FLAGS.flag)
    options.validate()
    return spec, data, options


def _runner(args, spec, data, options, results_path, early_stop=None, progress=False):
    from transformer_grow.cli.common import check_device
    from transformer_grow.lab.runner import GridRunner

    runner = GridRunner(spec, data, results_path, plan_options=options, early_stop=early_stop, progress=progress)
    for note in runner.check():
        print(f"note: {note}", file=sys.stderr)
    if spec.runs():
        check_device(runner.train_config(spec.runs()[0]))
    return runner


def run_estimate(args) -> int:
    from transformer_grow.lab.grid import finished_run_ids, format_seconds, resolve_results_path

    spec, data, options = _grid_setup(args)
    results = resolve_results_path(args.out) if args.out else None
    done = finished_run_ids(results) if results is not None and results.exists() else set()
    runs = spec.runs()
    formula = "tokens x (6 (N + d_model vocab) + 6 n_layer seq_len d_model), Kaplan et al. 2020"
    print(f"grid {spec.name}: {len(runs)} runs (N ~ 12 n_layer d_model^2; FLOPs ~ {formula})")
    runner = _runner(args, spec, data, options, results or "unused.jsonl")  # checks every run's settings
    estimate = None
    if not args.no_measure:
        from transformer_grow.lab.estimate import estimate_grid, measure_throughput, threads_note

        require(args.measure_steps >= 1, f"--measure-steps={args.measure_steps} must be >= 1")
        require(args.measure_seconds >= 0, f"--measure-seconds={args.measure_seconds} must be >= 0")
        print(f"throughput measured on this machine ({threads_note()}, batch {spec.training.batch_size} x "
              f"{spec.seq_len} tokens, vocabulary {spec.vocab_size}):")

        def measure(config, batch_size, training):
            return measure_throughput(config, batch_size, training, min_steps=args.measure_steps,
                                      min_seconds=args.measure_seconds, max_steps=max(50, args.measure_steps))

        estimate = estimate_grid(spec, runner, measure=measure, log=print)
    seconds = {r.run.run_id: r.seconds for r in estimate.runs} if estimate else {}
    print("runs:")
    for run in runs:
        status = "done" if run.run_id in done else "todo"
        time_text = f"  ~{format_seconds(seconds[run.run_id])}" if seconds else ""
        print(f"  {status}  {run.run_id:34s} N~{run.n_params_estimate:.3g}  D={run.tokens:.3g}  "
              f"C~{run.flops_estimate:.3g}{time_text}")
    total_flops = sum(run.flops_estimate for run in runs)
    n_done = len(done & {r.run_id for r in runs})
    print(f"total ~{total_flops:.3g} FLOPs; {n_done} runs done")
    if estimate is not None:
        todo = {r.run_id for r in runs} - done
        print(f"expected time: total ~{format_seconds(estimate.total_seconds)} for {len(runs)} runs; remaining "
              f"~{format_seconds(estimate.seconds_for(todo))} for {len(todo)} runs (excludes data preparation on "
              "first use)")
    return 0


def run_grid_command(args) -> int:
    from transformer_grow.data import prepare_data
    from transformer_grow.io import lock_run_dir
    from transformer_grow.lab.grid import SCRATCH, resolve_results_path, run_grid
    from transformer_grow.lab.runner import EarlyStopRule

    spec, data_config, options = _grid_setup(args)
    require(args.max_runs is None or args.max_runs >= 1, f"--max-runs={args.max_runs} must be >= 1")
    results = resolve_results_path(args.out)
    # checked even without --early-stop: a bad value is refused, not ignored
    rule = EarlyStopRule(margin=args.early_stop_margin, level=args.early_stop_level,
                         min_fraction=args.early_stop_min_fraction)
    require(math.isfinite(rule.margin) and rule.margin <= 1,
            f"--early-stop-margin={rule.margin} is not allowed; it must be a number from 0 to 1")
    early_stop = None
    if args.early_stop:
        early_stop = rule
        if any(plan != SCRATCH for plan in spec.plans):
            print("note: early stopping applies to scratch runs only; growth runs always finish", file=sys.stderr)
    runner = _runner(args, spec, data_config, options, results, early_stop, progress=not args.no_progress)
    print(f"tgrow scaling run: grid {spec.name}, {len(spec.runs())} runs ({', '.join(spec.plans)}), results {results}")
    with lock_run_dir(results.parent, "--out"):  # before the data: a second grid here is refused at once
        runner.data = prepare_data(data_config, progress=not args.no_progress)
        records = run_grid(spec, results, runner, settings_key=runner.settings_key, max_runs=args.max_runs)
    finished = len(records)
    stopped = sum(1 for r in records if r.get("early_stopped"))
    print(f"{finished}/{len(spec.runs())} runs in {results}" + (f" ({stopped} early-stopped)" if stopped else ""))
    if finished == len(spec.runs()):
        print(f"fit: tgrow scaling fit {results}" + ("" if spec.plans == (SCRATCH,) else
                                                     f"; growth: tgrow scaling growth {results}"))
    return 0

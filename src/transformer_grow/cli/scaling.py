"""`tgrow scaling`: the scaling-law lab.

- fit FILE: fit L(N), L(D), L(C), the Chinchilla form L(N, D) (Approach 3) and IsoFLOP profiles
  (Approach 2) to our results JSONL or any CSV, with bootstrap intervals, standard errors, prediction
  intervals for new runs and leave-one-out validation (one plan's runs; early-stopped runs are left out
  unless --include-early-stopped);
- curve FILE: extrapolate a learning curve (CSV or metrics.jsonl) with the multi-power and LR-annealing
  laws and the plain power law, with prediction intervals and a plot; --reference RUN... pools the
  annealing bonus of completed runs into a prior for a run whose decay has not begun (form
  multi_power+prior), --save-prior keeps that prior as JSON and --prior reuses it;
- growth FILE: growth's FLOP saving over training from scratch as a function of model size, with
  intervals, extrapolated beyond the largest run (both plans' runs in one results file);
- estimate: a grid's runs with their size, tokens, FLOPs and expected time from throughput measured
  on this machine (a few timed training steps per model), per run and in total;
- run: train a grid's missing runs (real training runs) into a results JSONL; resumable.

    tgrow scaling estimate --mode quick
    tgrow scaling run --mode quick --out runs/scaling-quick
    tgrow scaling run --mode quick --plans scratch,g_stack --out runs/scaling-growth
    tgrow scaling fit runs/scaling-quick/results.jsonl
    tgrow scaling fit published.csv --d-col tokens --c-col flops --drop-highest 2 --where "tokens >= 1e9"
    tgrow scaling curve runs/train/metrics.jsonl --fit-fraction 0.5 --out curve/
    tgrow scaling curve runs/live/metrics.jsonl --schedule wsd --total-steps 20000 --peak-lr 3e-4 \
        --reference runs/a/metrics.jsonl runs/b/metrics.jsonl --save-prior prior.json
    tgrow scaling growth runs/scaling-growth/results.jsonl --plan g_stack
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from transformer_grow.cli.scaling_curve import add_curve_command
from transformer_grow.cli.scaling_grid import add_grid_commands
from transformer_grow.cli.scaling_ladder import add_ladder_command
from transformer_grow.errors import require


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="scaling-law lab: fit laws to runs, plan and run grids",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scaling_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_fit(sub)
    add_curve_command(sub)
    _add_growth(sub)
    add_grid_commands(sub)
    add_ladder_command(sub)


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="fit scaling laws to a results JSONL or a CSV",
        description="Fit L(N), L(D), L(C), L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3: "
        "Huber loss on log-loss residuals, L-BFGS from a grid of starts) and IsoFLOP profiles (Approach 2) to FILE, "
        "with bootstrap intervals and leave-one-out validation. Prints a summary; with --out, writes fit.json, "
        "fit.md and PNG plots. A results JSONL with several plans is fitted one plan at a time (--plan).")
    p.add_argument("file", metavar="FILE", help="results JSONL (one run per line) or CSV with a header row")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv"),
                   help="input format (default: from the extension: .jsonl/.json or .csv)")
    p.add_argument("--n-col", default=None,
                   help="column holding the parameter count N (default: n_params_nonembedding)")
    p.add_argument("--d-col", default=None, help="column holding the training tokens D (default: tokens)")
    p.add_argument("--c-col", default=None, help="column holding the training compute C in FLOPs; without --d-col, "
                                                 "D = C / (6 N) (default: flops when present, else C = 6 N D); with "
                                                 "N and D columns too, C / (6 N D) must lie in [0.1, 8] (a results "
                                                 "record's model config widens it to its own head and attention cost)")
    p.add_argument("--loss-col", default=None, help="column holding the final loss (default: final_val_loss)")
    p.add_argument("--drop-invalid", action="store_true",
                   help="leave out runs with a missing, non-numeric or non-positive value instead of refusing")
    p.add_argument("--drop-highest", type=int, default=0, metavar="K",
                   help="leave out the K runs with the highest loss (diverged or broken runs; default: 0)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="keep only rows where EXPR holds: COLUMN OP VALUE joined by 'and', OP one of < <= > >= == "
                        "!=, e.g. \"tokens >= 1e9 and arch == dense\" (repeatable; all must hold)")
    p.add_argument("--fits", default=None, metavar="LIST",
                   help="fits to run, comma-separated: chinchilla (Approach 3), isoflop (Approach 2), loss-n, loss-d, "
                        "loss-c (single-variable laws), single (the three), all (default: all; Approach 2 is then "
                        "skipped with a note when the runs are not on a few compute budgets, and refused when named)")
    p.add_argument("--objective", default="huber", choices=("huber", "huber-mle", "mse", "mae"),
                   help="loss on log residuals: huber (Hoffmann et al.), huber-mle (Huber likelihood with its scale "
                        "fitted, Besiroglu et al. 2024), mse or mae (default: huber)")
    p.add_argument("--no-projection", action="store_true",
                   help="run every start of the grid by L-BFGS instead of projecting the starts (variable "
                        "projection; slower, for checking)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K",
                   help="bootstrap resamples for the intervals (default: 200; 0 turns the bootstrap off)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    p.add_argument("--huber-delta", type=float, default=1e-3,
                   help="Huber delta on log-loss residuals (default: 1e-3, as Hoffmann et al.)")
    _add_init_grid(p)
    p.add_argument("--isoflop-rtol", type=float, default=0.1,
                   help="runs whose compute is within this relative tolerance form one IsoFLOP budget (default: 0.1)")
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out validation")
    p.add_argument("--predict-n", type=float, nargs="+", default=[], metavar="N",
                   help="predict the loss at these parameter counts (pair with --predict-d)")
    p.add_argument("--predict-d", type=float, nargs="+", default=[], metavar="D",
                   help="... and these token counts (one per --predict-n value)")
    p.add_argument("--predict-c", type=float, nargs="+", default=[], metavar="C",
                   help="compute budgets (FLOPs) for the compute-optimal N, D, tokens per parameter and loss "
                        "(default: the largest run's compute)")
    p.add_argument("--out", default=None, metavar="DIR", help="write fit.json, fit.md and plots into DIR")
    p.add_argument("--no-plots", action="store_true", help="with --out, skip the PNG plots")
    p.add_argument("--plan", default=None, help="fit the runs of this plan (default: every run when the file holds "
                                                "one plan, else the 'scratch' runs)")
    _add_include_early_stopped(p)
    p.set_defaults(func=run_fit)


def _add_init_grid(p) -> None:
    p.add_argument("--init-grid", default="full", choices=("full", "reduced"),
                   help="L-BFGS starts: full = the paper's 4,500-start grid, reduced = 72 starts (default: full)")


def _add_include_early_stopped(p) -> None:
    p.add_argument("--include-early-stopped", action="store_true",
                   help="use early-stopped runs at their planned tokens with their predicted final loss (an "
                        "extrapolation); by default they are left out")


def _add_growth(sub) -> None:
    p = sub.add_parser(
        "growth", help="growth's FLOP saving vs scratch as a function of model size, extrapolated",
        description="Fit the Chinchilla form to the scratch runs and to a growth plan's runs of FILE (in effective "
        "tokens C / 6N, growth's small stages counted) and report, at each size N, the FLOPs growth saves to reach "
        "the loss scratch reaches at D = tokens-per-param x N, with bootstrap intervals; sizes beyond the runs "
        "are extrapolations and are marked.")
    p.add_argument("file", metavar="FILE", help="results JSONL of `tgrow scaling run --plans scratch,PLAN`")
    p.add_argument("--plan", default=None, help="the growth plan (default: the only non-scratch plan in FILE)")
    p.add_argument("--baseline", default="scratch", help="the plan to compare with (default: scratch)")
    p.add_argument("--at-n", type=float, nargs="+", default=None, metavar="N",
                   help="model sizes to report (default: the runs' smallest and largest N and powers of 10 up "
                        "to 1000x the largest)")
    p.add_argument("--tokens-per-param", type=float, default=20.0,
                   help="reference budget D = this x N of the scratch law (default: 20, Chinchilla's ratio)")
    p.add_argument("--bootstrap", type=int, default=100, metavar="K",
                   help="bootstrap resamples of each set of runs (default: 100; 0: no intervals)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    _add_init_grid(p)
    _add_include_early_stopped(p)
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/growth.json")
    p.set_defaults(func=run_growth)


def _fit_options(args):
    from transformer_grow.scaling.analysis import FitOptions, parse_fits
    from transformer_grow.scaling.chinchilla import ChinchillaConfig
    from transformer_grow.scaling.powerlaw import PowerLawConfig

    require(len(args.predict_n) == len(args.predict_d), f"--predict-n has {len(args.predict_n)} values and "
                                                        f"--predict-d {len(args.predict_d)}; give one D per N")
    require(args.huber_delta > 0, f"--huber-delta {args.huber_delta} must be > 0")
    require(args.drop_highest >= 0, f"--drop-highest {args.drop_highest} must be >= 0")
    grid = ChinchillaConfig if args.init_grid == "full" else ChinchillaConfig.reduced
    fits = parse_fits(args.fits) if args.fits is not None else None
    law = {"huber_delta": args.huber_delta, "objective": args.objective, "project": not args.no_projection}
    return FitOptions(chinchilla=grid(**law), power_law=PowerLawConfig(**law),
                      n_bootstrap=args.bootstrap, level=args.level, seed=args.seed, isoflop_rtol=args.isoflop_rtol,
                      leave_one_out=not args.no_loo, predict_points=tuple(zip(args.predict_n, args.predict_d)),
                      predict_flops=tuple(args.predict_c), fits=fits)


def _load_fit_data(args):
    from transformer_grow.lab.grid import load_fit_records
    from transformer_grow.scaling.data import data_from_records, load_scaling_data

    columns = {"n_col": args.n_col, "d_col": args.d_col, "c_col": args.c_col, "loss_col": args.loss_col,
               "drop_invalid": args.drop_invalid, "where": tuple(args.where), "drop_highest": args.drop_highest}
    suffix = Path(args.file).suffix.lower()
    if args.format == "csv" or (args.format == "auto" and suffix == ".csv"):
        require(args.plan is None, "--plan selects runs of a results JSONL; a CSV file has no plans")
        return load_scaling_data(args.file, fmt=args.format, **columns), []
    require(args.format == "jsonl" or suffix in (".jsonl", ".json"),
            f"cannot tell the format of {args.file!r} from its extension {suffix!r}; pass --format jsonl or csv")
    rows, notes = load_fit_records(args.file, args.plan, args.include_early_stopped)
    return data_from_records(rows, source=args.file, **columns), notes


def _check_law_falls(fit, loss_col: str) -> None:
    """Refuse a fitted L(N, D) whose loss does not fall with N or with D: its exponents and compute-optimal
    allocation (``(alpha A / beta B)^(1 / (alpha + beta))``) are meaningless, or not even numbers."""
    if fit is None:
        return
    for name, exponent, quantity in (("alpha", fit.params.alpha, "N"), ("beta", fit.params.beta, "D")):
        require(exponent > 0, f"the fitted L(N,D) has {name}={exponent:.3g}: in these runs the loss does not fall "
                              f"as {quantity} grows, so the law and its compute-optimal allocation mean nothing; check "
                              f"that {loss_col!r} holds a loss (lower is better) of the right runs, or fit "
                              "--fits single")


def run_fit(args) -> int:
    from transformer_grow.scaling.analysis import analyse
    from transformer_grow.scaling.report import fit_summary, short_summary, write_report

    options = _fit_options(args)
    if args.out is not None:
        require(not Path(args.out).is_file(), f"--out {args.out!r} is a file; give a directory")
    with warnings.catch_warnings(record=True) as caught:  # e.g. an incomplete last line: one clean line
        warnings.simplefilter("always")
        data, notes = _load_fit_data(args)
    for note in notes:
        print(f"note: {note}")
    if data.dropped:
        shown = "; ".join(data.dropped[:3]) + (f"; and {len(data.dropped) - 3} more" if len(data.dropped) > 3 else "")
        print(f"note: used {len(data)} of {len(data) + len(data.dropped)} runs; left out {len(data.dropped)}: {shown}")
    if options.n_bootstrap:
        print(f"fitting, then {options.n_bootstrap} bootstrap resamples of the requested fits...", flush=True)
    analysis = analyse(data, options)
    _check_law_falls(analysis.chinchilla, data.columns["loss"])
    for warning in caught:  # after the analysis: a refused input gets one line
        print(f"warning: {warning.message}", file=sys.stderr)
    if args.out is not None:
        summary = write_report(analysis, args.out, plots=not args.no_plots)
    else:
        summary = fit_summary(analysis)
    print(short_summary(summary))
    if args.out is not None:
        print(f"wrote {Path(args.out) / 'fit.json'}, fit.md" + (" and plots" if summary.get("plots") else ""))
    return 0


def run_growth(args) -> int:
    from transformer_grow.io import atomic_write_json
    from transformer_grow.lab.grid import load_fit_records, read_results
    from transformer_grow.scaling.chinchilla import ChinchillaConfig
    from transformer_grow.scaling.growth import (
        growth_plan_of,
        growth_speedup_vs_scale,
        report_sizes,
        savings_lines,
    )

    require(args.bootstrap >= 0, f"--bootstrap={args.bootstrap} must be >= 0")
    require(0 < args.level < 1, f"--level={args.level} must lie between 0 and 1")
    require(args.tokens_per_param > 0, f"--tokens-per-param={args.tokens_per_param} must be > 0")
    require(args.at_n is None or all(n > 0 for n in args.at_n), f"--at-n {args.at_n} must be positive sizes")
    require(args.out is None or not Path(args.out).is_file(), f"--out {args.out!r} is a file; give a directory")
    require(Path(args.file).is_file(), f"input file {args.file!r} does not exist")
    plan = growth_plan_of(read_results(args.file), args.plan, args.baseline)
    runs = {}
    for name in (args.baseline, plan):
        rows, notes = load_fit_records(args.file, name, args.include_early_stopped)
        print("".join(f"note ({name}): {note}\n" for note in notes), end="")
        runs[name] = [record for _, record in rows]
    config = ChinchillaConfig() if args.init_grid == "full" else ChinchillaConfig.reduced()
    result = growth_speedup_vs_scale(runs[args.baseline], runs[plan], config=config,
                                     n_values=args.at_n or report_sizes(runs[args.baseline] + runs[plan]),
                                     tokens_per_param=args.tokens_per_param, n_bootstrap=args.bootstrap,
                                     level=args.level, seed=args.seed)
    print(f"{plan} vs {args.baseline}: {len(runs[plan])} + {len(runs[args.baseline])} runs from {args.file}")
    print("\n".join(savings_lines(result, plan)))
    if args.out is not None:
        summary = {"plan": plan, "baseline": args.baseline, "source": args.file, **result.as_dict()}
        print(f"wrote {atomic_write_json(Path(args.out) / 'growth.json', summary)}")
    return 0


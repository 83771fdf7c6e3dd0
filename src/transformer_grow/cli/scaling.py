"""`tgrow scaling`: the scaling-law lab.

- fit FILE: fit L(N), L(D), L(C), the Chinchilla form L(N, D) (Approach 3) and IsoFLOP profiles
  (Approach 2) to our results JSONL or any CSV, with bootstrap intervals and leave-one-out validation;
- estimate: list the runs of a grid (quick, dev or full) with their size, tokens and FLOPs, and
  which are already in a results file;
- run: train the grid's missing runs into a results file (needs the trainer; not wired in yet).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer_grow.errors import ConfigError, require

GRID_MODES = ("quick", "dev", "full")


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
    _add_grid_commands(sub)


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit scaling laws to a results JSONL or a CSV",
        description="Fit L(N), L(D), L(C), L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, "
        "Approach 3: Huber loss on log-loss residuals, L-BFGS from a grid of starts) and IsoFLOP "
        "profiles (Approach 2) to FILE, with bootstrap intervals and leave-one-out validation. "
        "Prints a summary; with --out, writes fit.json, fit.md and PNG plots.",
    )
    p.add_argument("file", metavar="FILE", help="results JSONL (one run per line) or CSV with a header row")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "jsonl", "csv"),
        help="input format (default: from the extension: .jsonl/.json or .csv)",
    )
    p.add_argument(
        "--n-col", default=None, help="column holding the parameter count N (default: n_params_nonembedding)"
    )
    p.add_argument("--d-col", default=None, help="column holding the training tokens D (default: tokens)")
    p.add_argument(
        "--c-col",
        default=None,
        help="column holding the training compute C in FLOPs; without --d-col, D = C / (6 N) "
        "(default: flops when present, else C = 6 N D)",
    )
    p.add_argument("--loss-col", default=None, help="column holding the final loss (default: final_val_loss)")
    p.add_argument(
        "--drop-invalid",
        action="store_true",
        help="leave out runs with a missing, non-numeric or non-positive value instead of refusing",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="K",
        help="bootstrap resamples for the intervals (default: 200; 0 turns the bootstrap off)",
    )
    p.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    p.add_argument(
        "--huber-delta",
        type=float,
        default=1e-3,
        help="Huber delta on log-loss residuals (default: 1e-3, as Hoffmann et al.)",
    )
    p.add_argument(
        "--init-grid",
        default="full",
        choices=("full", "reduced"),
        help="L-BFGS starts: full = the paper's 4,500-start grid, reduced = 72 starts (default: full)",
    )
    p.add_argument(
        "--isoflop-rtol",
        type=float,
        default=0.1,
        help="runs whose compute is within this relative tolerance form one IsoFLOP budget (default: 0.1)",
    )
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out validation")
    p.add_argument(
        "--predict-n",
        type=float,
        nargs="+",
        default=[],
        metavar="N",
        help="predict the loss at these parameter counts (pair with --predict-d)",
    )
    p.add_argument(
        "--predict-d",
        type=float,
        nargs="+",
        default=[],
        metavar="D",
        help="... and these token counts (one per --predict-n value)",
    )
    p.add_argument(
        "--predict-c",
        type=float,
        nargs="+",
        default=[],
        metavar="C",
        help="compute budgets (FLOPs) for the compute-optimal N, D, tokens per parameter and loss "
        "(default: the largest run's compute)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="write fit.json, fit.md and plots into DIR")
    p.add_argument("--no-plots", action="store_true", help="with --out, skip the PNG plots")
    p.set_defaults(func=run_fit)


def _add_grid_commands(sub) -> None:
    for name, help_text in (
        ("estimate", "list a grid's runs with their size, tokens and FLOPs (and which are done)"),
        ("run", "train a grid's missing runs into a results JSONL (needs the trainer)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--mode", default="quick", choices=GRID_MODES, help="grid size (default: quick)")
        p.add_argument(
            "--results",
            default=None,
            metavar="FILE",
            help="results JSONL (estimate: mark finished runs; run: append to it, skipping finished runs)",
        )
        p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size for the FLOP estimate")
        p.set_defaults(func=run_estimate if name == "estimate" else run_grid_command)


def _fit_options(args):
    from transformer_grow.scaling.analysis import FitOptions
    from transformer_grow.scaling.chinchilla import ChinchillaConfig
    from transformer_grow.scaling.powerlaw import PowerLawConfig

    require(
        len(args.predict_n) == len(args.predict_d),
        f"--predict-n has {len(args.predict_n)} values and --predict-d {len(args.predict_d)}; give one D per N",
    )
    require(args.huber_delta > 0, f"--huber-delta {args.huber_delta} must be > 0")
    if args.init_grid == "full":
        chinchilla = ChinchillaConfig(huber_delta=args.huber_delta)
    else:
        chinchilla = ChinchillaConfig.reduced(huber_delta=args.huber_delta)
    return FitOptions(
        chinchilla=chinchilla,
        power_law=PowerLawConfig(huber_delta=args.huber_delta),
        n_bootstrap=args.bootstrap,
        level=args.level,
        seed=args.seed,
        isoflop_rtol=args.isoflop_rtol,
        leave_one_out=not args.no_loo,
        predict_points=tuple(zip(args.predict_n, args.predict_d)),
        predict_flops=tuple(args.predict_c),
    )


def run_fit(args) -> int:
    from transformer_grow.scaling.analysis import analyse
    from transformer_grow.scaling.data import load_scaling_data
    from transformer_grow.scaling.report import fit_summary, short_summary, write_report

    options = _fit_options(args)
    if args.out is not None:
        require(not Path(args.out).is_file(), f"--out {args.out!r} is a file; give a directory")
    data = load_scaling_data(
        args.file,
        fmt=args.format,
        n_col=args.n_col,
        d_col=args.d_col,
        c_col=args.c_col,
        loss_col=args.loss_col,
        drop_invalid=args.drop_invalid,
    )
    analysis = analyse(data, options)
    if args.out is not None:
        summary = write_report(analysis, args.out, plots=not args.no_plots)
    else:
        summary = fit_summary(analysis)
    print(short_summary(summary))
    if args.out is not None:
        print(f"wrote {Path(args.out) / 'fit.json'}, fit.md" + (" and plots" if summary.get("plots") else ""))
    return 0


def run_estimate(args) -> int:
    from transformer_grow.scaling.grid import GridSpec, finished_run_ids

    spec = GridSpec.from_mode(args.mode, vocab_size=args.vocab_size)
    done = finished_run_ids(args.results) if args.results and Path(args.results).exists() else set()
    total = 0.0
    formula = "tokens x (6 (N + d_model vocab) + 6 n_layer seq_len d_model), Kaplan et al. 2020"
    print(f"grid {spec.name}: {len(spec.runs())} runs (N ~ 12 n_layer d_model^2; FLOPs ~ {formula})")
    for run in spec.runs():
        total += run.flops_estimate
        status = "done" if run.run_id in done else "todo"
        print(
            f"  {status}  {run.run_id:28s} N~{run.n_params_estimate:.3g}  D={run.tokens:.3g}  C~{run.flops_estimate:.3g}"
        )
    print(f"total ~{total:.3g} FLOPs; {len(done & {r.run_id for r in spec.runs()})} runs done")
    return 0


def run_grid_command(args) -> int:
    raise ConfigError(
        "tgrow scaling run is not available yet: it needs the trainer, which is wired in later; "
        "from Python, call transformer_grow.scaling.grid.run_grid(spec, results_path, train_fn)"
    )

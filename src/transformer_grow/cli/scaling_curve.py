"""``tgrow scaling curve FILE``: extrapolate a learning curve (CSV or metrics.jsonl) with intervals.

The multi-power law (Luo et al. 2025), the LR-annealing law (Tissue et al. 2024) and the plain power law
(:mod:`transformer_grow.scaling.curve`); ``--reference RUN...`` pools the annealing bonus of completed runs
into a prior for a run whose decay has not begun (form ``multi_power+prior``,
:mod:`transformer_grow.scaling.anneal_prior`), ``--save-prior`` keeps that prior as JSON and ``--prior``
reuses it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from transformer_grow.errors import require


def add_curve_command(sub) -> None:
    p = sub.add_parser(
        "curve", help="extrapolate a learning curve (CSV or metrics.jsonl) to a later step, with intervals",
        description="Fit the multi-power law (Luo et al. 2025), the LR-annealing law (Tissue et al. 2024), both "
        "written with the irreducible loss as their floor, and the plain power law in steps to a learning curve and "
        "predict the loss at later steps, with prediction intervals. The learning rate of every step comes from the "
        "lr column (logged rates, interpolated) or from "
        "--schedule and its settings (a run still in progress). --fit-fraction holds the rest of the curve out to "
        "check the prediction against it. Before a decay begins (a WSD run in its stable phase) no single curve shows "
        "what the decay will pay: --reference pools the annealing bonus of completed runs into a prior (or --prior "
        "reads one kept with --save-prior), and the form multi_power+prior is fitted with it.")
    p.add_argument("file", metavar="FILE", help="CSV with a header row, or a metrics.jsonl of tgrow train")
    p.add_argument("--x-col", default="step", help="x axis column: steps (default) or another increasing count")
    p.add_argument("--loss-col", default="val_loss", help="loss column (default: val_loss; e.g. train_loss)")
    p.add_argument("--lr-col", default=None, help="learning-rate column (default: lr when present)")
    p.add_argument("--fit-fraction", type=float, default=1.0,
                   help="fit the points up to this fraction of the curve's x range, predict the rest (default: 1)")
    p.add_argument("--at", type=float, nargs="+", default=None, metavar="X",
                   help="predict at these x values (default: the end of the schedule or of the curve)")
    s = p.add_argument_group("schedule (when the file does not log every rate up to the prediction; steps axis)")
    s.add_argument("--schedule", default=None, choices=("cosine", "wsd", "constant"), help="LR schedule shape")
    s.add_argument("--total-steps", type=int, default=None, help="length of the schedule in steps")
    s.add_argument("--peak-lr", type=float, default=None, help="peak learning rate")
    s.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (default: 0)")
    s.add_argument("--min-lr-ratio", type=float, default=0.1, help="final LR / peak LR (default: 0.1)")
    s.add_argument("--decay-frac", type=float, default=0.2, help="wsd: share of the steps spent decaying (0.2)")
    a = p.add_argument_group("annealing prior (what the decay pays, from completed runs; Luo et al. 2025)")
    a.add_argument("--reference", nargs="+", default=None, metavar="FILE",
                   help="completed runs whose schedule decays (CSV or metrics.jsonl with the same --x-col, --loss-col "
                        "and a logged learning rate); their annealing bonus B / final loss is pooled into a prior. Put "
                        "them after FILE")
    a.add_argument("--prior", default=None, metavar="FILE",
                   help="read the prior from a JSON written by --save-prior instead of --reference")
    a.add_argument("--save-prior", default=None, metavar="FILE", help="with --reference, write the prior as JSON")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="residual-bootstrap refits (default: 200)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--out", default=None, metavar="DIR", help="write curve.json and curve.png into DIR")
    p.add_argument("--no-plots", action="store_true", help="with --out, skip curve.png")
    p.set_defaults(func=run_curve)


def _schedule_lrs(args):
    """Per-step learning rates of --schedule (train.schedule.LRSchedule), or None without --schedule."""
    if args.schedule is None:
        for flag in ("total_steps", "peak_lr"):
            require(getattr(args, flag) is None, f"--{flag.replace('_', '-')} describes a --schedule; give one")
        return None
    require(args.total_steps is not None and args.total_steps >= 2, "--schedule needs --total-steps (>= 2)")
    require(args.peak_lr is not None and args.peak_lr > 0, "--schedule needs --peak-lr (> 0)")
    require(args.x_col == "step", f"--schedule gives a rate per step; --x-col is {args.x_col!r}, use step")
    require(0 <= args.min_lr_ratio <= 1, f"--min-lr-ratio {args.min_lr_ratio} must lie in [0, 1]")
    require(0 < args.decay_frac <= 1, f"--decay-frac {args.decay_frac} must lie in (0, 1]")
    require(args.warmup_steps >= 0, f"--warmup-steps {args.warmup_steps} must be >= 0")
    from transformer_grow.train.schedule import LRSchedule

    decay = max(1, round(args.decay_frac * args.total_steps)) if args.schedule == "wsd" else 0
    schedule = LRSchedule(args.schedule, args.peak_lr, args.peak_lr * args.min_lr_ratio, args.warmup_steps,
                          args.total_steps, decay)
    return [schedule(i) for i in range(args.total_steps)]


def _prior_flags(args) -> None:
    """Refuse inconsistent --reference / --prior / --save-prior before anything is read."""
    require(not (args.reference and args.prior is not None),
            f"--reference and --prior {args.prior!r} both give the annealing prior; pass one of them")
    require(args.save_prior is None or args.reference,
            f"--save-prior {args.save_prior!r} keeps the prior pooled from --reference runs; give --reference")
    require(args.save_prior is None or not Path(args.save_prior).is_dir(),
            f"--save-prior {args.save_prior!r} is a directory; give a file name")


def _prior_source(args, curve):
    """``(prior, references)``: the prior read from --prior, or the --reference curves (read, not yet fitted).

    Every refusal here comes before any fitting: the main curve must have a rate per step, each reference
    must log its learning rates, a prior file must hold a multi-power prior.
    """
    from transformer_grow.scaling.anneal_prior import AnnealPrior
    from transformer_grow.scaling.curve_data import load_curve

    if not args.reference and args.prior is None:
        return None, []
    flag = "--reference" if args.reference else "--prior"
    require(curve.lrs is not None, f"{flag} needs the learning rate of every step: log an lr column or give "
                                   f"--schedule ({curve.source!r} logs no {args.lr_col or 'lr'} column)")
    if args.prior is not None:
        path = str(args.prior)
        require(Path(path).is_file(), f"--prior {path!r} does not exist")
        prior = AnnealPrior.load(path)  # its refusals name the file
        require(prior.form == "multi_power", f"--prior {path!r} was pooled from the {prior.form} law; "
                                             "tgrow scaling curve uses a multi_power prior")
        return prior, []
    references = []
    for path in args.reference:
        ref = load_curve(path, x_col=args.x_col, loss_col=args.loss_col, lr_col=args.lr_col)
        require(ref.lrs is not None, f"--reference {str(path)!r} logs no learning rate (no {args.lr_col or 'lr'} "
                                     "column with values); a reference run needs the rate of every step")
        references.append((str(path), ref))
    return None, references


def _pool_references(references):
    """The prior pooled from the --reference curves; a run that did not complete or never decays is refused
    (by :func:`fit_anneal_prior`) with its file named."""
    from transformer_grow.errors import ConfigError
    from transformer_grow.scaling.anneal_prior import fit_anneal_prior

    current = []

    def curves():
        for path, ref in references:
            current[:] = [path]
            yield ref.steps, ref.loss, ref.lrs

    try:
        return fit_anneal_prior(curves(), form="multi_power")
    except ConfigError as exc:
        raise ConfigError(f"--reference {current[0]!r}: {exc}" if current else str(exc)) from None


def run_curve(args) -> int:
    import numpy as np

    from transformer_grow.io import atomic_write_json
    from transformer_grow.scaling.anneal_prior import has_decay
    from transformer_grow.scaling.curve import fit_learning_curve
    from transformer_grow.scaling.curve_data import load_curve, rising_tail
    from transformer_grow.scaling.report import finite

    require(0 < args.fit_fraction <= 1, f"--fit-fraction {args.fit_fraction} must lie in (0, 1]")
    require(args.bootstrap >= 2, f"--bootstrap {args.bootstrap} must be >= 2")
    require(0 < args.level < 1, f"--level {args.level} must lie between 0 and 1")
    require(args.out is None or not Path(args.out).is_file(), f"--out {args.out!r} is a file; give a directory")
    _prior_flags(args)
    lrs = _schedule_lrs(args)
    with warnings.catch_warnings(record=True) as caught:  # e.g. an incomplete last line: one clean line
        warnings.simplefilter("always")
        curve = load_curve(args.file, x_col=args.x_col, loss_col=args.loss_col, lr_col=args.lr_col,
                           schedule_lrs=lrs, x_end=args.total_steps)
    x0, x1 = float(curve.x[0]), float(curve.x[-1])
    seen = curve.x <= x0 + args.fit_fraction * (x1 - x0) + 1e-9
    rising = rising_tail(curve.x[seen], curve.loss[seen], args.x_col, args.loss_col)
    end = curve.lrs.size * curve.unit if curve.lrs is not None else x1
    targets = np.array(args.at if args.at else [end], dtype=float)
    if args.at:
        require(np.all(targets > 0), f"--at {' '.join(f'{v:g}' for v in args.at)}: every x must be positive")
    else:  # the default: the end of the learning rates (e.g. logged only at steps <= 0) or of the curve
        require(end > 0, f"the default --at, the end of the {'learning rates' if curve.lrs is not None else 'curve'} "
                         f"({args.x_col}={end:g}), is not positive; give --at X with X > 0")
    if curve.lrs is not None:
        last = curve.lrs.size * curve.unit
        require(np.all(targets <= last + 1e-9), f"--at {targets.max():g} is past the last known learning rate "
                f"({last:g}); give the whole schedule with --schedule or predict within it")
    with warnings.catch_warnings(record=True) as caught_references:
        warnings.simplefilter("always")
        prior, references = _prior_source(args, curve)
    notices = ([str(w.message) for w in caught + caught_references] + list(curve.warnings)
               + ([rising] if rising else []))
    if references:  # the first fitting work: one fit per completed run
        prior = _pool_references(references)
    steps = curve.steps
    forms = {"power": fit_learning_curve(steps[seen], curve.loss[seen], n_bootstrap=args.bootstrap)}
    if curve.lrs is not None:
        for form in ("multi_power", "lr_area"):  # the two schedule-aware laws, the default (multi-power) first
            forms[form] = fit_learning_curve(steps[seen], curve.loss[seen], curve.lrs, form=form,
                                             n_bootstrap=args.bootstrap)
    prior_note = None
    if prior is not None:
        if has_decay(curve.lrs):
            forms["multi_power+prior"] = fit_learning_curve(steps[seen], curve.loss[seen], curve.lrs,
                                                            form="multi_power", prior=prior,
                                                            n_bootstrap=args.bootstrap)
        else:
            prior_note = ("note: the learning rates of this curve never decrease, so the prior has nothing to say; "
                          "give the whole schedule with --schedule for a run whose decay has not begun")
    for note in curve.notes:  # printed once every refusal is past: a refused input gets one line
        print(f"note: {note}")
    for notice in notices:
        print(f"warning: {notice}", file=sys.stderr)
    print(f"{int(seen.sum())} of {curve.x.size} points of {curve.source} fitted (columns: "
          + ", ".join(f"{k} = {v}" for k, v in curve.columns.items()) + ")")
    summary = {"source": curve.source, "columns": curve.columns, "fit_fraction": args.fit_fraction,
               "n_fitted": int(seen.sum()), "level": args.level, "notes": list(curve.notes), "warnings": notices,
               "forms": {}}
    if prior is not None:
        print(f"prior: {prior.describe()}")
        if prior_note is not None:
            print(prior_note)
        summary["anneal_prior"] = prior.to_dict()
        summary["anneal_prior_from"] = [path for path, _ in references] if references else [str(args.prior)]
    held_out = ~seen
    for name, fit in forms.items():
        entry = {**fit.as_dict(), "predictions": []}
        params = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
        print(f"{name}: {params}")
        for x in targets:
            t = max(1.0, x / curve.unit)
            lo, hi = fit.predict_interval(t, args.level)
            entry["predictions"].append({"x": float(x), "loss": fit.predict(t), "pi": [lo, hi]})
            print(f"  at {args.x_col}={x:g}: loss {fit.predict(t):.4f}, {args.level:.0%} prediction interval "
                  f"[{lo:.4f}, {hi:.4f}]")
        if held_out.any():
            errors = fit.predict(steps[held_out]) / curve.loss[held_out] - 1.0
            entry["held_out"] = {"n": int(held_out.sum()), "final_error": float(errors[-1]),
                                 "median_abs_error": float(np.median(np.abs(errors)))}
            print(f"  held-out points: final relative error {errors[-1]:+.2%}, median |error| "
                  f"{np.median(np.abs(errors)):.2%}")
        summary["forms"][name] = entry
    if args.save_prior is not None:
        print(f"wrote {atomic_write_json(Path(args.save_prior), prior.to_dict())}")
    if args.out is not None:
        out = Path(args.out)
        if not args.no_plots:
            from transformer_grow.scaling.plots import write_curve_plot

            summary["plot"] = write_curve_plot(curve, forms, seen, args.level, out / "curve.png").name
        print(f"wrote {atomic_write_json(out / 'curve.json', finite(summary))}")
    return 0

"""A learning curve from a CSV or a ``metrics.jsonl``, for ``tgrow scaling curve``.

Columns are chosen by name: the x axis (``x_col``, default ``step``; any increasing count, e.g.
``tokens``), the loss (``loss_col``, default ``val_loss``) and, optionally, the learning rate
(``lr_col``, default ``lr`` when present). Rows without a finite loss (a metrics record without an
evaluation, a NaN) or without a positive finite x are left out and counted by reason (``CurveData.notes``
says how many of how many rows were used); a loss that is not positive is refused, and so is an x value
that repeats. Rows in another order are sorted by x, with a note. A loss that keeps rising at the end of
the curve is beyond every law here (they only fall): :func:`rising_tail` says so.

The LR-annealing law needs the learning rate of every step. When x is a step count up to
``MAX_GRID`` it is used as is; a larger axis (tokens) is cut into ``MAX_GRID`` equal cells and the
curve is fitted in cell units. The rate of every cell is read off the logged rates (linear
interpolation), so predictions are possible up to the last logged rate; ``schedule_lrs`` (the whole
schedule, rate per unit of x) extends them to the end of a run still in progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transformer_grow.errors import ConfigError, require
from transformer_grow.scaling.data import _read_csv, read_jsonl_records

MAX_GRID = 100_000
MAX_SPREAD = 1e6  # every loss within this factor of the curve's median loss
MAX_LR = 1e3  # the largest learning rate read from a file
RISE_FLOOR = 0.02  # a rise at the end below 2% of the loss is not warned about (rising_tail)


@dataclass(frozen=True)
class CurveData:
    x: np.ndarray  # the x column, as logged
    loss: np.ndarray
    unit: float  # x units per fitting step: steps = x / unit
    lrs: np.ndarray | None  # learning rate of fitting steps 1..len(lrs)
    columns: dict[str, str]
    source: str
    notes: tuple[str, ...] = ()  # rows left out and why, rows sorted
    warnings: tuple[str, ...] = ()  # e.g. a curve whose last rows have a non-finite loss

    @property
    def steps(self) -> np.ndarray:
        return self.x / self.unit

    def to_steps(self, x) -> np.ndarray:
        return np.asarray(x, dtype=float) / self.unit


def _float(value) -> float:
    if isinstance(value, bool):  # JSON true/false is not a number
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_curve(path: str | Path, *, x_col: str = "step", loss_col: str = "val_loss", lr_col: str | None = None,
               schedule_lrs: np.ndarray | None = None, x_end: float | None = None) -> CurveData:
    """Read a learning curve; see the module docstring. ``x_end``: the schedule's length in x units."""
    path = Path(path)
    require(path.is_file(), f"input file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        header, rows = _read_csv(path)
        records = [record for _, record in rows]
    else:
        records = [record for _, record in read_jsonl_records(path)]
        header = sorted({key for record in records for key in record})
    available = ", ".join(header) or "(none)"
    for option, name in (("--x-col", x_col), ("--loss-col", loss_col)):
        require(name in header, f"{option} {name!r} is not a column of {path}; columns: {available}")
    if lr_col is None and "lr" in header:
        lr_col = "lr"
    require(lr_col is None or lr_col in header, f"--lr-col {lr_col!r} is not a column of {path}; columns: {available}")
    xs, losses, lr_points = [], [], []
    left_out: dict[str, int] = {}
    nonfinite_x = []  # x of rows whose loss is NaN or infinite
    for record in records:
        x = _float(record.get(x_col))
        if lr_col is not None and math.isfinite(x) and math.isfinite(_float(record.get(lr_col))):
            lr_points.append((x, _float(record.get(lr_col))))
        raw = record.get(loss_col)
        loss = _float(raw)
        reason = _row_problem(x, raw, loss, x_col, loss_col)
        if reason is not None:
            left_out[reason] = left_out.get(reason, 0) + 1
            if "non-finite" in reason and math.isfinite(x):
                nonfinite_x.append(x)
            continue
        require(loss > 0, f"{path}: {loss_col}={raw!r} at {x_col}={x:g} is not positive")
        xs.append(x)
        losses.append(loss)
    x, loss = np.array(xs), np.array(losses)
    notes, warns = [], []
    if left_out:
        notes.append(f"used {x.size} of {len(records)} rows of {path}; {len(records) - x.size} left out: "
                     + ", ".join(f"{count} {reason}" for reason, count in left_out.items()))
    if np.any(np.diff(x) < 0):
        notes.append(f"the rows of {path} are not in {x_col} order; sorted by {x_col}")
    order = np.argsort(x, kind="stable")
    x, loss = x[order], loss[order]
    after = [value for value in nonfinite_x if x.size and value > x[-1]]
    if after:
        rows = "1 row" if len(after) == 1 else f"{len(after)} rows"
        warns.append(f"{rows} after the last finite {loss_col} (from {x_col}={min(after):g}) "
                     f"{'has' if len(after) == 1 else 'have'} a non-finite {loss_col}: the run may have diverged; the "
                     f"curve is fitted up to {x_col}={x[-1]:g}")
    require(x.size >= 5, f"{path}: {x.size} points with a finite {loss_col}; need at least 5")
    median = float(np.median(loss))
    far = np.abs(np.log(loss) - math.log(median))
    worst = int(np.argmax(far))
    if far[worst] > math.log(MAX_SPREAD):
        raise ConfigError(f"{path}: {loss_col}={loss[worst]:g} at {x_col}={x[worst]:g} is more than {MAX_SPREAD:g} "
                          f"times {'above' if loss[worst] > median else 'below'} the median {loss_col} "
                          f"({median:.4g}); a learning curve stays within that factor of it")
    repeats = x[1:][np.diff(x) == 0]
    require(repeats.size == 0, f"{path}: {x_col}={repeats[0] if repeats.size else 0:g} appears more than once "
                               f"({repeats.size} repeated values); one {loss_col} per {x_col} expected")
    end = max(float(x[-1]), x_end or 0.0, max((p[0] for p in lr_points), default=0.0))
    unit = 1.0 if end <= MAX_GRID else end / MAX_GRID
    columns = {"x": x_col, "loss": loss_col}
    lrs = None
    if schedule_lrs is not None:
        lrs = np.asarray(schedule_lrs, dtype=float)
        columns["lr"] = "schedule given on the command line"
    elif lr_col is not None and len(lr_points) >= 2:
        bad = next(((at, rate) for at, rate in lr_points if not 0 <= rate <= MAX_LR), None)
        require(bad is None, f"{path}: {lr_col}={bad[1] if bad else 0:g} at {x_col}={bad[0] if bad else 0:g} is not a "
                             f"learning rate; allowed: 0 to {MAX_LR:g}")
        px, py = np.array(lr_points).T
        order = np.argsort(px, kind="stable")
        n_cells = int(math.floor(px.max() / unit))
        lrs = np.interp((np.arange(1, n_cells + 1) - 0.5) * unit, px[order], py[order])
        columns["lr"] = lr_col
    require(lrs is None or np.all(np.isfinite(lrs)) and np.all(lrs >= 0), "learning rates must be finite and >= 0")
    return CurveData(x, loss, unit, lrs, columns, str(path), tuple(notes), tuple(warns))


def _row_problem(x: float, raw, loss: float, x_col: str, loss_col: str) -> str | None:
    """Why a row is left out of the curve (the words counted in the note), or None."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return f"without a {loss_col}"
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)) or not _is_number(raw):
        return f"with a non-numeric {loss_col}"
    if not math.isfinite(loss):
        return f"with a non-finite {loss_col}"
    if not math.isfinite(x):
        return f"without a finite {x_col}"
    if x <= 0:
        return f"at {x_col} <= 0 (before training: no power law there)"
    return None


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def rising_tail(x: np.ndarray, loss: np.ndarray, x_col: str = "step", loss_col: str = "loss") -> str | None:
    """A warning when the loss rises at the end of the curve beyond its noise, else None.

    Levels are medians of ``k = max(5, n / 10)`` consecutive points (robust to spikes); the rise is the last
    level over the lowest. It counts when it exceeds 2% of the loss, six standard errors of a level (the noise
    from the point-to-point log differences, ``1.4826 MAD / sqrt 2``) and, unless the curve ends above where
    it began, 1.5 times the largest rise between levels before the last ``k`` points (a curve whose noise
    wanders, autocorrelated, rises that much anywhere). Every law of :mod:`.curve` only falls, so a
    prediction past such a curve extrapolates against what the data shows. Tuned on falling power-law
    curves of 5 to 1000 points with 0.3-3% log-normal noise: no warning on any with independent noise, on
    96% or more with lag-1 autocorrelation 0.8, and on 86% or more at 0.95 (3% noise wanders that far); a
    warning on every 400-point curve whose last fifth rises 5% with 1% noise.
    """
    y = np.log(np.asarray(loss, dtype=float))
    k = max(5, y.size // 10)
    if y.size < k + 1:
        return None
    levels = np.median(np.lib.stride_tricks.sliding_window_view(y, k), axis=1)
    best = int(np.argmin(levels))
    diffs = np.diff(y)
    sigma = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / math.sqrt(2.0)
    noise = max(math.log1p(RISE_FLOOR), 6.0 * 1.2533 * sigma / math.sqrt(k))
    rise = float(levels[-1] - levels[best])
    if rise <= noise:
        return None
    head = levels[: max(levels.size - k, 0)]
    wander = float(np.max(head - np.minimum.accumulate(head))) if head.size else 0.0
    if levels[-1] - levels[0] <= noise and rise <= 1.5 * wander:
        return None
    return (f"{loss_col} rises at the end of the curve: the median of the last {k} points is "
            f"{math.exp(levels[-1]):.4g}, {math.expm1(rise):.0%} above the lowest ({math.exp(levels[best]):.4g} near "
            f"{x_col}={float(x[best + k // 2]):g}); the laws only fall, so predictions past the data extrapolate "
            "against it")

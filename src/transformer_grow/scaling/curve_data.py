"""A learning curve from a CSV or a ``metrics.jsonl``, for ``tgrow scaling curve``.

Columns are chosen by name: the x axis (``x_col``, default ``step``; any increasing count, e.g.
``tokens``), the loss (``loss_col``, default ``val_loss``) and, optionally, the learning rate
(``lr_col``, default ``lr`` when present). Rows without a finite loss (a metrics record without an
evaluation) are skipped; a loss that is not positive is refused.

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

from transformer_grow.errors import require
from transformer_grow.scaling.data import _read_csv, read_jsonl_records

MAX_GRID = 100_000


@dataclass(frozen=True)
class CurveData:
    x: np.ndarray  # the x column, as logged
    loss: np.ndarray
    unit: float  # x units per fitting step: steps = x / unit
    lrs: np.ndarray | None  # learning rate of fitting steps 1..len(lrs)
    columns: dict[str, str]
    source: str

    @property
    def steps(self) -> np.ndarray:
        return self.x / self.unit

    def to_steps(self, x) -> np.ndarray:
        return np.asarray(x, dtype=float) / self.unit


def _float(value) -> float:
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
    for record in records:
        x = _float(record.get(x_col))
        if lr_col is not None and math.isfinite(x) and math.isfinite(_float(record.get(lr_col))):
            lr_points.append((x, _float(record.get(lr_col))))
        loss = _float(record.get(loss_col))
        if not (math.isfinite(x) and math.isfinite(loss)):
            continue
        require(loss > 0, f"{path}: {loss_col}={record.get(loss_col)!r} at {x_col}={x:g} is not positive")
        xs.append(x)
        losses.append(loss)
    x, loss = np.array(xs), np.array(losses)
    order = np.argsort(x, kind="stable")
    x, loss = x[order], loss[order]
    require(x.size >= 5, f"{path}: {x.size} points with a finite {loss_col}; need at least 5")
    require(np.all(np.diff(x) > 0), f"{path}: {x_col} values repeat; one loss per {x_col} expected")
    end = max(float(x[-1]), x_end or 0.0, max((p[0] for p in lr_points), default=0.0))
    unit = 1.0 if end <= MAX_GRID else end / MAX_GRID
    columns = {"x": x_col, "loss": loss_col}
    lrs = None
    if schedule_lrs is not None:
        lrs = np.asarray(schedule_lrs, dtype=float)
        columns["lr"] = "schedule given on the command line"
    elif lr_col is not None and len(lr_points) >= 2:
        px, py = np.array(lr_points).T
        order = np.argsort(px, kind="stable")
        n_cells = int(math.floor(px.max() / unit))
        lrs = np.interp((np.arange(1, n_cells + 1) - 0.5) * unit, px[order], py[order])
        columns["lr"] = lr_col
    require(lrs is None or np.all(np.isfinite(lrs)) and np.all(lrs >= 0), "learning rates must be finite and >= 0")
    return CurveData(x, loss, unit, lrs, columns, str(path))

"""Scaling data: our results JSONL or any CSV -> validated arrays of N, D, C and loss.

Results JSONL: one JSON object per line, one line per run, with at least ``n_params_nonembedding``,
``n_params``, ``tokens``, ``flops`` and ``final_val_loss`` (optionally ``val_curve``, ``wall_seconds``,
``config``, ``plan``, ``run_id``). A last line without its newline that does not parse is a run being
written when the file was read (or a crash mid-write): it is ignored. Any other bad line is an error.

CSV: a header row, then one row per run. Columns are chosen by name, the same way for both formats:

- loss: ``loss_col`` (default ``final_val_loss``);
- N, D, C: two named columns are enough: the third is derived with ``C = 6 N D`` (Kaplan et al. 2020,
  eq. 2.1, forward and backward pass). With fewer than two of ``n_col``, ``d_col``, ``c_col`` given, the
  defaults fill in: N from ``n_params_nonembedding``, D from ``tokens`` (unless ``c_col`` was given),
  C from ``flops``.

Then, in this order: ``where`` conditions select rows (:mod:`.rowfilter`); every value must be a positive
finite number, a bad value is refused with its line and column (or, with ``drop_invalid``, its run is
left out and counted); ``drop_highest`` leaves out the K highest-loss runs (diverged or broken runs).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import read_text_strict

DEFAULT_N_COL = "n_params_nonembedding"
DEFAULT_D_COL = "tokens"
DEFAULT_C_COL = "flops"
DEFAULT_LOSS_COL = "final_val_loss"
MIN_POINTS = 6  # the Chinchilla form has five parameters
FORMATS = ("auto", "jsonl", "csv")


@dataclass(frozen=True)
class ScalingData:
    """One entry per run: parameters N, tokens D, compute C and final loss, all positive and finite."""

    n_params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    labels: list[str]  # run_id when the record has one, else "line K" / "row K"
    source: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # quantity -> column or formula used
    dropped: list[str] = field(default_factory=list)  # runs left out (drop_invalid, drop_highest), with the reason
    filters: list[str] = field(default_factory=list)  # the where conditions applied, with the rows they kept

    def __len__(self) -> int:
        return int(self.loss.shape[0])


def read_jsonl_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every complete line of a results JSONL file; see the module docstring."""
    path = Path(path)
    require(path.is_file(), f"results file {str(path)!r} does not exist")
    text = read_text_strict(path, "results file")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # last line and no newline after it: a write in progress
                warnings.warn(f"{path}: ignoring the incomplete last line {number}", stacklevel=2)
                continue
            raise ConfigError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        require(isinstance(record, dict), f"{path}: line {number} is not a JSON object")
        records.append((number, record))
    return records


def _read_csv(path: Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    with StringIO(read_text_strict(path, "CSV file"), newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [(f"row {i}", row) for i, row in enumerate(reader, start=2)]
    require(header, f"{path}: the CSV file has no header row")
    return header, rows


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_scaling_data(
    path: str | Path,
    *,
    fmt: str = "auto",
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    drop_invalid: bool = False,
    min_points: int = MIN_POINTS,
    where: tuple[str, ...] = (),
    drop_highest: int = 0,
) -> ScalingData:
    """Read ``path`` (JSONL or CSV) into :class:`ScalingData`; see the module docstring for columns."""
    choice("format", fmt, FORMATS)
    path = Path(path)
    require(path.is_file(), f"input file {str(path)!r} does not exist")
    if fmt == "auto":
        suffix = path.suffix.lower()
        require(
            suffix in (".jsonl", ".json", ".csv"),
            f"cannot tell the format of {str(path)!r} from its extension {suffix!r}; pass --format jsonl or csv",
        )
        fmt = "csv" if suffix == ".csv" else "jsonl"
    if fmt == "csv":
        header, rows = _read_csv(path)
    else:
        rows = [(f"line {number}", record) for number, record in read_jsonl_records(path)]
        header = sorted({key for _, record in rows for key in record})
    return data_from_records(
        rows,
        header,
        source=str(path),
        n_col=n_col,
        d_col=d_col,
        c_col=c_col,
        loss_col=loss_col,
        drop_invalid=drop_invalid,
        min_points=min_points,
        where=where,
        drop_highest=drop_highest,
    )


def _choose_columns(header: list[str], source: str, n_col, d_col, c_col, loss_col) -> dict[str, str]:
    """Quantity -> column for loss and two or three of N, D, C (see the module docstring)."""
    available = ", ".join(header) if header else "(none)"
    for option, name in (("--n-col", n_col), ("--d-col", d_col), ("--c-col", c_col), ("--loss-col", loss_col)):
        require(name is None or name in header, f"{option} {name!r} is not a column of {source}; columns: {available}")
    loss_name = loss_col or (DEFAULT_LOSS_COL if DEFAULT_LOSS_COL in header else None)
    require(loss_name is not None,
            f"{source} has no column {DEFAULT_LOSS_COL!r}; name the loss column with --loss-col ({available})")
    names = {q: name for q, name in (("N", n_col), ("D", d_col), ("C", c_col)) if name is not None}
    if len(names) < 2:
        defaults = [("N", DEFAULT_N_COL), ("D", None if c_col is not None else DEFAULT_D_COL), ("C", DEFAULT_C_COL)]
        for quantity, default in defaults:
            if quantity not in names and default in header:
                names[quantity] = default
    require(len(names) >= 2,
            f"{source} names only {', '.join(f'{q} ({c})' for q, c in names.items()) or 'none'} of N, D, C; give two "
            f"of --n-col, --d-col, --c-col (the third follows from C = 6 N D; columns: {available})")
    return {"loss": loss_name, **names}


def _apply_filters(rows, header: list[str], where: tuple[str, ...], source: str):
    """Rows matching every ``where`` expression, and a line per expression saying how many rows it kept."""
    from transformer_grow.scaling.rowfilter import parse_where

    notes = []
    for text in where:
        conditions = parse_where(text, header)
        before = len(rows)
        rows = [(label, record) for label, record in rows if all(c.matches(record) for c in conditions)]
        notes.append(f"{' and '.join(map(str, conditions))}: kept {len(rows)} of {before} rows")
        require(rows, f"{source}: --where {text!r} leaves no rows")
    return rows, notes


def data_from_records(
    rows: list[tuple[str, dict[str, Any]]],
    header: list[str] | None = None,
    *,
    source: str = "records",
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    drop_invalid: bool = False,
    min_points: int = MIN_POINTS,
    where: tuple[str, ...] = (),
    drop_highest: int = 0,
) -> ScalingData:
    """Build :class:`ScalingData` from ``(label, record)`` pairs (records are dicts of column -> value)."""
    if header is None:
        header = sorted({key for _, record in rows for key in record})
    require(isinstance(drop_highest, int) and drop_highest >= 0,
            f"drop_highest={drop_highest!r} must be an integer >= 0")
    columns = _choose_columns(header, source, n_col, d_col, c_col, loss_col)
    rows, filters = _apply_filters(rows, header, tuple(where), source)
    wanted = list(columns.items())

    values: dict[str, list[float]] = {q: [] for q, _ in wanted}
    labels, dropped = [], []
    for label, record in rows:
        run_id = record.get("run_id")
        if isinstance(run_id, str) and run_id:
            label = run_id
        parsed = {}
        problem = None
        for quantity, name in wanted:
            raw = record.get(name)
            value = _number(raw)
            if not (math.isfinite(value) and value > 0):
                problem = f"{label}: {name}={raw!r} is not a positive finite number"
                break
            parsed[quantity] = value
        if problem:
            if not drop_invalid:
                raise ConfigError(f"{source}: {problem} (pass --drop-invalid to leave such runs out)")
            dropped.append(problem)
            continue
        labels.append(label)
        for quantity, value in parsed.items():
            values[quantity].append(value)

    arrays = {q: np.array(v) for q, v in values.items()}
    if drop_highest:
        require(drop_highest <= len(labels) - min_points,
                f"--drop-highest {drop_highest} would leave {len(labels) - drop_highest} runs; the fit needs at "
                f"least {min_points}")
        order = np.argsort(arrays["loss"], kind="stable")
        keep, gone = np.sort(order[:-drop_highest]), order[-drop_highest:]
        dropped += [f"{labels[i]}: one of the {drop_highest} highest losses ({arrays['loss'][i]:.4g}), --drop-highest"
                    for i in gone]
        arrays = {q: v[keep] for q, v in arrays.items()}
        labels = [labels[i] for i in keep]
    n_points = len(labels)
    require(
        n_points >= min_points,
        f"{source}: {n_points} usable runs; the fit needs at least {min_points}",
    )
    used = dict(columns)
    if "N" not in arrays:
        arrays["N"] = arrays["C"] / (6.0 * arrays["D"])
        used["N"] = f"{columns['C']} / (6 D)"
    if "D" not in arrays:
        arrays["D"] = arrays["C"] / (6.0 * arrays["N"])
        used["D"] = f"{columns['C']} / (6 N)"
    if "C" not in arrays:
        arrays["C"] = 6.0 * arrays["N"] * arrays["D"]
        used["C"] = "6 N D"
    n_params, tokens, flops, loss = arrays["N"], arrays["D"], arrays["C"], arrays["loss"]
    for quantity, array in (("N", n_params), ("D", tokens)):
        distinct = np.unique(array).size
        require(
            distinct >= 2,
            f"{source}: all runs have the same {quantity} ({array[0]:.4g}); need at least 2 values",
        )
    order = ("N", "loss", "D", "C")
    used = {q: used[q] for q in order}
    return ScalingData(n_params, tokens, flops, loss, labels, source, used, dropped, filters)

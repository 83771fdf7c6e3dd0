"""Scaling data: our results JSONL or any CSV -> validated arrays of N, D, C and loss.

Results JSONL: one JSON object per line, one line per run, with at least ``n_params_nonembedding``,
``n_params``, ``tokens``, ``flops`` and ``final_val_loss`` (optionally ``val_curve``, ``wall_seconds``,
``config``, ``plan``, ``run_id``). A last line without its newline that does not parse is a run being
written when the file was read (or a crash mid-write): it is ignored. Any other bad line is an error.

CSV: a header row, then one row per run. Columns are chosen by name, the same way for both formats:

- N: ``n_col`` (default ``n_params_nonembedding``), loss: ``loss_col`` (default ``final_val_loss``);
- D: ``d_col``, or else D = C / (6 N) from ``c_col``, or else the ``tokens`` column;
- C: ``c_col``, or else the ``flops`` column when present, or else C = 6 N D.

Every value must be a positive finite number; a bad value is refused with its line and column
(or, with ``drop_invalid``, its run is left out and counted).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transformer_grow.errors import ConfigError, choice, require

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
    dropped: list[str] = field(default_factory=list)  # runs left out by drop_invalid, with the reason

    def __len__(self) -> int:
        return int(self.loss.shape[0])


def read_jsonl_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every complete line of a results JSONL file; see the module docstring."""
    path = Path(path)
    require(path.is_file(), f"results file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
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
    with open(path, newline="", encoding="utf-8") as f:
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
    )


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
) -> ScalingData:
    """Build :class:`ScalingData` from ``(label, record)`` pairs (records are dicts of column -> value)."""
    if header is None:
        header = sorted({key for _, record in rows for key in record})
    available = ", ".join(header) if header else "(none)"

    def column(option: str, name: str | None, default: str | None) -> str | None:
        if name is not None:
            require(name in header, f"{option} {name!r} is not a column of {source}; columns: {available}")
            return name
        return default if default in header else None

    n_name = column("--n-col", n_col, DEFAULT_N_COL)
    loss_name = column("--loss-col", loss_col, DEFAULT_LOSS_COL)
    d_name = column("--d-col", d_col, None if c_col is not None else DEFAULT_D_COL)
    c_name = column("--c-col", c_col, DEFAULT_C_COL)
    require(
        n_name is not None,
        f"{source} has no column {DEFAULT_N_COL!r}; name the N column with --n-col ({available})",
    )
    require(
        loss_name is not None,
        f"{source} has no column {DEFAULT_LOSS_COL!r}; name the loss column with --loss-col ({available})",
    )
    require(
        d_name is not None or c_name is not None,
        f"{source} has no column {DEFAULT_D_COL!r} or {DEFAULT_C_COL!r}; name the tokens column with --d-col "
        f"or the compute column with --c-col ({available})",
    )
    wanted = [("N", n_name), ("loss", loss_name)] + [(q, c) for q, c in (("D", d_name), ("C", c_name)) if c]

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

    n_points = len(labels)
    require(
        n_points >= min_points,
        f"{source}: {n_points} usable runs; the fit needs at least {min_points}",
    )
    n_params, loss = np.array(values["N"]), np.array(values["loss"])
    columns = {"N": n_name, "loss": loss_name}
    if d_name:
        tokens = np.array(values["D"])
        columns["D"] = d_name
    else:
        tokens = np.array(values["C"]) / (6.0 * n_params)
        columns["D"] = f"{c_name} / (6 N)"
    if c_name:
        flops = np.array(values["C"])
        columns["C"] = c_name
    else:
        flops = 6.0 * n_params * tokens
        columns["C"] = "6 N D"
    for quantity, array in (("N", n_params), ("D", tokens)):
        distinct = np.unique(array).size
        require(
            distinct >= 2,
            f"{source}: all runs have the same {quantity} ({array[0]:.4g}); need at least 2 values",
        )
    return ScalingData(n_params, tokens, flops, loss, labels, source, columns, dropped)

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
finite number in ``RANGES``, a bad value is refused with its line and column (or, with ``drop_invalid``, its run is
left out and counted); ``drop_highest`` leaves out the K highest-loss runs (diverged or broken runs).

Refused as ambiguous: a CSV header naming a column twice, and one column named for two quantities. When
N, D and C all come from columns, C must agree with 6 N D: the lab counts ``6 N`` per token for the
weights plus the output head (``6 d_model vocab``) and attention (``6 n_layer seq_len d_attn``;
``GPT.flops_per_token``), so ``C / (6 N D)`` is above 1 for a dense model (1.7 for the quick grid, 6.7
for the dev grid's smallest model), and below 1 for a growth run (its small stages are cheaper per
token) or an MoE (N counts every expert). A row outside ``C_RATIO_RANGE`` (a results record with its
model ``config``: up to 1.5 times that model's own overhead, and growth and MoE lower) is refused with
its ratio, and so are two runs of the same N whose ratios differ by more than ``SAME_MODEL_SPREAD``
(one model costs the same FLOPs per token whatever its budget).
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
C_RATIO_RANGE = (0.1, 8.0)  # C / (6 N D) allowed without a model config (module docstring)
SAME_MODEL_SPREAD = 2.0  # largest ratio / smallest ratio among runs of one N
# Values a fit can take without overflowing N^-alpha: N, D and C are counts (or counts in millions or billions).
RANGES = {"count": (1e-3, 1e40), "loss": (1e-6, 1e6)}


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
    text = read_text_strict(path, "results file").removeprefix("\ufeff")  # a byte-order mark
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
    """Header (names stripped of spaces) and ``("row K", record)`` pairs; a name used twice is refused."""
    text = read_text_strict(path, "CSV file").removeprefix("\ufeff")  # a byte-order mark
    reader = csv.DictReader(StringIO(text, newline=""))
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        require(header, f"{path}: the CSV file has no header row")
        for i, name in enumerate(header):
            if name and name in header[:i]:
                raise ConfigError(f"{path}: the header names column {name!r} twice (columns "
                                  f"{header.index(name) + 1} and {i + 1}); every column name must be unique")
        reader.fieldnames = header
        rows = []
        for record in reader:
            extra = [value for value in record.pop(None, None) or [] if value.strip()]
            require(not extra, f"{path}: row {reader.line_num} has {len(header) + len(extra)} fields; the header "
                               f"names {len(header)} columns")
            rows.append((f"row {reader.line_num}", record))
    except csv.Error as e:
        raise ConfigError(f"{path}: not a readable CSV file (line {reader.line_num}: {e})") from None
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
    chosen = {"loss": loss_name, **names}
    given = {"loss": loss_col, "N": n_col, "D": d_col, "C": c_col}
    seen: dict[str, str] = {}
    for quantity, name in chosen.items():
        role = (f"--{quantity.lower()}-col" if given[quantity] is not None else f"the default {quantity} column")
        require(name not in seen, f"{seen.get(name)} and {role} both name column {name!r} of {source}; the loss, N, "
                                  "D and C each need a column of their own")
        seen[name] = role
    return chosen


def _ratio_bounds(record: dict[str, Any], n_params: float) -> tuple[float, float]:
    """The C / (6 N D) a consistent run can have: ``C_RATIO_RANGE``, widened by a results record's model config
    (its output head and attention overhead; MoE and growth runs lower); see the module docstring."""
    lo, hi = C_RATIO_RANGE
    config = record.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return lo, hi
    try:
        d_model, vocab, layers, seq = (int(model[k]) for k in ("d_model", "vocab_size", "n_layer", "seq_len"))
        heads = int(model.get("n_head") or 1)
        d_attn = int(model.get("head_dim") or d_model // heads) * heads
        experts, top_k = int(model.get("n_expert") or 0), int(model.get("moe_top_k") or 1)
        overhead = 1.0 + (d_model * vocab + layers * seq * d_attn) / n_params
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return lo, hi
    if model.get("share", "none") != "none":  # a shared block is counted once in N, once per use in C
        overhead *= max(layers, 1)
    if experts > 0:  # N counts every expert, C the ones a token goes through
        lo *= min(1.0, max(top_k, 1) / experts)
    if record.get("plan") not in (None, "scratch"):  # growth: its small stages cost less per token
        lo /= 5.0
    return lo, max(hi, 1.5 * overhead)


def _ratio_text(log_ratio: float) -> str:
    return f"{math.exp(log_ratio):.3g}" if abs(log_ratio) < 700 else f"1e{log_ratio / math.log(10):+.0f}"


def _log_ratio(values: dict[str, float]) -> float:
    """log(C / (6 N D)), without overflowing."""
    return math.log(values["C"]) - math.log(6.0) - math.log(values["N"]) - math.log(values["D"])


def _flops_problem(label: str, record: dict[str, Any], values: dict[str, float], c_name: str) -> str | None:
    """Why this run's C disagrees with 6 N D (a sentence naming the run and the ratio), or None."""
    log_ratio = _log_ratio(values)
    lo, hi = _ratio_bounds(record, values["N"])
    if math.log(lo) <= log_ratio <= math.log(hi):
        return None
    return (f"{label}: C/(6ND) = {_ratio_text(log_ratio)} ({c_name}={values['C']:.4g}, N={values['N']:.4g}, "
            f"D={values['D']:.4g}); a compute column counts 6 FLOPs per parameter and token plus attention and the "
            f"output head, so C/(6ND) should lie in [{lo:.3g}, {hi:.3g}]: check the columns, or give only two of "
            "--n-col, --d-col, --c-col and the third is derived")


def _check_same_model(arrays: dict[str, np.ndarray], labels: list[str], c_name: str, source: str) -> None:
    """Runs of one N (one model) cost the same FLOPs per token at any D: their C / (6 N D) must agree."""
    ratios = np.exp(np.log(arrays["C"]) - np.log(6.0) - np.log(arrays["N"]) - np.log(arrays["D"]))
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(arrays["N"]):
        groups.setdefault(f"{n:.6g}", []).append(i)
    for members in groups.values():
        low = min(members, key=lambda i: ratios[i])
        high = max(members, key=lambda i: ratios[i])
        require(ratios[high] <= SAME_MODEL_SPREAD * ratios[low],
                f"{source}: {labels[low]} and {labels[high]} have the same N ({arrays['N'][low]:.4g}) but C/(6ND) = "
                f"{ratios[low]:.3g} and {ratios[high]:.3g}; one model costs the same FLOPs per token at any D, so "
                f"{c_name!r} does not count their compute (check the columns, or give only two of --n-col, --d-col, "
                "--c-col and the third is derived)")


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
    for place, record in rows:
        label = place
        run_id = record.get("run_id")
        if isinstance(run_id, str) and run_id:
            label = run_id
        where = place if label == place else f"{place} ({label})"
        parsed = {}
        problem = None
        for quantity, name in wanted:
            raw = record.get(name)
            value = _number(raw)
            if not (math.isfinite(value) and value > 0):
                problem = f"{where}: {name}={raw!r} is not a positive finite number"
                break
            low, high = RANGES.get(quantity, RANGES["count"])
            if not low <= value <= high:
                problem = f"{where}: {name}={raw!r} is out of range for {quantity} (allowed: {low:g} to {high:g})"
                break
            parsed[quantity] = value
        if problem is None and len(parsed) == 4:  # N, D and C all from columns: C must agree with 6 N D
            problem = _flops_problem(where, record, parsed, columns["C"])
        if problem:
            if not drop_invalid:
                raise ConfigError(f"{source}: {problem} (pass --drop-invalid to leave such runs out)")
            dropped.append(problem)
            continue
        labels.append(label)
        for quantity, value in parsed.items():
            values[quantity].append(value)

    arrays = {q: np.array(v) for q, v in values.items()}
    if len(wanted) == 4:
        _check_same_model(arrays, labels, columns["C"], source)
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
    low, high = RANGES["count"]
    for quantity in ("N", "D", "C"):
        bad = np.flatnonzero(~((arrays[quantity] >= low) & (arrays[quantity] <= high)))
        if bad.size:
            value = arrays[quantity][bad[0]]
            raise ConfigError(f"{source}: {labels[bad[0]]}: {quantity} = {used[quantity]} = {value:g} is out of range "
                              f"(allowed: {low:g} to {high:g})")
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

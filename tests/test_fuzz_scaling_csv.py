"""Hostile CSV files for `tgrow scaling curve` and `tgrow scaling fit` (issue 22, item 6).

Each case starts from a valid file (a falling learning curve; a grid of runs with C = 6 N D) and applies one
mutation by turn plus others at random: columns in another order, a column named twice, NaN/inf/empty/text
cells, rows out of order, huge, tiny and negative values, a byte-order mark, CRLF line ends, spaces, rows
with missing or extra fields, a reversed (rising) curve. Every case must end in exit 0 with finite results
(any warning one line each) or exit 2 with one line, and never in a traceback or a numpy RuntimeWarning.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from reliability_helpers import tgrow

MUTATIONS = ("shuffle_columns", "duplicate_header", "nan", "inf", "empty", "text", "unsorted", "huge", "tiny",
             "negative", "bom", "crlf", "spaces", "short_row", "extra_field", "reversed")
CELLS = {"nan": ("nan", "NaN", "-nan"), "inf": ("inf", "-inf", "1e400"), "empty": ("", " "),
         "text": ("abc", "0x10", "True", "1,5"), "huge": ("1e308", "1e200", "9e99"), "tiny": ("1e-300", "0", "5e-324"),
         "negative": ("-5", "-1e30", "-0")}
CASES = 24  # per command; about 10 s for both on a shared CPU
NOT_FINITE = re.compile(r"(?<![\w'])-?(nan|inf)\b", re.IGNORECASE)


def _mutations(rng: random.Random, case: int) -> set[str]:
    return {MUTATIONS[case % len(MUTATIONS)]} | {m for m in MUTATIONS if rng.random() < 0.12}


def _write(path, header: list[str], rows: list[list[str]], mutations: set[str], rng: random.Random) -> None:
    header, rows = list(header), [list(r) for r in rows]
    if "shuffle_columns" in mutations:
        order = list(range(len(header)))
        rng.shuffle(order)
        header, rows = [header[i] for i in order], [[r[i] for i in order] for r in rows]
    if "duplicate_header" in mutations:
        i = rng.randrange(len(header))
        header.append(header[i])
        for r in rows:
            r.append(r[i])
    for kind in [kind for kind in CELLS if kind in mutations]:  # a fixed order: the same file every run
        for _ in range(rng.randint(1, 4)):
            rows[rng.randrange(len(rows))][rng.randrange(len(header))] = rng.choice(CELLS[kind])
    if "unsorted" in mutations:
        rng.shuffle(rows)
    if "short_row" in mutations:
        rows[rng.randrange(len(rows))].pop()
    if "extra_field" in mutations:
        rows[rng.randrange(len(rows))].append("7")
    sep = ", " if "spaces" in mutations else ","
    newline = "\r\n" if "crlf" in mutations else "\n"
    text = newline.join(sep.join(line) for line in [header, *rows]) + newline
    path.write_bytes((("\ufeff" if "bom" in mutations else "") + text).encode())


def _check(result: tuple[int, str, str], argv) -> None:
    rc, out, err = result
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err, (argv, err)
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("tgrow scaling: error: "), (argv, err)
        return
    assert all(line.startswith("warning: ") for line in lines), (argv, err)
    results = [line for line in out.splitlines() if not line.startswith("note:")]
    assert results and not any(NOT_FINITE.search(line) for line in results), (argv, out)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", range(CASES))
def test_curve_csv(tmp_path, capsys, case):
    rng = random.Random(case)
    n = rng.choice((4, 8, 30, 120))
    steps = np.arange(1, n + 1) * rng.choice((1, 10, 1000))
    loss = 2.0 + 3.0 * (steps / steps[0]) ** -0.4 * np.exp(np.random.default_rng(case).normal(0, 0.01, n))
    mutations = _mutations(rng, case)
    if "reversed" in mutations:
        loss = loss[::-1]
    lrs = 1e-3 * (0.55 + 0.45 * np.cos(np.pi * np.arange(n) / n))
    rows = [[str(int(s)), repr(float(v)), repr(float(r))] for s, v, r in zip(steps, loss, lrs)]
    path = tmp_path / "curve.csv"
    _write(path, ["step", "val_loss", "lr"], rows, mutations, rng)
    argv = ["scaling", "curve", path, "--bootstrap", "2", *rng.choice(([], ["--fit-fraction", "0.6"]))]
    _check(tgrow(capsys, *argv), (argv, sorted(mutations)))


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("case", range(CASES))
def test_fit_csv(tmp_path, capsys, case):
    rng = random.Random(1000 + case)
    n = rng.choice((5, 9, 16))
    n_params = np.geomspace(1e6, 1e9, n)
    tokens = 20 * n_params * np.exp(np.random.default_rng(case).normal(0, 1, n))
    mutations = _mutations(rng, case)
    loss = 1.69 + 406.4 / n_params**0.34 + 410.7 / tokens**0.28
    if "reversed" in mutations:
        loss = loss[::-1]
    rows = [[repr(float(v)) for v in row] for row in zip(n_params, tokens, 6 * n_params * tokens, loss)]
    path = tmp_path / "runs.csv"
    _write(path, ["N", "D", "C", "loss"], rows, mutations, rng)
    roles = rng.choice((["--n-col", "N", "--d-col", "D"], ["--n-col", "N", "--d-col", "D", "--c-col", "C"],
                        ["--n-col", "N", "--c-col", "C"], ["--d-col", "D", "--c-col", "C"],
                        ["--n-col", "N", "--d-col", "N"]))
    argv = ["scaling", "fit", path, *roles, "--loss-col", "loss", "--bootstrap", "0", "--init-grid", "reduced",
            "--no-loo", *rng.choice(([], ["--drop-invalid"]))]
    _check(tgrow(capsys, *argv), (argv, sorted(mutations)))

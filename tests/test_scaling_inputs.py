"""The scaling lab's CSV/JSONL inputs (issue 22, item 6): row order, rising curves, dropped rows, ambiguous
columns and a compute column that disagrees with 6 N D. Each refusal is one line and exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from reliability_helpers import assert_refused, tgrow

from transformer_grow.errors import ConfigError
from transformer_grow.scaling.curve_data import load_curve, rising_tail
from transformer_grow.scaling.data import load_scaling_data
from transformer_grow.scaling.synthetic import synthetic_records

FAST_FIT = ("--bootstrap", "0", "--init-grid", "reduced", "--no-loo")


def _curve(n=400, seed=0):
    steps = np.arange(1, n + 1) * 10
    loss = 2.0 + 3.0 * (steps / 10.0) ** -0.5 + np.random.default_rng(seed).normal(0, 0.01, n)
    return steps, loss


def _write_curve(path, steps, losses, header=("step", "val_loss")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(zip(steps, losses))
    return path


def _prediction(out: str) -> float:
    line = next(line for line in out.splitlines() if line.strip().startswith("at step="))
    return float(line.split("loss ")[1].split(",")[0])


def _fit_csv(path, records, columns=("N", "D", "C", "loss"), change=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, r in enumerate(records):
            row = {"N": r["n_params_nonembedding"], "D": r["tokens"], "C": r["flops"], "loss": r["final_val_loss"]}
            if change is not None:
                row = change(i, row)
            writer.writerow([row.get(c, row.get(c.rstrip("2"))) for c in columns])
    return path


@pytest.fixture(scope="module")
def records():
    return synthetic_records(sizes_per_budget=4, budgets=(1e18, 1e19, 1e20), noise=0.01, seed=3)


# ---------------------------------------------------------------- tgrow scaling curve


def test_descending_rows_are_sorted_with_a_note_and_predict_as_ascending(tmp_path, capsys):
    steps, loss = _curve()
    up = _write_curve(tmp_path / "up.csv", steps, loss)
    down = _write_curve(tmp_path / "down.csv", steps[::-1], loss[::-1])
    rc, out_up, _ = tgrow(capsys, "scaling", "curve", up, "--bootstrap", "5", "--at", "8000")
    assert rc == 0 and "sorted" not in out_up
    rc, out_down, err = tgrow(capsys, "scaling", "curve", down, "--bootstrap", "5", "--at", "8000")
    assert rc == 0 and err == ""
    assert f"note: the rows of {down} are not in step order; sorted by step" in out_down.splitlines()
    assert _prediction(out_down) == pytest.approx(_prediction(out_up))


def test_a_rising_curve_is_warned_about_in_one_line(tmp_path, capsys):
    """The audit's file: the step column reversed against the losses, so the loss rises 2.27 -> 5."""
    steps, loss = _curve()
    path = _write_curve(tmp_path / "rising.csv", steps[::-1], loss)
    rc, out, err = tgrow(capsys, "scaling", "curve", path, "--bootstrap", "5")
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: val_loss rises at the end of the curve")
    assert "extrapolate against it" in lines[0]
    result_dir = tmp_path / "out"
    assert tgrow(capsys, "scaling", "curve", path, "--bootstrap", "5", "--out", result_dir, "--no-plots")[0] == 0
    assert "rises at the end" in json.loads((result_dir / "curve.json").read_text())["warnings"][0]


def test_rising_tail_is_quiet_on_noisy_falling_curves_and_sees_a_late_rise():
    rng = np.random.default_rng(0)
    for n in (6, 20, 100, 400):
        t = np.linspace(1, 1000, n)
        for _ in range(20):
            assert rising_tail(t, (2 + 3 * t**-0.5) * np.exp(rng.normal(0, 0.01, n))) is None
    t = np.linspace(1, 1000, 400)
    late = 1 + 0.05 * np.clip((t / t[-1] - 0.8) / 0.2, 0, None)  # the last fifth rises 5%
    assert rising_tail(t, (2 + 3 * t**-0.5) * late * np.exp(rng.normal(0, 0.01, 400)), "step", "val_loss")


def test_dropped_rows_are_counted_honestly(tmp_path, capsys):
    steps, loss = _curve()
    cells = [repr(float(v)) for v in loss]
    for i in range(0, 400, 7):  # 58 NaN rows, the last one among them
        cells[i] = "nan"
    cells[3], cells[5] = "", "abc"
    path = _write_curve(tmp_path / "nan.csv", steps, cells)
    rc, out, err = tgrow(capsys, "scaling", "curve", path, "--bootstrap", "5")
    assert rc == 0
    assert (f"note: used 340 of 400 rows of {path}; 60 left out: 58 with a non-finite val_loss, 1 without a "
            "val_loss, 1 with a non-numeric val_loss") in out.splitlines()
    assert err.strip() == ("warning: 1 row after the last finite val_loss (from step=4000) has a non-finite "
                           "val_loss: the run may have diverged; the curve is fitted up to step=3990")


def test_repeated_steps_are_refused_naming_the_step(tmp_path, capsys):
    steps, loss = _curve(50)
    steps[10] = steps[9]
    path = _write_curve(tmp_path / "dup.csv", steps, loss)
    assert_refused(tgrow(capsys, "scaling", "curve", path), "step=100 appears more than once")


@pytest.mark.parametrize(("cell", "fragment"), [("1e300", "val_loss=1e+300 at step=100 is more than 1e+06 times above"),
                                                ("1e-300", "times below the median")])
def test_a_loss_far_off_the_curve_is_refused(tmp_path, capsys, cell, fragment):
    steps, loss = _curve(50)
    cells = [repr(float(v)) for v in loss]
    cells[9] = cell
    assert_refused(tgrow(capsys, "scaling", "curve", _write_curve(tmp_path / "far.csv", steps, cells)), fragment)


def test_an_absurd_learning_rate_is_refused(tmp_path, capsys):
    steps, loss = _curve(50)
    path = tmp_path / "lr.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("step", "val_loss", "lr"), *[(s, v, 1e308 if s == 200 else 1e-3)
                                                               for s, v in zip(steps, loss)]])
    assert_refused(tgrow(capsys, "scaling", "curve", path), "lr=1e+308 at step=200 is not a learning rate")


def test_bom_crlf_and_spaced_header_read_as_plain_csv(tmp_path):
    steps, loss = _curve(30)
    text = "\ufeffstep, val_loss\r\n" + "".join(f"{s},{float(v)!r}\r\n" for s, v in zip(steps, loss))
    (tmp_path / "bom.csv").write_bytes(text.encode())
    curve = load_curve(tmp_path / "bom.csv")
    np.testing.assert_allclose(curve.loss, loss)
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(("\ufeff" + "".join(json.dumps({"step": int(s), "val_loss": float(v)}) + "\n"
                                          for s, v in zip(steps, loss))).encode())
    np.testing.assert_allclose(load_curve(jsonl).loss, loss)


def test_incomplete_last_line_is_one_warning_line(tmp_path, capsys):
    steps, loss = _curve(30)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": int(s), "val_loss": float(v)}) + "\n" for s, v in zip(steps, loss))
                    + '{"step": 310, "val_')
    rc, _, err = tgrow(capsys, "scaling", "curve", path, "--bootstrap", "5")
    assert rc == 0 and err == f"warning: {path}: ignoring the incomplete last line 31\n"


# ---------------------------------------------------------------- tgrow scaling fit


def test_a_column_named_twice_in_the_header_is_refused(tmp_path, capsys, records):
    path = _fit_csv(tmp_path / "dup.csv", records, columns=("N", "D", "C", "loss", "loss2"))
    path.write_text(path.read_text().replace("loss2", "loss", 1))
    err = assert_refused(tgrow(capsys, "scaling", "fit", path, "--n-col", "N", "--d-col", "D", "--loss-col", "loss",
                               *FAST_FIT))
    assert err.strip() == (f"tgrow scaling: error: {path}: the header names column 'loss' twice (columns 4 and 5); "
                           "every column name must be unique")


def test_one_column_for_two_quantities_is_refused(tmp_path, capsys, records):
    path = _fit_csv(tmp_path / "runs.csv", records)
    err = assert_refused(tgrow(capsys, "scaling", "fit", path, "--n-col", "N", "--d-col", "N", "--loss-col", "loss",
                               *FAST_FIT))
    assert err.strip() == (f"tgrow scaling: error: --n-col and --d-col both name column 'N' of {path}; the loss, N, "
                           "D and C each need a column of their own")
    defaults = _fit_csv(tmp_path / "defaults.csv", records, columns=("tokens", "flops", "final_val_loss"),
                        change=lambda i, row: {"tokens": row["D"], "flops": row["C"], "final_val_loss": row["loss"]})
    assert_refused(tgrow(capsys, "scaling", "fit", defaults, "--n-col", "tokens", *FAST_FIT),
                   "--n-col and the default D column both name column 'tokens'")


def test_compute_ten_times_6nd_is_refused_naming_the_row_and_ratio(tmp_path, capsys, records):
    path = _fit_csv(tmp_path / "c10.csv", records, change=lambda i, row: {**row, "C": row["C"] * 10 if i == 3
                                                                          else row["C"]})
    argv = ("scaling", "fit", path, "--n-col", "N", "--d-col", "D", "--c-col", "C", "--loss-col", "loss", *FAST_FIT)
    err = assert_refused(tgrow(capsys, *argv), f"{path}: row 5: C/(6ND) = 10 (C=", "should lie in [0.1, 8]")
    assert err.startswith("tgrow scaling: error:")
    rc, out, _ = tgrow(capsys, *argv, "--drop-invalid")
    assert rc == 0 and f"note: used {len(records) - 1} of {len(records)} runs; left out 1: row 5: C/(6ND) = 10" in out


def test_compute_below_6nd_by_a_lot_is_refused_and_the_lab_overhead_is_allowed(tmp_path, records):
    low = _fit_csv(tmp_path / "low.csv", records, change=lambda i, row: {**row, "C": row["C"] / 20})
    with pytest.raises(ConfigError, match=r"row 2: C/\(6ND\) = 0\.05 "):
        load_scaling_data(low, n_col="N", d_col="D", c_col="C", loss_col="loss")
    # Attention and the output head (GPT.flops_per_token): with an 8192-token vocabulary a 1x32 model
    # (N = 16480) costs 17 times 6 N per token, a 2x32 one (N = 32928) 9 times.
    heavy = []
    for n_layer, n_params in ((1, 16480), (2, 32928)):
        model = {"n_layer": n_layer, "d_model": 32, "n_head": 1, "vocab_size": 8192, "seq_len": 32}
        ratio = 1 + (32 * 8192 + n_layer * 32 * 32) / n_params
        for i, tokens in enumerate((1e5, 3e5, 1e6)):
            heavy.append({"run_id": f"L{n_layer}-{i}", "n_params_nonembedding": n_params, "n_params": 3 * n_params,
                          "tokens": tokens, "flops": ratio * 6 * n_params * tokens,
                          "final_val_loss": 5.0 - n_layer - i / 4, "config": {"model": model}})
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in heavy))
    assert len(load_scaling_data(path)) == 6
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "config"}) + "\n" for r in heavy))
    with pytest.raises(ConfigError, match=r"line 1 \(L1-0\): C/\(6ND\) = 17 "):
        load_scaling_data(path)


def test_one_model_with_two_costs_per_token_is_refused(tmp_path, records):
    same_n = [{**r, "n_params_nonembedding": 1e8, "tokens": r["flops"] / 6e8} for r in records]
    same_n[2] = {**same_n[2], "flops": same_n[2]["flops"] * 3}
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in same_n))
    with pytest.raises(ConfigError, match=r"have the same N \(1e\+08\) but C/\(6ND\) = 1 and 3"):
        load_scaling_data(path)


def test_values_out_of_range_are_refused(tmp_path, records):
    path = _fit_csv(tmp_path / "tiny.csv", records, change=lambda i, row: {**row, "N": 1e-300} if i == 0 else row)
    with pytest.raises(ConfigError, match=r"row 2: N='1e-300' is out of range for N \(allowed: 0.001 to 1e\+40\)"):
        load_scaling_data(path, n_col="N", d_col="D", loss_col="loss")


def test_a_row_with_extra_fields_is_refused(tmp_path, records):
    path = _fit_csv(tmp_path / "extra.csv", records)
    lines = path.read_text().splitlines()
    lines[3] += ",7"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="row 4 has 5 fields; the header names 4 columns"):
        load_scaling_data(path, n_col="N", d_col="D", loss_col="loss")


def test_a_law_whose_loss_rises_with_size_is_refused(tmp_path, capsys, records):
    """Losses of the wrong runs (here reversed, so that they rise with N): the fitted alpha is negative and the
    compute-optimal allocation was printed as nan."""
    losses = [r["final_val_loss"] for r in records][::-1]
    path = _fit_csv(tmp_path / "rising.csv", records, change=lambda i, row: {**row, "loss": losses[i]})
    err = assert_refused(tgrow(capsys, "scaling", "fit", path, "--n-col", "N", "--d-col", "D", "--loss-col", "loss",
                               *FAST_FIT), "the fitted L(N,D) has alpha=-")
    assert "the loss does not fall as N grows" in err and "nan" not in err

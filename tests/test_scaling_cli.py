"""`tgrow scaling` end to end, and input validation (JSONL and CSV)."""

import csv
import json

import numpy as np
import pytest

from transformer_grow.cli.main import main
from transformer_grow.errors import ConfigError
from transformer_grow.scaling.data import load_scaling_data
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER as TRUE
from transformer_grow.scaling.synthetic import synthetic_records


def _write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _write_csv(path, records, columns=("model", "params", "compute", "L")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            writer.writerow([r["run_id"], r["n_params_nonembedding"], r["flops"], r["final_val_loss"]])
    return path


@pytest.fixture(scope="module")
def records():
    return synthetic_records(sizes_per_budget=6, noise=0.01, seed=5)


def test_fit_csv_with_custom_columns_writes_report(tmp_path, records, capsys):
    source = _write_csv(tmp_path / "published.csv", records)
    out = tmp_path / "fit"
    argv = ["scaling", "fit", str(source), "--n-col", "params", "--c-col", "compute", "--loss-col", "L",
            "--bootstrap", "30", "--init-grid", "reduced", "--predict-n", "1e9", "--predict-d", "2e10",
            "--predict-c", "1e22", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "L(N,D) = E + A/N^alpha + B/D^beta" in printed and "leave-one-out" in printed
    fit = json.loads((out / "fit.json").read_text())
    assert fit["n_points"] == 24
    assert fit["columns"] == {"N": "params", "loss": "L", "D": "compute / (6 N)", "C": "compute"}
    chin = fit["chinchilla"]
    for name in ("E", "A", "B", "alpha", "beta"):
        lo, hi = chin["ci"][name]
        assert lo <= chin[name] <= hi
    assert chin["alpha"] == pytest.approx(TRUE.alpha, abs=0.08)
    assert {"a", "b", "ci", "at"} <= set(fit["compute_optimal"])
    assert fit["compute_optimal"]["a"] + fit["compute_optimal"]["b"] == pytest.approx(1.0)
    row = fit["compute_optimal"]["at"][0]
    assert row["C"] == 1e22 and row["tokens_per_param"] == pytest.approx(row["D_opt"] / row["N_opt"])
    assert fit["predictions"][0]["N"] == 1e9 and len(fit["predictions"][0]["ci"]) == 2
    assert fit["loo"]["rmse_log_loss"] < 0.03 and len(fit["loo"]["points"]) == 24
    assert fit["grid_starts"] == 72 and fit["starts_run"] == 9 + 16 and fit["huber_delta"] == 1e-3
    assert 1 <= fit["starts_at_best"] <= fit["starts_run"]
    for name in ("E", "alpha"):  # standard errors next to the intervals
        assert 0 < chin["se"][name] < chin["ci"][name][1] - chin["ci"][name][0]
    pred = fit["predictions"][0]  # the prediction interval of a new run is wider than the law's interval
    assert pred["pi"][0] < pred["ci"][0] <= pred["loss"] <= pred["ci"][1] < pred["pi"][1]
    row3 = fit["compute_optimal"]["at"][0]
    assert row3["approach2"]["N_opt"] > 0 and len(row3["approach2"]["ci"]["N_opt"]) == 2
    assert "Approach 2" in printed and "Approach 3" in printed
    assert len(fit["isoflop"]["budgets"]) == 4 and fit["isoflop"]["a"] == pytest.approx(TRUE.a, abs=0.1)
    assert set(fit["single_variable"]) >= {"N", "D", "C"}
    assert fit["bootstrap"]["resamples"] == 30 and fit["bootstrap"]["seconds_per_resample"] > 0
    assert "| alpha |" in (out / "fit.md").read_text()
    for name in ("loss_vs_N.png", "loss_vs_D.png", "loss_vs_C.png", "isoflop.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_fit_jsonl_defaults_without_bootstrap(tmp_path, records, capsys):
    source = _write_jsonl(tmp_path / "results.jsonl", records)
    argv = ["scaling", "fit", str(source), "--bootstrap", "0", "--no-loo", "--init-grid", "reduced",
            "--out", str(tmp_path / "o"), "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    fit = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert fit["columns"]["N"] == "n_params_nonembedding" and fit["columns"]["D"] == "tokens"
    assert fit["bootstrap"] is None and fit["loo"] is None and fit["chinchilla"]["ci"]["E"] is None
    assert fit["plots"] == []


def test_incomplete_last_line_is_ignored(tmp_path, records):
    source = _write_jsonl(tmp_path / "results.jsonl", records, tail='{"n_params_nonembedding": 1e8, "tok')
    with pytest.warns(UserWarning, match="incomplete last line"):
        data = load_scaling_data(source)
    assert len(data) == len(records)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n{not json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        load_scaling_data(broken)


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (lambda rs: rs[:5], {}, "5 usable runs; the fit needs at least 6"),
        (
            lambda rs: [{**rs[0], "final_val_loss": -1.0}] + rs[1:],
            {},
            "final_val_loss=-1.0 is not a positive",
        ),
        (lambda rs: [{**rs[0], "tokens": 0}] + rs[1:], {}, "tokens=0 is not a positive"),
        (lambda rs: [{**rs[0], "final_val_loss": "nan"}] + rs[1:], {}, "final_val_loss='nan'"),
        (
            lambda rs: [{k: v for k, v in r.items() if k != "final_val_loss"} for r in rs],
            {},
            "no column 'final_val_loss'",
        ),
        (lambda rs: rs, {"n_col": "params"}, "--n-col 'params' is not a column"),
        (
            lambda rs: [{k: v for k, v in r.items() if k not in ("tokens", "flops")} for r in rs],
            {},
            "--d-col",
        ),
        (lambda rs: [{**r, "tokens": 1e9, "flops": 6e9 * r["n_params_nonembedding"]} for r in rs], {},
         "all runs have the same D"),
    ],
)
def test_bad_input_is_refused_naming_the_value(tmp_path, records, change, kwargs, message):
    source = _write_jsonl(tmp_path / "results.jsonl", change([dict(r) for r in records]))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_scaling_data(source, **kwargs)


def test_drop_invalid_leaves_bad_runs_out(tmp_path, records):
    bad = [{**records[0], "final_val_loss": None}] + records[1:]
    data = load_scaling_data(_write_jsonl(tmp_path / "r.jsonl", bad), drop_invalid=True)
    assert len(data) == len(records) - 1 and "final_val_loss=None" in data.dropped[0]


def test_cli_refuses_bad_options_before_work(tmp_path, records, capsys):
    source = _write_csv(tmp_path / "p.csv", records)
    cases = [
        (["--n-col", "nope", "--c-col", "compute", "--loss-col", "L"], "--n-col 'nope' is not a column"),
        (
            ["--n-col", "params", "--c-col", "compute", "--loss-col", "L", "--predict-n", "1e9"],
            "--predict-n has 1",
        ),
        (["--n-col", "params", "--c-col", "compute", "--loss-col", "L", "--bootstrap", "-1"], "bootstrap=-1"),
        (["--n-col", "params", "--c-col", "compute", "--loss-col", "L", "--level", "95"], "level=95"),
        (["--n-col", "params", "--c-col", "compute", "--loss-col", "L", "--predict-c", "-5"], "predict C=-5"),
    ]
    for extra, message in cases:
        assert main(["scaling", "fit", str(source), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["scaling", "fit", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fit_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["scaling", "fit", "--help"])
    text = capsys.readouterr().out
    for option in ("--n-col", "--d-col", "--c-col", "--loss-col", "--bootstrap", "--level", "--seed", "--huber-delta",
                   "--init-grid", "--isoflop-rtol", "--no-loo", "--predict-n", "--predict-d", "--predict-c", "--out",
                   "--no-plots", "--format", "--drop-invalid"):  # fmt: skip
        assert option in text


def test_estimate_lists_the_grid(capsys):
    assert main(["scaling", "estimate", "--mode", "quick", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "grid quick: 12 runs" in out and out.count("todo") == 12


def test_data_arrays_follow_the_columns(tmp_path, records):
    data = load_scaling_data(
        _write_csv(tmp_path / "p.csv", records), n_col="params", c_col="compute", loss_col="L"
    )
    np.testing.assert_allclose(data.flops, [r["flops"] for r in records])
    np.testing.assert_allclose(data.tokens, [r["tokens"] for r in records], rtol=1e-9)

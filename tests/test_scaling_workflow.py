"""`tgrow scaling fit` CSV workflow (derived columns, filters, --drop-highest, --fits, objectives), IsoFLOP
layout checks, speed of the projected search, and `tgrow scaling curve`."""

import csv
import json
import warnings

import numpy as np
import pytest

from transformer_grow.cli.main import main
from transformer_grow.errors import ConfigError
from transformer_grow.scaling.analysis import FitOptions, analyse, parse_fits
from transformer_grow.scaling.chinchilla import ChinchillaConfig, fit_chinchilla
from transformer_grow.scaling.data import data_from_records, load_scaling_data
from transformer_grow.scaling.isoflop import budget_layout_problem
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER as TRUE
from transformer_grow.scaling.synthetic import synthetic_records


def _csv(path, records, extra=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "D", "C", "L", "arch"])
        for i, r in enumerate(records):
            arch = "moe" if i % 5 == 0 else "dense"
            writer.writerow([r["run_id"], r["tokens"], r["flops"], r["final_val_loss"], arch])
    return path


@pytest.fixture(scope="module")
def records():
    return synthetic_records(sizes_per_budget=8, noise=0.01, seed=3)


def test_n_is_derived_from_d_and_c_and_rows_are_filtered_and_dropped(tmp_path, records):
    path = _csv(tmp_path / "runs.csv", records)
    data = load_scaling_data(path, d_col="D", c_col="C", loss_col="L")
    n_true = np.array([r["n_params_nonembedding"] for r in records])
    np.testing.assert_allclose(data.n_params, n_true, rtol=1e-9)
    assert data.columns["N"] == "C / (6 D)"
    filtered = load_scaling_data(path, d_col="D", c_col="C", loss_col="L", where=("arch == dense and C < 5e20",))
    assert len(filtered) == sum(1 for i, r in enumerate(records) if i % 5 and r["flops"] < 5e20)
    assert "kept" in filtered.filters[0]
    worst = np.argsort([r["final_val_loss"] for r in records])[-3:]
    dropped = load_scaling_data(path, d_col="D", c_col="C", loss_col="L", drop_highest=3)
    assert len(dropped) == len(records) - 3 and len(dropped.dropped) == 3
    assert {records[i]["run_id"] for i in worst}.isdisjoint(dropped.labels)


@pytest.mark.parametrize("kwargs, message", [
    ({"where": ("tokens ~ 3",)}, "not a condition"),
    ({"where": ("nope > 3",)}, "not a column"),
    ({"where": ("C < 0",)}, "leaves no rows"),
    ({"drop_highest": 30}, "would leave 2 runs"),
    ({"c_col": None}, "give two of --n-col, --d-col, --c-col"),
])  # fmt: skip
def test_bad_workflow_options_are_refused(tmp_path, records, kwargs, message):
    path = _csv(tmp_path / "runs.csv", records)
    options = {"d_col": "D", "c_col": "C", "loss_col": "L", **kwargs}
    with pytest.raises(ConfigError, match=message):
        load_scaling_data(path, **options)


def test_fits_are_chosen_by_name():
    assert parse_fits("single,chinchilla") == ("chinchilla", "loss-n", "loss-d", "loss-c")
    with pytest.raises(ConfigError, match="'lossc' is not a fit; choose from chinchilla"):
        parse_fits("lossc")


def test_isoflop_is_skipped_or_refused_off_budgets(records):
    on_budgets = data_from_records([(r["run_id"], r) for r in records])
    assert budget_layout_problem(on_budgets.flops, on_budgets.n_params) is None
    # 240 runs of random size and length: compute spread over 4 decades, no budgets (a published grid of
    # independent runs); grouping within 10% cuts it into dozens of pseudo-budgets.
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7, 9, 240), 10 ** rng.uniform(9, 11, 240)
    spread = [{"n_params_nonembedding": a, "tokens": b, "final_val_loss": float(TRUE.loss(a, b))} for a, b in zip(n, d)]
    spread_data = data_from_records([(str(i), r) for i, r in enumerate(spread)])
    assert "spread" in budget_layout_problem(spread_data.flops, spread_data.n_params)
    # Budgets that run into each other are pseudo-budgets too.
    flops = np.repeat(np.geomspace(1e18, 1.6e18, 6), 4)
    assert "pseudo-budgets" in budget_layout_problem(flops, np.tile([1.0, 2.0, 3.0, 4.0], 6))
    quick = {"chinchilla": ChinchillaConfig.reduced(), "n_bootstrap": 0, "leave_one_out": False}
    analysis = analyse(spread_data, FitOptions(**quick))
    assert analysis.isoflop is None and "Approach 2" in analysis.notes[0]
    with pytest.raises(ConfigError, match="need runs on a few compute budgets"):
        analyse(spread_data, FitOptions(**quick, fits=("isoflop",)))
    # Only the requested fits run and are bootstrapped.
    only = analyse(on_budgets, FitOptions(chinchilla=ChinchillaConfig.reduced(), n_bootstrap=20, fits=("loss-c",)))
    assert only.chinchilla is None and set(only.single) == {"C"} and only.isoflop is None
    assert set(only.bootstrap.seconds_by_fit) == {"L(C)"}


@pytest.mark.parametrize("objective", ["huber-mle", "mse", "mae"])
def test_other_objectives_recover_the_law(records, objective):
    data = data_from_records([(r["run_id"], r) for r in records])
    fit = fit_chinchilla(data.n_params, data.tokens, data.loss, ChinchillaConfig.reduced(objective=objective))
    assert fit.params.alpha == pytest.approx(TRUE.alpha, abs=0.06)
    assert fit.params.beta == pytest.approx(TRUE.beta, abs=0.06)
    if objective == "huber-mle":  # the fitted noise scale is the data's (1% log-normal noise)
        assert 0.004 < np.exp(fit.search.theta[-1]) < 0.02


def test_projected_full_grid_on_250_realistic_points_is_fast_and_quiet():
    rng = np.random.default_rng(7)
    records = synthetic_records(budgets=tuple(np.geomspace(1e17, 1e21, 10)), sizes_per_budget=25, noise=0.02,
                                seed=7)
    for i in rng.choice(len(records), 6, replace=False):  # a few broken runs
        records[i]["final_val_loss"] *= 1.3
    data = data_from_records([(r["run_id"], r) for r in records])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = fit_chinchilla(data.n_params, data.tokens, data.loss)
    assert len(data) == 250 and fit.search.grid_starts == 4500
    assert fit.search.seconds < 15  # about 1 s on an idle machine; benchmarks/scaling_fit.py times it
    assert fit.params.alpha == pytest.approx(TRUE.alpha, abs=0.05)


def test_fit_cli_prints_both_allocations_and_writes_legible_plots(tmp_path):
    records = synthetic_records(budgets=tuple(np.geomspace(1e17, 1e21, 32)), sizes_per_budget=4, noise=0.01, seed=1)
    source = tmp_path / "runs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "fit"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["scaling", "fit", str(source), "--bootstrap", "20", "--init-grid", "reduced", "--predict-c",
                     "1e22", "--objective", "huber-mle", "--out", str(out)]) == 0
    summary = json.loads((out / "fit.json").read_text())
    assert len(summary["isoflop"]["budgets"]) == 32 and summary["objective"] == "huber-mle"
    row = summary["compute_optimal"]["at"][0]
    assert row["approach2"]["extrapolated"] and row["pi"][0] < row["loss"] < row["pi"][1]
    assert (out / "isoflop.png").read_bytes()[:4] == b"\x89PNG"
    assert "2: IsoFLOP" in (out / "fit.md").read_text()


def test_curve_cli_extrapolates_a_metrics_file(tmp_path, capsys):
    total, warmup = 1000, 50
    i = np.arange(total)
    cosine = 1e-4 + 0.45e-3 * (1 + np.cos(np.pi * (i - warmup) / (total - 1 - warmup)))
    lrs = np.where(i < warmup, 1e-3 * (i + 1) / warmup, cosine)
    s1 = np.cumsum(lrs)
    rows = []
    for step in range(10, total + 1, 10):
        rows.append({"step": step, "lr": float(lrs[step - 1]), "train_loss": 3.0})
        loss = 2.0 + 0.3 * (s1[step - 1] / s1[-1]) ** -0.5 + 0.2 * lrs[step - 1] / 1e-3
        rows.append({"step": step, "lr": float(lrs[step - 1]), "val_loss": float(loss)})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["scaling", "curve", str(path), "--fit-fraction", "0.5", "--bootstrap", "20",
                 "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "lr_area" in printed and "held-out points" in printed
    result = json.loads((tmp_path / "c" / "curve.json").read_text())
    final = result["forms"]["lr_area"]["predictions"][0]
    assert final["x"] == total and final["loss"] >= result["forms"]["lr_area"]["params"]["E"]
    assert abs(result["forms"]["lr_area"]["held_out"]["final_error"]) < 0.05
    assert (tmp_path / "c" / "curve.png").is_file()
    assert main(["scaling", "curve", str(path), "--schedule", "cosine"]) != 0
    assert "--schedule needs --total-steps" in capsys.readouterr().err


def test_degenerate_isoflop_fit_reports_without_runtime_warnings(tmp_path):
    """Two IsoFLOP budgets whose profiles barely bend give exponents far from 1/2 and bootstrap
    resamples that saturate; the report and plots must stay finite and warning-free."""
    import warnings

    from transformer_grow.cli.main import main

    rows = [(55536, 4157440, 2e12, 1.555), (111024, 2252800, 2e12, 1.685), (213568, 1265664, 2e12, 1.866),
            (320320, 860160, 2e12, 2.215), (443232, 643072, 2e12, 2.127), (27792, 3604480, 1e12, 1.843),
            (32928, 3379200, 1e12, 1.879), (55536, 2076672, 1e12, 1.903), (83280, 1458176, 1e12, 1.954),
            (65824, 1843200, 1e12, 2.024), (106816, 1191936, 1e12, 1.972), (55536, 8318976, 4e12, 1.400),
            (83280, 5844992, 4e12, 1.371), (111024, 4505600, 4e12, 1.399)]
    path = tmp_path / "grid.csv"
    path.write_text("n,d,c,loss\n" + "".join(f"{n},{d},{c},{loss}\n" for n, d, c, loss in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code = main(["scaling", "fit", str(path), "--n-col", "n", "--d-col", "d", "--c-col", "c", "--loss-col", "loss",
                     "--predict-c", "1e12", "4e12", "--bootstrap", "40", "--out", str(tmp_path / "fit")])
    assert code == 0
    assert (tmp_path / "fit" / "fit.json").exists()

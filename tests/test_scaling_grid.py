"""Resumable grids with an injected trainer, and growth speedup as a function of scale."""

import json
import re

import numpy as np
import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.lab.grid import (
    GridSpec,
    GridTraining,
    append_result,
    read_results,
    resolve_results_path,
    run_grid,
    select_records,
)
from transformer_grow.scaling.chinchilla import ChinchillaConfig, ChinchillaParams
from transformer_grow.scaling.growth import (
    flops_to_reach,
    growth_plan_of,
    growth_speedup_vs_scale,
    report_sizes,
    savings_lines,
)
from transformer_grow.scaling.synthetic import CHINCHILLA_PAPER as TRUE


def _fake_train(calls):
    def train(run):
        calls.append(run.run_id)
        n = run.n_params_estimate
        return {
            "n_params_nonembedding": n,
            "n_params": n + run.model["d_model"] * run.model["vocab_size"],
            "tokens": run.tokens,
            "flops": run.flops_estimate,
            "final_val_loss": float(TRUE.loss(n, run.tokens)),
        }

    return train


def test_run_grid_resumes_and_skips_finished_runs(tmp_path):
    spec = GridSpec.quick()
    results = tmp_path / "results.jsonl"
    calls = []
    first = run_grid(spec, results, _fake_train(calls), log=None)
    assert len(first) == len(spec.runs()) == 12 == len(calls)

    # A crash mid-write leaves half a line; one finished run is removed to be redone.
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    calls.clear()
    messages = []
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = run_grid(spec, results, _fake_train(calls), log=messages.append)
    assert calls == [spec.runs()[-1].run_id]
    assert sum(" skip " in m for m in messages) == 11
    assert messages[-1].startswith("[12/12] train ") and "ETA" in messages[-1]
    assert [r["run_id"] for r in again] == [r.run_id for r in spec.runs()]
    assert all(json.loads(line) for line in results.read_text().splitlines())  # every line whole again
    calls.clear()
    run_grid(spec, results, _fake_train(calls), log=None)
    assert calls == []


def test_run_grid_refuses_an_incomplete_result(tmp_path):
    with pytest.raises(ConfigError, match="lacks flops"):
        run_grid(GridSpec.quick(), tmp_path / "r.jsonl",
                 lambda run: {"n_params_nonembedding": 1, "n_params": 1, "tokens": 1, "final_val_loss": 1},
                 log=None)
    assert read_results(tmp_path / "r.jsonl") == []


def test_append_result_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"run_id": "a"}\n{"run_id": "b", "lo')
    append_result(path, {"run_id": "c"})
    assert path.read_text() == '{"run_id": "a"}\n{"run_id": "c"}\n'


def test_grid_spec_runs_and_validation():
    spec = GridSpec(name="t", models=((2, 64), {"n_layer": 4, "d_model": 128, "n_head": 2}), tokens=(1000,),
                    tokens_per_param=(1.0,), seeds=(0, 1))  # fmt: skip
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 2
    assert runs[0].model["n_head"] == 1 and spec.model_dicts[1]["n_head"] == 2
    assert runs[0].n_params_estimate == 12 * 2 * 64**2
    assert len({r.run_id for r in runs}) == len(runs)
    assert [len(GridSpec.from_mode(m).runs()) for m in ("quick", "dev", "full")] == [12, 16, 36]
    assert runs[0].run_id == "scratch-L2-d64-T1000-s0" and runs[0].plan == "scratch"
    grown = GridSpec.quick(plans=("scratch", "g_stack")).runs()
    assert [r.plan for r in grown[:2]] == ["scratch", "g_stack"] and grown[0].tokens == grown[1].tokens
    # every mode's sizes can be grown by g_stack (an even number of layers)
    assert all(m["n_layer"] % 2 == 0 for mode in ("quick", "dev", "full") for m in GridSpec.from_mode(mode).model_dicts)
    with pytest.raises(ConfigError, match="mode='huge'"):
        GridSpec.from_mode("huge")
    with pytest.raises(ConfigError, match="needs tokens or tokens_per_param"):
        GridSpec(name="x", models=((2, 64),))
    with pytest.raises(ConfigError, match="d_model=0"):
        GridSpec(name="x", models=((2, 0),), tokens=(10,))
    with pytest.raises(ConfigError, match="tokens=-5 must be a positive integer"):
        GridSpec(name="x", models=((2, 64),), tokens=(-5,))
    with pytest.raises(ConfigError, match="tokens_per_param=-1.0 must be > 0"):
        GridSpec(name="x", models=((2, 64),), tokens_per_param=(-1.0,))
    with pytest.raises(ConfigError, match="list a plan twice"):
        GridSpec(name="x", models=((2, 64),), tokens=(10,), plans=("scratch", "scratch"))
    with pytest.raises(ConfigError, match="n_evals=1 is not allowed"):
        GridTraining(n_evals=1)


def test_run_grid_refuses_runs_recorded_with_other_settings_and_stops_at_max_runs(tmp_path):
    spec = GridSpec.quick()
    results = tmp_path / "r.jsonl"
    calls = []
    run_grid(spec, results, _fake_train(calls), log=None, settings_key=lambda run: "lr=1e-3", max_runs=3)
    assert len(calls) == 3 and all(r["settings_key"] == "lr=1e-3" for r in read_results(results))
    with pytest.raises(ConfigError, match="already holds run 'scratch-L2-d32-T.*other settings"):
        run_grid(spec, results, _fake_train(calls), log=None, settings_key=lambda run: "lr=3e-3")
    assert len(calls) == 3  # refused before training anything
    run_grid(spec, results, _fake_train(calls), log=None, settings_key=lambda run: "lr=1e-3")
    assert len(calls) == 12 and len(read_results(results)) == 12


def test_results_path_is_a_jsonl_file_or_a_directory(tmp_path):
    assert resolve_results_path(tmp_path / "r.jsonl") == tmp_path / "r.jsonl"
    assert resolve_results_path(tmp_path / "grid") == tmp_path / "grid" / "results.jsonl"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file without a .jsonl extension"):
        resolve_results_path(tmp_path / "notes.txt")


def test_select_records_by_plan_and_early_stopping():
    records = [
        {"run_id": "a", "plan": "scratch", "tokens": 10, "flops": 60, "final_val_loss": 3.0},
        {"run_id": "b", "plan": "scratch", "tokens": 5, "flops": 30, "final_val_loss": None, "early_stopped": True,
         "planned_tokens": 20, "planned_flops": 120, "predicted_final_loss": 2.5},
        {"run_id": "c", "plan": "g_stack", "tokens": 10, "flops": 60, "final_val_loss": 2.9},
    ]  # fmt: skip
    chosen, notes = select_records(records)
    assert [r["run_id"] for r in chosen] == ["a"]
    assert "fitting the 'scratch' runs" in notes[0] and "left out 1 early-stopped run(s) (b)" in notes[1]
    chosen, notes = select_records(records, plan="scratch", include_early_stopped=True)
    assert chosen[1] == {**records[1], "tokens": 20, "flops": 120, "final_val_loss": 2.5}
    assert "predicted final loss" in notes[0]
    assert [r["run_id"] for r in select_records(records, plan="g_stack")[0]] == ["c"]
    assert select_records(records[:1]) == (records[:1], [])
    with pytest.raises(ConfigError, match="plan='compound': no runs of that plan"):
        select_records(records, plan="compound")
    assert growth_plan_of(records, None) == "g_stack"
    with pytest.raises(ConfigError, match="is the baseline"):
        growth_plan_of(records, "scratch")


def test_flops_to_reach_inverts_the_law():
    n, d = 1e9, 3e10
    loss = TRUE.loss(n, d)
    assert flops_to_reach(TRUE, n, loss) == pytest.approx(6 * n * d, rel=1e-9)
    assert flops_to_reach(TRUE, n, TRUE.E) == np.inf  # below the floor at this size


def _records(params: ChinchillaParams, compute_multiplier: float, seed: int):
    """Runs at 3 budgets x 6 sizes; a grown run reaches the loss scratch reaches with k times its FLOPs."""
    rng = np.random.default_rng(seed)
    records = []
    for flops in (1e18, 1e19, 1e20):
        n_center = float(params.compute_optimal(flops)[0])
        for n in n_center * np.geomspace(0.2, 5.0, 6):
            tokens = flops / (6 * n)
            loss = float(params.loss(n, compute_multiplier * tokens)) * float(np.exp(rng.normal(0, 0.003)))
            records.append({"n_params_nonembedding": n, "flops": flops, "final_val_loss": loss})
    return records


def test_growth_speedup_vs_scale_recovers_a_constant_speedup():
    scratch = _records(TRUE, 1.0, seed=0)
    grown = _records(TRUE, 1.5, seed=1)  # growth saves a third of the compute at every size
    small = ChinchillaConfig(
        e_grid=(0.5,), a_grid=(5.0,), alpha_grid=(0.3, 0.6), b_grid=(5.0,), beta_grid=(0.3, 0.6)
    )
    result = growth_speedup_vs_scale(scratch, grown, n_values=[1e8, 1e9, 1e11], n_bootstrap=40, config=small)
    np.testing.assert_allclose(result.speedup[:2], 1.5, rtol=0.1)
    assert np.all(result.ci_low <= result.speedup) and np.all(result.speedup <= result.ci_high)
    assert np.all(result.ci_high[:2] - result.ci_low[:2] < 0.3)
    # 100x beyond the largest run the interval is much wider: extrapolation, and marked so.
    assert result.ci_high[2] - result.ci_low[2] > 3 * (result.ci_high[1] - result.ci_low[1])
    assert result.extrapolated.tolist() == [False, False, True]
    summary = result.as_dict()
    assert summary["by_size"][0]["N"] == 1e8 and len(summary["by_size"]) == 3
    lines = savings_lines(result, "g_stack")
    # speedup 1.5 = a third of the FLOPs saved; the line says 1 - 1/speedup, inside its interval
    match = re.search(r"^at N = 1e\+08 .*: g_stack saves (\d+)% of FLOPs \(95% CI (\d+)% to (\d+)%\)", lines[1])
    saved, low, high = (int(g) for g in match.groups())
    assert saved == round(100 * (1 - 1 / result.speedup[0])) and low <= saved <= high and low <= 33 <= high
    assert lines[3].endswith("[extrapolated]") and not lines[1].endswith("[extrapolated]")


def test_report_sizes_span_the_runs_and_three_decades_beyond():
    records = [{"n_params_nonembedding": n} for n in (2.5e4, 5e4, 2e5)]
    assert report_sizes(records) == [2.5e4, 2e5, 1e6, 1e7, 1e8]

"""`tgrow scaling run/estimate/growth` on a micro grid of real training runs, early stopping, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_train_helpers import prepare_bytes_data, write_corpus

from transformer_grow.cli.main import main
from transformer_grow.lab.estimate import Throughput, estimate_grid
from transformer_grow.lab.grid import GridSpec, GridTraining, read_results
from transformer_grow.lab.runner import EarlyStopRule, GridRunner, decide_early_stop, loss_at_tokens
from transformer_grow.plans.accounting import account_plan
from transformer_grow.run.manager import GrowthManager

# 2 sizes x 3 budgets: 8, 16 and 24 steps of 4 x 32 tokens; the Chinchilla fit needs 6 runs per plan.
MICRO = ["--models", "2x32,2x64", "--tokens", "1k,2048,3072", "--seq-len", "32", "--batch-size", "4",
         "--n-evals", "4", "--eval-windows", "4", "--device", "cpu", "--dtype", "fp32"]  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("scaling-run")


@pytest.fixture(scope="module")
def data_args(root):
    return ["--corpus", str(write_corpus(root / "corpus")), "--tokenizer", "bytes", "--cache-dir", str(root / "cache")]


def run_cli(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def grid(root, data_args):
    """The micro grid for scratch and g_stack, trained in two sessions (5 runs, then the other 7)."""
    out = root / "grid"
    argv = ["scaling", "run", *MICRO, *data_args, "--plans", "scratch,g_stack", "--no-progress", "--out", out]
    logs = []
    for extra in (["--max-runs", "5"], []):
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main([str(a) for a in [*argv, *extra]]) == 0
        logs.append(printed.getvalue().splitlines())
    return out / "results.jsonl", *logs


def test_grid_runs_end_to_end_and_resumes(grid):
    results, first, second = grid
    assert sum(" train " in line for line in first) == 5 and "stopping after 5 run(s)" in " ".join(first)
    assert sum(" skip " in line for line in second) == 5 and sum(" train " in line for line in second) == 7
    assert any(re.search(r"^\[12/12\] train g_stack-L2-d64-T3072-s0 .* ETA ~\d", line) for line in second)
    records = read_results(results)
    assert len(records) == 12 and len({r["run_id"] for r in records}) == 12
    by_id = {r["run_id"]: r for r in records}
    for r in records:
        assert r["n_params"] > r["n_params_nonembedding"] > 0 and r["final_val_loss"] > 0 and r["wall_seconds"] > 0
        assert r["tokens"] >= r["planned_tokens"] and r["flops"] > 0 and r["config"]["data_fingerprint"]
        steps = [p["step"] for p in r["val_curve"]]
        assert steps == sorted(steps) and r["val_curve"][-1]["val_loss"] == r["final_val_loss"]
    scratch, grown = by_id["scratch-L2-d64-T3072-s0"], by_id["g_stack-L2-d64-T3072-s0"]
    assert scratch["tokens"] == 3072 and scratch["steps"] == 24 and scratch["config"]["train"]["max_tokens"] == 3072
    assert scratch["config"]["model"]["vocab_size"] == 256 and scratch["config"]["model"]["n_layer"] == 2
    # g_stack: a 1-layer model grown into the 2-layer target; equal FLOPs (to a step), so more tokens
    assert [s["model"].split()[0] for s in grown["stages"]] == ["L=1", "L=2"] and len(grown["growth_events"]) == 1
    assert grown["n_params_nonembedding"] == scratch["n_params_nonembedding"]
    assert abs(grown["flops"] - scratch["flops"]) < 4 * 32 * grown["stages"][1]["flops_per_token"]
    assert grown["tokens"] > scratch["tokens"]


def test_results_are_fitted_per_plan_and_give_growth_vs_scale(grid, capsys, tmp_path):
    results, _, _ = grid
    fast = ["--bootstrap", "0", "--init-grid", "reduced"]
    rc, out, err = run_cli(["scaling", "fit", results, *fast, "--no-loo"], capsys)
    assert rc == 0, err
    assert "fitting the 'scratch' runs" in out and f"6 runs from {results}" in out and "L(N,D) = E +" in out
    rc, out, err = run_cli(["scaling", "fit", results, *fast, "--no-loo", "--plan", "g_stack"], capsys)
    assert rc == 0 and "6 runs from" in out and "fitting" not in out
    rc, out, err = run_cli(["scaling", "growth", results, *fast, "--at-n", "4e4", "1e5", "1e7", "--out", tmp_path],
                           capsys)
    assert rc == 0, err
    assert "g_stack vs scratch: 6 + 6 runs" in out and len(re.findall(r"^at N = ", out, re.MULTILINE)) == 3
    assert out.count("[extrapolated]") == 1  # 1e7 is beyond the runs (3.3e4 to 1.07e5 parameters)
    summary = json.loads((tmp_path / "growth.json").read_text())
    assert summary["plan"] == "g_stack" and [row["N"] for row in summary["by_size"]] == [4e4, 1e5, 1e7]


def test_a_run_with_other_settings_is_refused_on_resume(grid, data_args, capsys):
    results, _, _ = grid
    before = results.read_text()
    rc, _, err = run_cli(["scaling", "run", *MICRO, *data_args, "--lr", "1e-3", "--no-progress", "--out", results],
                         capsys)
    assert rc == 2 and "'scratch-L2-d32-T1000-s0' trained with other settings" in err and err.count("\n") == 1
    assert results.read_text() == before


def test_estimate_prints_per_run_and_total_times(grid, data_args, capsys):
    results, _, _ = grid
    rc, out, err = run_cli(["scaling", "estimate", *MICRO, *data_args, "--plans", "scratch,g_stack",
                            "--measure-seconds", "0", "--out", results.parent], capsys)
    assert rc == 0, err
    assert "grid custom: 12 runs" in out
    assert len(re.findall(r"^  L=\d d=\d+ .* B=4: [\d,]+ tokens/s \(3 timed steps\)", out, re.MULTILINE)) == 4
    assert len(re.findall(r"^  done  \S+ .* ~\d+s$", out, re.MULTILINE)) == 12
    assert re.search(r"expected time: total ~\d+s for 12 runs; remaining ~0s for 0 runs", out)


def test_estimate_adds_stage_times_and_evaluations():
    spec = GridSpec(name="t", models=((2, 32),), tokens=(2048,), seq_len=32, vocab_size=256,
                    plans=("scratch", "g_stack"),
                    training=GridTraining(batch_size=4, n_evals=4, device="cpu"))  # fmt: skip
    runner = GridRunner(spec, None, "unused.jsonl")

    def measure(config, batch_size, training):  # 1,000 tokens/s per layer; 0.5 s per evaluation
        return Throughput(f"L={config.n_layer}", 1000.0 / config.n_layer, 0.5, 3)

    estimate = estimate_grid(spec, runner, measure=measure)
    scratch, grown = estimate.runs
    assert scratch.seconds == pytest.approx(2048 * 2 / 1000 + 5 * 0.5)
    small, target = account_plan(runner.build_plan(grown.run)[0], 4 * 32).stages
    assert grown.seconds == pytest.approx(small.tokens / 1000 + target.tokens * 2 / 1000 + 5 * 0.5)
    assert estimate.total_seconds == pytest.approx(scratch.seconds + grown.seconds)
    assert [t.label for t in estimate.throughput] == ["L=1", "L=2"]


def test_scratch_runs_match_the_growth_managers_baseline(root):
    """Scratch runs (the Trainer) and growth runs (the manager) are measured alike: the manager's
    'scratch' plan reproduces a grid run exactly."""
    data, data_config = prepare_bytes_data(root / "same")
    spec = GridSpec(name="t", models=((2, 32),), tokens=(1024,), seq_len=32, vocab_size=256,
                    training=GridTraining(batch_size=4, n_evals=4, eval_windows=4, device="cpu", dtype="fp32"))
    runner = GridRunner(spec, data_config, root / "same" / "r.jsonl", log=None, data=data)
    run = spec.runs()[0]
    record = runner(run)
    manager = GrowthManager(runner.model_config(run), "scratch", budget_tokens=run.tokens, n_evals=4, eval_windows=4,
                            train_config=runner.train_config(run), log=None)
    baseline = manager.run(data).record
    assert record["final_val_loss"] == baseline.final_val_loss and record["flops"] == baseline.total_flops


def test_early_stop_decision_on_synthetic_curves():
    steps = np.arange(10, 51, 5)
    lrs = np.full(100, 1e-3)
    curve = 2.0 + np.power(steps / 10.0, -0.5)  # flattens towards 2.0; about 2.3 at step 100
    rule = EarlyStopRule(margin=0.01, n_bootstrap=20)
    bad = decide_early_stop(steps, curve, lrs, 100, best_known_loss=1.5, rule=rule)
    assert bad.stop and bad.predicted_final_loss == pytest.approx(2.0 + 10**-0.5, abs=0.02)
    assert bad.interval[0] <= bad.predicted_final_loss <= bad.interval[1]
    good = decide_early_stop(steps, curve, lrs, 100, best_known_loss=2.4, rule=rule)
    assert not good.stop
    assert decide_early_stop(steps[:3], curve[:3], lrs, 100, 1.5, rule) is None  # too few points
    assert decide_early_stop(steps, curve, lrs, 400, 1.5, EarlyStopRule(min_fraction=0.25)) is None  # too early
    assert loss_at_tokens([{"tokens": 0, "val_loss": 4.0}, {"tokens": 100, "val_loss": 2.0}], 25) == 3.5
    assert loss_at_tokens([{"tokens": 0, "val_loss": 4.0}], 25) is None


def test_early_stop_ends_a_run_that_cannot_beat_the_best_known_loss(root, data_args, capsys):
    out = root / "early"
    argv = ["scaling", "run", "--models", "2x32,2x128", "--tokens", "2048", "--seq-len", "32", "--batch-size", "4",
            "--n-evals", "8", "--eval-windows", "4", "--device", "cpu", "--dtype", "fp32", *data_args,
            "--no-progress", "--out", out, "--early-stop"]  # fmt: skip
    rc, _, err = run_cli([*argv, "--max-runs", "1"], capsys)
    assert rc == 0, err
    (first,) = read_results(out / "results.jsonl")
    assert first["early_stopped"] is False  # nothing to compare with yet
    # a run of another size (its record's settings) that reached loss 0.5 at every token count
    reference = {"run_id": "reference", "plan": "scratch", "settings_key": first["settings_key"],
                 "val_curve": [{"step": 1, "tokens": 1, "val_loss": 0.5},
                               {"step": 2, "tokens": 10**6, "val_loss": 0.5}]}
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(reference) + "\n")
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 0, err
    stopped = read_results(out / "results.jsonl")[-1]
    assert stopped["run_id"] == "scratch-L2-d128-T2048-s0" and stopped["early_stopped"] is True
    assert stopped["final_val_loss"] is None and stopped["stopped_at_step"] < stopped["planned_steps"] == 16
    assert stopped["predicted_final_loss_ci"][0] > 0.5 + 0.01 and stopped["best_known_loss"] == 0.5
    assert stopped["planned_flops"] > stopped["flops"] and len(stopped["val_curve"]) >= 5
    assert "early-stopped at step" in stdout and "(1 early-stopped)" in stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "huge"], "mode='huge' is not allowed; choose one of 'quick', 'dev', 'full'"),
    (["--tokens=-1000"], "tokens=-1000 must be a positive integer"),
    (["--tokens-per-param=-5"], "tokens_per_param=-5.0 must be > 0"),
    (["--tokens", "1k,lots"], "--tokens '1k,lots' is not a comma-separated list of counts"),
    (["--models", "2by64"], "--models '2by64' is not a comma-separated list of sizes"),
    (["--plans", "scratch,nope"], "plan='nope' is not allowed"),
    (["--plans", "g_stack", "--models", "3x32"], "must be a positive integer dividing the target's n_layer=3"),
    (["--batch-size", "0"], "batch_size=0 is not allowed"),
    (["--tokenizer", "words"], "tokenizer='words' is not allowed"),
    (["--max-runs", "0"], "--max-runs=0 must be >= 1"),
    (["--early-stop", "--early-stop-margin", "-1"], "early-stop margin=-1.0 must be >= 0"),
])  # fmt: skip
def test_bad_input_is_refused_before_any_work(root, argv, message, capsys):
    out = root / "refused"
    cache = root / "refused-cache"
    rc, _, err = run_cli(["scaling", "run", "--corpus", write_corpus(root / "corpus"), "--cache-dir", cache,
                          "--out", out, *argv], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists() and not cache.exists()
    if argv[0] != "--max-runs" and not argv[0].startswith("--early"):
        rc, _, err = run_cli(["scaling", "estimate", "--no-measure", *argv], capsys)
        assert rc == 2 and message in err


def test_cli_module_imports_no_torch():
    code = ("import sys, transformer_grow.cli.scaling; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fit_refuses_a_plan_missing_from_the_file(grid, capsys, tmp_path):
    results, _, _ = grid
    copy = shutil.copy(results, tmp_path / "r.jsonl")
    rc, _, err = run_cli(["scaling", "fit", copy, "--plan", "compound"], capsys)
    assert rc == 2 and "plan='compound': no runs of that plan" in err

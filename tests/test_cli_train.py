"""`tgrow train`, `tgrow eval`, `tgrow sample` through ``transformer_grow.cli.main.main``."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from test_train_helpers import FAST_TRAIN_ARGS, TINY_MODEL_ARGS, cli_data_args, train_tiny_run

from transformer_grow.cli.main import build_parser, main
from transformer_grow.train import load_checkpoint, read_metrics


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-train")


@pytest.fixture(scope="module")
def data_args(root):
    return cli_data_args(root)


@pytest.fixture(scope="module")
def trained_run(root, data_args):
    """A 6-step run of a 1-layer width-32 model; its directory."""
    return train_tiny_run(root / "run", data_args, 6, "--log-interval", "2")


def run_main(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def expect_refusal(argv, capsys, message: str, out_dir=None) -> None:
    """Exit code 2, exactly one line on stderr containing ``message``, and no work done."""
    rc, _, err = run_main(argv, capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and message in err, err
    if out_dir is not None:
        assert not (out_dir / "checkpoint").exists() and not (out_dir / "metrics.jsonl").exists()


def test_train_leaves_resumable_checkpoint_metrics_and_summary(trained_run):
    ckpt = load_checkpoint(trained_run)
    assert ckpt.train_state["step"] == 6 and ckpt.model_config.n_layer == 1 and ckpt.model_config.d_model == 32
    assert ckpt.model_config.vocab_size == 256  # follows the bytes tokenizer
    assert ckpt.train_state["data_config"]["tokenizer"] == "bytes"
    records = read_metrics(trained_run / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6] and "val_loss" in records[-1]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["train"]["max_steps"] == 6


def test_train_prints_a_summary_line(root, data_args, capsys):
    out = root / "summary"
    rc, stdout, _ = run_main(["train", *TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *data_args, "--max-steps", "2",
                              "--out", out], capsys)
    assert rc == 0
    line = stdout.strip().splitlines()[-1]
    for part in ("final val_loss", "tokens/s", "wall", f"checkpoint {out / 'checkpoint'}"):
        assert part in line


def test_resume_extends_the_run(root, data_args, trained_run, capsys):
    import shutil

    run = root / "extended"
    shutil.copytree(trained_run, run)
    rc, stdout, _ = run_main(["train", "--resume", run, "--max-steps", "8", "--no-progress"], capsys)
    assert rc == 0 and "done: step 8" in stdout
    assert load_checkpoint(run).train_state["step"] == 8
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [2, 4, 6, 8]


def test_config_file_sections_and_flat_keys_with_flag_override(root, data_args, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("preset: micro\nmodel:\n  n_layer: 1\n  d_model: 32\n  seq_len: 16\n"
                      "train:\n  max_steps: 3\n  batch_size: 2\n  max_tokens: 10k\nlr: 2e-3\n", encoding="utf-8")
    out = tmp_path / "run"
    rc, _, err = run_main(["train", "--config", config, *data_args, "--max-steps", "2", "--eval-windows", "2",
                           "--device", "cpu", "--no-progress", "--out", out], capsys)
    assert rc == 0, err
    state = load_checkpoint(out).train_state
    assert state["step"] == 2  # the flag beat the file
    assert state["train_config"]["lr"] == 0.002 and state["train_config"]["batch_size"] == 2  # flat key, section
    assert state["train_config"]["max_tokens"] == 10_000  # YAML reads "2e-3" and "10k" as text: still numbers
    assert load_checkpoint(out).model_config.seq_len == 16


@pytest.mark.parametrize("extra, message", [
    (["--d-model", "30"], "d_model=30 is not divisible by n_head=4"),
    (["--preset", "enormous"], "preset='enormous' is not allowed; choose one of 'micro'"),
    (["--max-steps", "-5"], "max_steps=-5 is not allowed; it must be a positive integer"),
    (["--max-tokens=-1k"], "max_tokens=-1000 is not allowed"),
    (["--n-kv-head", "3"], "n_head=4 must be a multiple of n_kv_head=3"),
    (["--norm", "batchnorm"], "norm='batchnorm' is not allowed; choose one of 'layernorm', 'rmsnorm'"),
    (["--schedule", "step"], "schedule='step' is not allowed"),
    (["--batch-size", "6", "--grad-accum", "4"], "batch_size=6 is not divisible by grad_accum=4"),
])
def test_bad_model_and_train_values_are_refused(extra, message, data_args, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--preset", "micro", "--max-steps", "2", *data_args, "--out", out, "--no-progress", *extra]
    expect_refusal(argv, capsys, message, out)


def test_missing_corpus_is_refused(tmp_path, capsys):
    missing = tmp_path / "no-such-corpus"
    expect_refusal(["train", "--preset", "micro", "--max-steps", "2", "--corpus", missing, "--tokenizer", "bytes",
                    "--out", tmp_path / "out"], capsys, f"corpus={str(missing)!r} does not exist", tmp_path / "out")


def test_seq_len_longer_than_the_data_is_refused(data_args, tmp_path, capsys):
    expect_refusal(["train", "--preset", "micro", "--seq-len", "1000000", "--max-steps", "2", *data_args,
                    "--no-progress", "--out", tmp_path / "out"], capsys, "seq_len=1000000 needs windows of 1000001",
                   tmp_path / "out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_refused_before_data_work(data_args, tmp_path, capsys):
    expect_refusal(["train", "--preset", "micro", "--max-steps", "2", "--device", "cuda", *data_args, "--out",
                    tmp_path / "out"], capsys, "device='cuda' is not available on this machine", tmp_path / "out")


def test_missing_budget_is_refused(data_args, tmp_path, capsys):
    expect_refusal(["train", "--preset", "micro", *data_args, "--out", tmp_path / "out"], capsys,
                   "no training budget: set max_steps (--max-steps) and/or max_tokens (--max-tokens)")


@pytest.mark.parametrize("text, message", [
    ("model:\n  n_layers: 3\n", "unknown model setting(s) 'n_layers'"),
    ("train:\n  learning_rate: 0.1\n", "unknown train setting(s) 'learning_rate'"),
    ("max_stepz: 3\n", "unknown setting 'max_stepz'"),
    ("- just\n- a list\n", "must hold a mapping of settings"),
])
def test_bad_config_files_are_refused(text, message, data_args, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    expect_refusal(["train", "--config", config, "--max-steps", "2", *data_args, "--out", tmp_path / "out"], capsys,
                   message, tmp_path / "out")


def test_missing_config_file_and_resume_dir_are_refused(tmp_path, capsys):
    expect_refusal(["train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "o"], capsys,
                   "config file", tmp_path / "o")
    expect_refusal(["train", "--resume", tmp_path / "never-ran"], capsys,
                   f"checkpoint {str(tmp_path / 'never-ran')!r} does not exist")


def test_existing_run_and_model_changes_on_resume_are_refused(trained_run, data_args, capsys):
    expect_refusal(["train", "--preset", "micro", "--max-steps", "2", *data_args, "--out", trained_run], capsys,
                   "already holds a checkpoint; continue it with --resume")
    expect_refusal(["train", "--resume", trained_run, "--n-layer", "4"], capsys,
                   "model settings (n_layer) cannot change when resuming")


def test_every_option_is_documented():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("train", "eval", "sample"):
        for action in commands[name]._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        help_text = commands[name].format_help()
        for action in commands[name]._actions:
            for flag in action.option_strings:
                assert flag in help_text, (name, flag)
    train_flags = {f for a in commands["train"]._actions for f in a.option_strings}
    assert {"--preset", "--config", "--out", "--resume", "--max-steps", "--max-tokens", "--corpus", "--tokenizer",
            "--vocab-size", "--cache-dir", "--n-layer", "--d-model", "--n-head", "--n-kv-head", "--head-dim",
            "--d-ff", "--seq-len", "--norm", "--pos", "--mlp", "--tie", "--no-tie", "--bias",
            "--dropout"} <= train_flags
    sample_flags = {f for a in commands["sample"]._actions for f in a.option_strings}
    assert {"--prompt", "--max-new-tokens", "--temperature", "--top-k", "--seed"} <= sample_flags


def test_sample_generates_reproducibly_from_a_checkpoint(trained_run, capsys):
    argv = ["sample", trained_run, "--prompt", "def ", "--max-new-tokens", "24", "--top-k", "20", "--seed", "1",
            "--temperature", "1.0", "--no-progress"]
    rc, first, err = run_main(argv, capsys)
    assert rc == 0, err
    assert first.startswith("def ") and len(first) > len("def ") + 5
    assert run_main(argv, capsys)[1] == first
    rc, greedy, _ = run_main(["sample", trained_run, "--prompt", "import", "--max-new-tokens", "10",
                              "--temperature", "0", "--num-samples", "2"], capsys)
    assert rc == 0
    samples = greedy.split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2 and samples[0].strip() == samples[1].strip()  # greedy: identical
    expect_refusal(["sample", trained_run, "--max-new-tokens", "0"], capsys, "--max-new-tokens=0 is not allowed")


def test_eval_reports_the_final_validation_loss(trained_run, capsys):
    rc, out, err = run_main(["eval", trained_run, "--json", "--no-progress"], capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert result["step"] == 6 and result["windows"] == 4
    assert result["val_loss"] == pytest.approx(load_checkpoint(trained_run).train_state["last_val_loss"], abs=1e-5)
    expect_refusal(["eval", trained_run.parent / "nothing-here"], capsys, "does not exist")


def test_train_with_a_plan_grows_and_resumes(root, data_args, capsys):
    """`tgrow train --plan g_stack`: the model flags are the target (2 layers); the small model has 1."""
    out = root / "plan-run"
    argv = ["train", "--plan", "g_stack", "--growth-fraction", "0.5", *TINY_MODEL_ARGS, "--n-layer", "2",
            *FAST_TRAIN_ARGS, *data_args, "--max-steps", "8", "--out", out]
    rc, stdout, err = run_main(argv, capsys)
    assert rc == 0, err
    assert "done: plan g_stack" in stdout and "grew to L=2" in err
    result = json.loads((out / "result.json").read_text())
    assert [s["model"].split()[0] for s in result["record"]["stages"]] == ["L=1", "L=2"]
    assert result["record"]["events"][0]["operator"] == "depth=stack"
    assert load_checkpoint(out).model_config.n_layer == 2
    rc, stdout, err = run_main(argv, capsys)  # the same command again: the finished result, no training
    assert rc == 0 and "already finished" in err and "done: plan g_stack" in stdout


@pytest.mark.parametrize("extra, message", [
    (["--plan", "g_stack"], "--out DIR is required with --plan"),
    (["--plan", "g_stack", "--out", "X", "--growth-factor", "3"],
     "depth growth factor 3 must be a positive integer dividing"),
    (["--plan", "g_stack", "--resume", "X", "--out", "elsewhere"], "a plan run resumes in its own directory"),
])
def test_bad_plan_runs_are_refused_before_work(extra, message, data_args, tmp_path, capsys):
    argv = ["train", *TINY_MODEL_ARGS, "--n-layer", "2", *FAST_TRAIN_ARGS, *data_args, "--max-steps", "8",
            *[str(tmp_path / "out") if a == "X" else a for a in extra]]
    expect_refusal(argv, capsys, message, tmp_path / "out")

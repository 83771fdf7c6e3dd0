"""`tgrow grow` end to end: train, grow (report + grown checkpoint), resume training; refusals."""

from __future__ import annotations

import json

import pytest
import torch
from grow_fixtures import single_thread  # noqa: F401
from test_cli_train import run_main
from test_train_helpers import cli_data_args, train_tiny_run

from transformer_grow.train import load_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-grow")


@pytest.fixture(scope="module")
def data_args(root):
    return cli_data_args(root)


@pytest.fixture(scope="module")
def run_dir(root, data_args):
    """A 6-step run of a 1-layer, width-32 model on bytes."""
    return train_tiny_run(root / "run", data_args)


def test_grow_writes_report_and_a_checkpoint_that_trains_on(root, run_dir, tmp_path, capsys):
    target = tmp_path / "target.yaml"
    target.write_text("model:\n  n_layer: 2\n  d_model: 64\n  n_head: 8\n  n_kv_head: 8\n  d_ff: 320\n")
    out = tmp_path / "grown"
    rc, stdout, err = run_main(
        [
            "grow",
            run_dir,
            "--to",
            target,
            "--method",
            "insert_zero+clone",
            "--noise",
            "cancel",
            "--rewarmup-steps",
            "3",
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 0, err
    assert "exact" in stdout and f"tgrow train --resume {out}" in stdout
    assert "validation windows" in err  # the probe came from the run's own data

    report = json.loads((out / "growth_report.json").read_text())
    assert report["kind"] == "exact" and report["max_abs_dlogits"] <= 1e-4 and abs(report["dloss"]) <= 1e-4
    assert report["method"] == "width=clone,ffn=zero,depth=insert_zero" and report["optimizer"] == "carry"

    old, new = load_checkpoint(run_dir), load_checkpoint(out)
    assert (new.model_config.n_layer, new.model_config.d_model, new.model_config.n_head) == (2, 64, 8)
    for key in ("step", "tokens", "flops", "train_config", "data_config"):
        assert new.train_state[key] == old.train_state[key]
    assert new.train_state["schedule"]["rewarmup"] == {"grow_step": 6, "steps": 3}
    assert new.train_state["extra"]["growth_history"][0]["kind"] == "exact"
    state = new.optimizer_state["blocks.0.attn.q_proj.weight"]
    assert state["exp_avg"].shape == (64, 64) and float(state["step"]) == 6
    old_m = old.optimizer_state["blocks.0.attn.q_proj.weight"]["exp_avg"]
    torch.testing.assert_close(state["exp_avg"][:32, :32], old_m / 2)  # read side of a clone: m / k

    rc, stdout, err = run_main(["train", "--resume", out, "--max-steps", "8"], capsys)
    assert rc == 0, err
    resumed = load_checkpoint(out)
    assert resumed.train_state["step"] == 8 and resumed.model_config.d_model == 64


def test_grow_with_a_preset_refused_when_head_dim_would_change(run_dir, tmp_path, capsys):
    out = tmp_path / "g"
    rc, _, err = run_main(["grow", run_dir, "--to", "tiny", "--out", out], capsys)
    assert rc == 2 and err.count("\n") == 1 and "head_dim cannot change" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--to", "nowhere.yaml"], "does not exist"),
        (["--to", "huge"], "neither a preset"),
        (["--to", "{target}", "--method", "widen"], "method='widen'"),
        (["--to", "{target}", "--depth", "layer_map"], "needs option layer_sources"),
        (["--to", "{target}", "--layer-sources", "0,x"], "comma-separated integers"),
        (["--to", "{target}", "--optimizer", "keep"], "--optimizer='keep'"),
        (["--to", "{shrink}"], "growth does not shrink"),
    ],
)
def test_grow_refusals_are_one_line_and_write_nothing(run_dir, tmp_path, capsys, extra, message):
    (tmp_path / "t.json").write_text(json.dumps({"n_layer": 2}))
    (tmp_path / "s.json").write_text(json.dumps({"model": {"d_model": 16, "n_head": 2, "n_kv_head": 2}}))
    extra = [e.format(target=tmp_path / "t.json", shrink=tmp_path / "s.json") for e in extra]
    out = tmp_path / "g"
    rc, _, err = run_main(["grow", run_dir, *extra, "--out", out], capsys)
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_grow_refuses_an_out_dir_holding_a_checkpoint(run_dir, tmp_path, capsys):
    (tmp_path / "t.json").write_text(json.dumps({"n_layer": 2}))
    rc, _, err = run_main(["grow", run_dir, "--to", tmp_path / "t.json", "--out", run_dir], capsys)
    assert rc == 2 and "already holds a checkpoint" in err

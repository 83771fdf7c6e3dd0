"""Issue 13.4: a damaged checkpoint is never accepted silently: a deleted optimizer file, an edited
step and flipped bytes in the weights are refused (exit 2, one line); and `tgrow eval` reports a huge
loss as an infinite perplexity instead of crashing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from reliability_helpers import assert_refused, tgrow, train_args

from transformer_grow.cli.main import main
from transformer_grow.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    assert main([*train_args(root, 3), "--out", str(root / "run")]) == 0
    return root


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copytree(trained / "corpus", tmp_path / "corpus")
    return tmp_path / "run"


def resume(capsys, run):
    return tgrow(capsys, "train", "--resume", run, "--max-steps", "6", "--no-progress")


def test_a_deleted_optimizer_file_is_refused(run_copy, capsys):
    (run_copy / "checkpoint" / "optimizer.safetensors").unlink()
    assert_refused(resume(capsys, run_copy), "optimizer.safetensors is missing")


@pytest.mark.parametrize("step", [300, 1e9, 12.7])
def test_an_edited_step_is_refused(step, run_copy, capsys):
    path = run_copy / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["train_state"]["step"] = step
    path.write_text(json.dumps(state, indent=2))
    assert_refused(resume(capsys, run_copy), "state.json")


def test_flipped_bytes_in_the_weights_are_refused(run_copy, capsys):
    path = run_copy / "checkpoint" / "model.safetensors"
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    header = 8 + int.from_bytes(data[:8], "little")
    for i in rng.sample(range(header, len(data)), 1000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_refused(resume(capsys, run_copy), "model.safetensors", "content hash")
    assert_refused(tgrow(capsys, "eval", run_copy, "--device", "cpu", "--no-progress"), "content hash")


def test_an_intact_checkpoint_still_loads_and_a_huge_loss_is_reported(run_copy, capsys, monkeypatch):
    assert load_checkpoint(run_copy).train_state["step"] == 3
    import transformer_grow.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "evaluate_windows", lambda *args: 4155.0)  # a wrecked model's loss
    rc, out, err = tgrow(capsys, "eval", run_copy, "--device", "cpu", "--no-progress", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["val_loss"] == 4155.0 and result["perplexity"] is None  # infinite: JSON null
    rc, out, _ = tgrow(capsys, "eval", run_copy, "--device", "cpu", "--no-progress")
    assert rc == 0 and "perplexity inf" in out

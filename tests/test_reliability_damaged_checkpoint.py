"""Issue 13.4: a damaged checkpoint is never accepted silently: a deleted optimizer file, an edited
step and flipped bytes in the weights are refused (exit 2, one line); and `tgrow eval` reports a huge
loss as an infinite perplexity instead of crashing."""

from __future__ import annotations

import json
import random

import pytest
from reliability_helpers import assert_refused, tgrow

from transformer_grow.train.checkpoint import load_checkpoint


def resume(capsys, run):
    return tgrow(capsys, "train", "--resume", run, "--max-steps", "6", "--no-progress")


def test_a_deleted_optimizer_file_is_refused(cli_run_copy, capsys):
    (cli_run_copy / "checkpoint" / "optimizer.safetensors").unlink()
    assert_refused(resume(capsys, cli_run_copy), "optimizer.safetensors is missing")


@pytest.mark.parametrize("step", [300, 1e9, 12.7])
def test_an_edited_step_is_refused(step, cli_run_copy, capsys):
    path = cli_run_copy / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["train_state"]["step"] = step
    path.write_text(json.dumps(state, indent=2))
    assert_refused(resume(capsys, cli_run_copy), "state.json")


def test_flipped_bytes_in_the_weights_are_refused(cli_run_copy, capsys):
    path = cli_run_copy / "checkpoint" / "model.safetensors"
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    header = 8 + int.from_bytes(data[:8], "little")
    for i in rng.sample(range(header, len(data)), 1000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_refused(resume(capsys, cli_run_copy), "model.safetensors", "content hash")
    assert_refused(tgrow(capsys, "eval", cli_run_copy, "--device", "cpu", "--no-progress"), "content hash")


def test_an_intact_checkpoint_still_loads_and_a_huge_loss_is_reported(cli_run_copy, capsys, monkeypatch):
    assert load_checkpoint(cli_run_copy).train_state["step"] == 3
    import transformer_grow.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "evaluate_windows", lambda *args: 4155.0)  # a wrecked model's loss
    rc, out, err = tgrow(capsys, "eval", cli_run_copy, "--device", "cpu", "--no-progress", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["val_loss"] == 4155.0 and result["perplexity"] is None  # infinite: JSON null
    rc, out, _ = tgrow(capsys, "eval", cli_run_copy, "--device", "cpu", "--no-progress")
    assert rc == 0 and "perplexity inf" in out

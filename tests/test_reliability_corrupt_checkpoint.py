"""Issue 13.3: a corrupted checkpoint is refused in one line naming the file and the problem (exit 2),
by every command that reads checkpoints, before any data preparation or training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_helpers import assert_refused, tgrow

COMMANDS = {
    "resume": lambda ckpt, root: ["train", "--resume", ckpt, "--max-steps", "6", "--no-progress"],
    "eval": lambda ckpt, root: ["eval", ckpt, "--device", "cpu", "--no-progress"],
    "sample": lambda ckpt, root: ["sample", ckpt, "--max-new-tokens", "2", "--device", "cpu", "--no-progress"],
    "grow": lambda ckpt, root: ["grow", ckpt, "--to", "tiny", "--method", "stack", "--out", root / "grown"],
}


def edit_state(run: Path, change) -> None:
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def truncate(run):
    path = run / "checkpoint" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def garbage(run):
    (run / "checkpoint" / "model.safetensors").write_bytes(b"\x07" * 5000)


def binary_state(run):
    (run / "checkpoint" / "state.json").write_bytes(bytes(range(256)))


def drop_key(run):
    edit_state(run, lambda s: s.pop("block_keys"))


def n_layer(run):
    edit_state(run, lambda s: s["model_config"].update(n_layer=3))


def d_model(run):
    edit_state(run, lambda s: s["model_config"].update(d_model=64, d_ff=None, head_dim=None))


def vocab(run):
    edit_state(run, lambda s: s["model_config"].update(vocab_size=300))


def rng(run):
    edit_state(run, lambda s: s["train_state"].update(rng={"bogus": 1}))


CORRUPTIONS = {"truncated weights": (truncate, "model.safetensors"), "garbage weights": (garbage, "model.safetensors"),
               "binary state.json": (binary_state, "state.json"), "state.json lacks a key": (drop_key, "state.json"),
               "edited n_layer": (n_layer, "state.json"), "edited d_model": (d_model, "state.json"),
               "edited vocab_size": (vocab, "state.json"), "bad RNG entry": (rng, "state.json")}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_resume_refuses_a_corrupted_checkpoint_in_one_line(corruption, cli_run_copy, capsys):
    damage, file = CORRUPTIONS[corruption]
    damage(cli_run_copy)
    before = sorted(p.name for p in cli_run_copy.iterdir())
    err = assert_refused(tgrow(capsys, *COMMANDS["resume"](cli_run_copy, cli_run_copy.parent)), file)
    assert "damaged" in err or "not a readable" in err
    assert sorted(p.name for p in cli_run_copy.iterdir()) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_every_checkpoint_reader_refuses_it(command, cli_run_copy, capsys):
    truncate(cli_run_copy)
    assert_refused(tgrow(capsys, *COMMANDS[command](cli_run_copy, cli_run_copy.parent)), "model.safetensors", "damaged")
    assert not (cli_run_copy.parent / "grown").exists()


def test_legacy_checkpoint_without_manifest_still_gets_structural_checks(cli_run_copy, capsys):
    ckpt = cli_run_copy / "checkpoint"
    (ckpt / "manifest.json").unlink()
    edit_state(cli_run_copy, lambda s: s.update(version=1))
    assert tgrow(capsys, *COMMANDS["eval"](cli_run_copy, cli_run_copy.parent))[0] == 0
    d_model(cli_run_copy)
    assert_refused(tgrow(capsys, *COMMANDS["eval"](cli_run_copy, cli_run_copy.parent)), "model.safetensors",
                   "does not fit the model")

"""Issue 13.9: bookkeeping. A run started again after being killed before its first checkpoint starts
a fresh metrics file (no duplicate steps); checkpoint directories and files get the same permissions
as every other output (0755/0644 under the usual umask 022), not mkdtemp's 0700/0600."""

from __future__ import annotations

import stat

from reliability_helpers import tgrow, train_args

from transformer_grow.io import DIR_MODE, FILE_MODE
from transformer_grow.train import read_metrics


def test_checkpoints_get_the_permissions_of_other_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert tgrow(capsys, *train_args(tmp_path, 2), "--out", out)[0] == 0

    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(out / "checkpoint") == mode(out) == DIR_MODE  # mkdtemp alone would give 0700
    files = [out / "config.json", out / "metrics.jsonl", *(out / "checkpoint").iterdir()]
    assert {p.name: mode(p) for p in files} == {p.name: FILE_MODE for p in files}
    assert len(files) == 6  # config, metrics, model, optimizer, state, manifest


def write_killed_run_metrics(out) -> None:
    """What a run killed before its first checkpoint leaves: config and metrics, no checkpoint."""
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.9}\n{"step": 2, "train_loss": 9.8}\n')


def test_a_rerun_after_a_kill_before_the_first_checkpoint_starts_fresh_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    write_killed_run_metrics(out)
    assert tgrow(capsys, *train_args(tmp_path, 3), "--log-interval", "1", "--out", out)[0] == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert steps == [1, 2, 3] and 9.9 not in [r.get("train_loss") for r in read_metrics(out / "metrics.jsonl")]


def test_a_plan_rerun_after_a_kill_before_the_first_checkpoint_starts_fresh_metrics(tmp_path, capsys):
    out = tmp_path / "grown"
    write_killed_run_metrics(out)
    rc, _, err = tgrow(capsys, *train_args(tmp_path, 8), "--plan", "g_stack", "--n-layer", "2", "--growth-fraction",
                       "0.5", "--log-interval", "1", "--out", out)
    assert rc == 0, err
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert len(steps) == len(set(steps))
    assert 9.9 not in [r.get("train_loss") for r in read_metrics(out / "metrics.jsonl")]


def test_first_record_after_resume_averages_the_same_steps(tmp_path):
    """Checkpoint at step 6, records every 4 steps: the step-8 record of the resumed run averages
    steps 5-8 like the uninterrupted run's, not only 7-8."""
    import numpy as np
    import pytest as _pytest

    from transformer_grow.data import TokenData
    from transformer_grow.model import preset
    from transformer_grow.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=20_000).astype(np.int64)
    data = TokenData(train=tokens[:18_000], val=tokens[18_000:], vocab_size=64)
    model = preset("micro", vocab_size=64, n_layer=1, d_model=32, n_head=2, seq_len=16)
    config = TrainConfig(batch_size=4, max_steps=10, lr=3e-3, warmup_steps=2, log_interval=4, eval_interval=0,
                         ckpt_interval=6, device="cpu")
    whole = Trainer(model, config, data, out_dir=tmp_path / "whole")
    whole.fit()
    first = Trainer(model, config, data, out_dir=tmp_path / "cut")
    first.train_steps(6)  # checkpoint at step 6, mid-window
    resumed = Trainer.resume(tmp_path / "cut", data)
    resumed.fit()
    loss_at = {r["step"]: r["train_loss"] for r in whole.history if r.get("train_loss") is not None}
    resumed_at = {r["step"]: r["train_loss"] for r in resumed.history if r.get("train_loss") is not None}
    assert resumed_at[8] == _pytest.approx(loss_at[8], rel=1e-6)

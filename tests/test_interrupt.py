"""Issue 22.7: SIGTERM (what schedulers send) checkpoints like SIGINT, for plain and plan runs, and the run
resumes exactly; a second signal stops at once. The run summary's wall time counts checkpoints and
evaluation too.

The signals are real (``os.kill`` of this process from inside a step, where a scheduler's would arrive);
the runs they interrupt are compared with uninterrupted ones in the same process, bitwise equal by design."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from reliability_helpers import tgrow, train_args
from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

import transformer_grow.train.lifecycle as lifecycle
from transformer_grow.io import read_json
from transformer_grow.train.checkpoint import load_checkpoint
from transformer_grow.train.interrupt import requested, stop_on_signals
from transformer_grow.train.trainer import Trainer


def signal_at(monkeypatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process during step ``step`` (1-based), once."""
    real, sent = Trainer._optimizer_step, []

    def optimizer_step(trainer):
        if trainer.step + 1 == step and not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return real(trainer)

    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_a_plain_run_that_resumes_exactly(signum, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signum)
    rc, _, _ = tgrow(capsys, *train_args(tmp_path, 10), "--out", tmp_path / "whole")
    assert rc == 0
    out = tmp_path / "run"
    signal_at(monkeypatch, 6, signum)
    rc, _, err = tgrow(capsys, *train_args(tmp_path, 10), "--out", out)
    name = signal.Signals(signum).name
    assert rc == 128 + signum and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"tgrow train: stopped by {name} after step 6; checkpoint written to "
                                            f"{out}/checkpoint; continue with: tgrow train --resume {out}")
    assert load_checkpoint(out).train_state["step"] == 6 and signal.getsignal(signum) is handler
    monkeypatch.undo()
    rc, stdout, err = tgrow(capsys, "train", "--resume", out)
    assert rc == 0 and "done: step 10" in stdout, err
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(out)
    for name_, tensor in whole.model_state.items():
        assert torch.equal(tensor, resumed.model_state[name_]), name_


def test_sigterm_checkpoints_a_plan_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*train_args(tmp_path, 36), "--plan", "g_stack", "--n-layer", "2", "--growth-fraction", "0.5"]
    assert tgrow(capsys, *args, "--out", tmp_path / "whole")[0] == 0
    out = tmp_path / "grown"
    signal_at(monkeypatch, 7, signal.SIGTERM)
    rc, _, err = tgrow(capsys, *args, "--out", out)
    assert rc == 143 and err.strip().splitlines()[-1] == (
        f"tgrow train: stopped by SIGTERM after step 7; checkpoint written to {out}/checkpoint; continue by running "
        "the same command again")
    state = load_checkpoint(out).train_state
    assert state["step"] == 7 and state["extra"]["growth_manager"]["curve"]
    monkeypatch.undo()
    assert tgrow(capsys, *args, "--out", out)[0] == 0
    curve = [p["val_loss"] for p in read_json(out / "result.json")["record"]["curve"]]
    whole = [p["val_loss"] for p in read_json(tmp_path / "whole" / "result.json")["record"]["curve"]]
    assert curve == pytest.approx(whole, abs=1e-6)


def test_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert requested() == signal.SIGTERM  # the first only asks the trainer to stop after its step
            os.kill(os.getpid(), signal.SIGTERM)
    assert requested() is None and signal.getsignal(signal.SIGTERM) is before


def test_the_summary_counts_checkpoint_and_evaluation_time(tmp_path, monkeypatch, one_torch_thread):
    data, _ = prepare_bytes_data(tmp_path)
    real = lifecycle.save_checkpoint

    def slow_save(path, ckpt):  # a slow disk: the run spent half its time writing checkpoints
        time.sleep(0.1)
        real(path, ckpt)

    monkeypatch.setattr(lifecycle, "save_checkpoint", slow_save)
    trainer = Trainer(micro_model(), fast_train_config(max_steps=6, ckpt_interval=2), data, out_dir=tmp_path / "run")
    summary = trainer.fit()
    assert summary.checkpoint_seconds >= 0.4  # the initial checkpoint and those of steps 2, 4 and 6
    assert summary.eval_seconds > 0 and summary.wall_seconds > 0
    total = summary.wall_seconds + summary.eval_seconds + summary.checkpoint_seconds
    assert summary.total_seconds == pytest.approx(total)
    assert f"wall {total:.1f}s (training {summary.wall_seconds:.1f}s, evaluation " in summary.line()
    resumed = Trainer.resume(tmp_path / "run", data, fast_train_config(max_steps=8, ckpt_interval=2))
    assert resumed.checkpoint_seconds >= 0.3 and resumed.eval_seconds > 0  # carried over, as the training time is

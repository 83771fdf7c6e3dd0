"""Issue 13.2: a diverged run is recoverable. It ends with one line (exit 1) naming the exact command
that resumes its last good checkpoint with a lower learning rate; that resume may change the
optimizer settings (plain and plan runs alike), recorded as an event in the metrics."""

from __future__ import annotations

import math
import re
import shlex

from reliability_helpers import assert_refused, tgrow, train_args

from transformer_grow.train import read_metrics
from transformer_grow.train.checkpoint import load_checkpoint
from transformer_grow.train.trainer import Trainer

DIVERGING = ["--lr", "300", "--warmup-steps", "40"]


def resume_from_message(err: str, lr: str) -> list[str]:
    """The command the error line names, with a sane learning rate instead of the suggested one."""
    command = shlex.split(re.search(r"(tgrow train .*)$", err.strip()).group(1))[1:]
    at = command.index("--lr") + 1
    return [*command[:at], lr, *command[at + 1:]]


def test_a_diverged_run_resumes_with_a_lower_learning_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    # the learning rate ramps up to 300 over 40 steps: the loss goes non-finite near step 18
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 24), *DIVERGING, "--ckpt-interval", "2",
                               "--log-interval", "1", "--out", out),
                         "training diverged", f"tgrow train --resume {out} --lr", code=1)
    step = load_checkpoint(out).train_state["step"]
    assert f"(step {step})" in err
    rc, _, err = tgrow(capsys, *resume_from_message(err, "1e-3"), "--grad-clip", "0.5")
    assert rc == 0, err
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "optimizer_settings_changed"]
    assert events and events[0]["step"] == step
    assert events[0]["changes"]["lr"] == [300.0, 1e-3] and events[0]["changes"]["grad_clip"] == [1.0, 0.5]
    assert load_checkpoint(out).train_state["step"] == 24


def test_a_diverged_plan_run_resumes_with_a_lower_learning_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_step = Trainer._optimizer_step

    def diverge_once_at_step_10(trainer):  # a loss spike at step 10 (as a too-high LR gives), then never again
        if trainer.step == 9 and not diverged:
            diverged.append(trainer.step)
            raise trainer._diverged("loss", math.nan, 10)
        return real_step(trainer)

    diverged: list[int] = []
    monkeypatch.setattr(Trainer, "_optimizer_step", diverge_once_at_step_10)
    out = tmp_path / "grown"
    args = [*train_args(tmp_path, 36), "--plan", "g_stack", "--n-layer", "2", "--growth-fraction", "0.5"]
    rc, _, err = tgrow(capsys, *args, "--out", out)
    assert rc == 1 and diverged and "Traceback" not in err  # progress lines, then the error as the last line
    err = err.strip().splitlines()[-1]
    assert err.startswith("tgrow train: error: training diverged") and f"--resume {out} --lr 0.0003" in err
    before = load_checkpoint(out).train_state["step"]
    assert 0 < before <= 9
    # without --resume, other settings are still refused (a changed command is not silently a resume)
    assert_refused(tgrow(capsys, *args, "--lr", "1e-3", "--out", out), "other settings")
    rc, _, err = tgrow(capsys, *resume_from_message(err, "1e-3"))
    assert rc == 0, err
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "optimizer_settings_changed"]
    assert events and events[0]["step"] == before and events[0]["changes"]["lr"] == [3e-3, 1e-3]
    assert (out / "result.json").exists()

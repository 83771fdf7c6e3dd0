"""Issue 22.1: divergence a user can recover from. Spikes, stalls at the uniform loss, exploding weights and
NaNs are caught; the message names the newest checkpoint from before the divergence that passes a health
check, a learning rate 10x below the one in use, and the batches to skip.

Every failure here is injected at a chosen step (the loss returned by a step, the final norm zeroed, the
weights scaled), never provoked by a learning rate: where a real run diverges depends on the CPU (see
tests/test_reliability_recovery.py). The one exact comparison (detection on vs off) is of two runs in
one process, which are bitwise equal by design."""

from __future__ import annotations

import math
import re

import pytest
import torch
from reliability_helpers import assert_refused, tgrow, train_args
from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

from transformer_grow.data.tokens import TokenData
from transformer_grow.train import TrainConfig, TrainingDiverged, read_metrics
from transformer_grow.train.checkpoint import load_checkpoint
from transformer_grow.train.health import DivergenceMonitor, checkpoint_health
from transformer_grow.train.schedule import LRSchedule, lr_at
from transformer_grow.train.trainer import Trainer

UNIFORM = math.log(256)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_bytes_data(tmp_path_factory.mktemp("divergence"))[0]


def loss_at(monkeypatch, step: int, value: float) -> None:
    """Step ``step`` (1-based) reports the loss ``value`` (its gradients are the real ones)."""
    real = Trainer.forward_backward

    def forward_backward(trainer, x, y):
        ce, objective = real(trainer, x, y)
        return (value, value) if trainer.step + 1 == step else (ce, objective)

    monkeypatch.setattr(Trainer, "forward_backward", forward_backward)


def collapse_at(monkeypatch, step: int) -> None:
    """From step ``step`` on (once), the final norm's weight is zero and frozen: every logit is 0, the loss
    exactly ln V, and every later checkpoint a collapsed model, as weights blown up to 1e11 give (issue 22)."""
    real, done = Trainer._optimizer_step, []

    def optimizer_step(trainer):
        if trainer.step + 1 == step and not done:
            done.append(step)
            with torch.no_grad():
                trainer.model.norm_f.weight.zero_()
            trainer.model.norm_f.weight.requires_grad_(False)
        return real(trainer)

    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)


def named_step(err: str) -> int:
    return int(re.search(r"newest healthy checkpoint from before it is step (\d+) ", err).group(1))


def test_the_monitor_catches_spikes_and_stalls_not_noise():
    cfg = TrainConfig(max_steps=1)
    monitor = DivergenceMonitor(256)
    for loss in (5.4, 4.0, 3.2, 2.9, 2.8):
        assert monitor.check_loss(loss, 1, cfg) is None
    assert monitor.check_loss(8.0, 6, cfg) is None  # 2.8x the median 3.2: a bad batch, not a spike
    spike = monitor.check_loss(10.9, 7, cfg)  # above 3x the median 3.6
    assert spike.kind == "spike" and spike.step == spike.first_step == 7 and "loss spike 10.9 at step 7" in spike.text
    small = DivergenceMonitor(256)
    for loss in (0.05, 0.06, 0.05):
        small.check_loss(loss, 1, cfg)
    assert small.check_loss(0.5, 4, cfg) is None  # 10x, but within 1 nat: noise at a tiny loss
    stall = DivergenceMonitor(256)
    assert all(stall.check_loss(UNIFORM, s, cfg) is None for s in range(1, 5))
    div = stall.check_loss(UNIFORM + 5e-7, 5, cfg)  # ln V up to fp32 rounding, as a collapsed model gives
    assert div.kind == "stall" and (div.first_step, div.step) == (1, 5)
    assert stall.check_loss(UNIFORM + 1e-4, 6, cfg) is None and stall.pinned == 0  # a nearly uniform output
    off = TrainConfig(max_steps=1, spike_ratio=0, stall_steps=0)
    quiet = DivergenceMonitor(256)
    assert quiet.check_loss(3.0, 1, off) is None and quiet.check_loss(300.0, 2, off) is None
    weights = DivergenceMonitor(256)
    weights.restart(256, weight_ref=10.0)
    assert weights.check_weights(999.0, 3, cfg) is None
    div = weights.check_weights(1001.0, 4, cfg)
    assert div.kind == "weights" and div.applied and "weight norm 1001 after step 4" in div.text
    assert weights.check_weights(math.inf, 5, cfg).kind == "weights"


def test_detection_and_the_ring_do_not_change_a_healthy_run(data, tmp_path, one_torch_thread):
    # two runs in one process are bitwise equal by design: any difference is the monitor's doing
    watched = Trainer(micro_model(), fast_train_config(max_steps=12, ckpt_interval=3), data, out_dir=tmp_path / "a")
    blind = Trainer(micro_model(), fast_train_config(max_steps=12, spike_ratio=0, stall_steps=0, max_weight_growth=0,
                                                     keep_checkpoints=0), data)
    watched.fit()
    blind.fit()
    assert [r["train_loss"] for r in watched.history] == [r["train_loss"] for r in blind.history]
    for (name, a), b in zip(watched.model.state_dict().items(), blind.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_spike_is_refused_and_its_batches_can_be_skipped_on_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    loss_at(monkeypatch, 9, 50.0)
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 12), "--ckpt-interval", "2", "--out", out), code=1)
    assert "training diverged: loss spike 50 at step 9, above 3x the median" in err
    assert "no update was applied" in err and named_step(err) == 8  # the bad batch left step 8's weights healthy
    assert f"tgrow train --resume {out}/checkpoints/step-00000008 --lr " in err
    assert "to also skip the batch 9 trained on since, add --skip-batches 9:9" in err
    monkeypatch.undo()
    seen: list[int] = []
    real_batch = TokenData.batch

    def batch(self, step, *args, **kwargs):
        seen.append(step)
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(TokenData, "batch", batch)
    command = re.search(r"(tgrow train --resume \S+) --lr", err).group(1).split()[1:]
    rc, _, err = tgrow(capsys, *command, "--skip-batches", "9:9")
    assert rc == 0, err
    assert seen == [9, 10, 11, 12]  # steps 9-12 took the batches numbered 10-13: batch 9 is skipped
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "optimizer_settings_changed"]
    assert events[0]["step"] == 8 and events[0]["changes"] == {"skip_batches": [[], ["9:9"]]}
    assert load_checkpoint(out).train_state["train_config"]["skip_batches"] == ["9:9"]
    # a range the checkpoint already trained on cannot be skipped any more
    assert_refused(tgrow(capsys, "train", "--resume", str(out), "--skip-batches", "9:9,3:4", "--max-steps", "14"),
                   "skip_batches range 3:4 is not allowed", "trained on the batches up to 13")


def test_a_stall_at_the_uniform_loss_names_the_checkpoint_before_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    collapse_at(monkeypatch, 5)
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 14), "--ckpt-interval", "2", "--out", out), code=1)
    assert f"loss pinned at the uniform value ln(vocab) = {UNIFORM:.4f} from step 5 to 9" in err
    assert named_step(err) == 4 and "--skip-batches 5:9" in err
    rc, _, err = tgrow(capsys, *re.search(r": (tgrow train --resume .*?--lr \S+)", err).group(1).split()[1:])
    assert rc == 0, err  # the collapse does not come back: training goes on from step 4
    losses = [r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r and r["step"] > 4]
    assert losses and all(abs(x - UNIFORM) > 1e-3 for x in losses)


def test_a_nan_after_a_collapse_rejects_the_collapsed_checkpoints(tmp_path, capsys, monkeypatch):
    # issue 22: the weights blew up (the loss sat at ln V) before a NaN stopped the run, and the "last good
    # checkpoint" it kept was a collapsed model. Now the health check rejects those and names the one before.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    collapse_at(monkeypatch, 5)
    loss_at(monkeypatch, 9, math.nan)
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 12), "--ckpt-interval", "2", "--stall-steps", "0",
                               "--out", out), "non-finite loss nan at step 9", code=1)
    assert named_step(err) == 4
    assert (f"newer ones fail the health check: step 8 (uniform output, loss {UNIFORM:.4f} = ln(vocab)), step 6 "
            "(uniform output") in err


def test_exploding_weights_are_caught_after_their_step(data, tmp_path, one_torch_thread, monkeypatch):
    real = Trainer._optimizer_step

    def blow_up_at_step_6(trainer):
        if trainer.step == 5:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.mul_(1000.0)
        return real(trainer)

    monkeypatch.setattr(Trainer, "_optimizer_step", blow_up_at_step_6)
    trainer = Trainer(micro_model(), fast_train_config(max_steps=10, ckpt_interval=2, spike_ratio=0), data,
                      out_dir=tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=r"weight norm \S+ after step 6, above 100x") as caught:
        trainer.fit()
    div, recovery = caught.value.divergence, caught.value.recovery
    assert div.kind == "weights" and div.applied and "its update was applied" in str(caught.value)
    assert recovery.step == 4 and recovery.checkpoint == tmp_path / "run" / "checkpoints" / "step-00000004"
    assert recovery.skip_batches == ["5:6"]


def test_the_suggested_lr_is_a_tenth_of_the_rate_in_use_not_of_the_peak(tmp_path, capsys, monkeypatch):
    # a spike at step 3 of a 40-step warmup: a tenth of the peak (3e-4) lies above the 2.25e-4 in use
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    loss_at(monkeypatch, 3, 50.0)
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 8), "--warmup-steps", "40", "--ckpt-interval", "2",
                               "--out", out), "loss spike 50 at step 3", code=1)
    cfg = TrainConfig(max_steps=8, lr=3e-3, warmup_steps=40)
    in_use = lr_at(LRSchedule.from_config(cfg, 8), 2)  # step 3: the first after the checkpoint and the spike
    assert in_use == pytest.approx(2.25e-4)
    assert named_step(err) == 2 and f"({in_use:.3g}): tgrow train --resume " in err
    suggested = float(re.search(r" --lr (\S+) ", err).group(1))
    assert suggested == pytest.approx(in_use / 10, rel=1e-3)
    monkeypatch.undo()
    rc, _, err = tgrow(capsys, *re.search(r": (tgrow train --resume .*?--lr \S+)", err).group(1).split()[1:])
    assert rc == 0, err
    rates = [r["lr"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r and r["step"] > 2]
    assert rates and max(rates) <= in_use / 10 * 1.001


def test_checkpoint_health(data, one_torch_thread):
    trainer = Trainer(micro_model(), fast_train_config(max_steps=4), data)
    trainer.train_steps(3)
    inputs, targets = trainer.held_batch()
    cfg = trainer.config
    loss, why = checkpoint_health(trainer.checkpoint(), inputs, targets, cfg)
    assert why is None and 0 < loss < 2 * UNIFORM

    def damaged(change):
        ckpt = trainer.checkpoint()
        change(ckpt)
        return checkpoint_health(ckpt, inputs, targets, cfg)[1]

    assert damaged(lambda c: c.model_state["norm_f.weight"].fill_(math.nan)) == "non-finite weights (norm_f.weight)"
    assert damaged(lambda c: c.optimizer_state["norm_f.weight"]["exp_avg_sq"].fill_(math.inf)).startswith(
        "non-finite Adam exp_avg_sq of norm_f.weight")
    assert damaged(lambda c: c.model_state["norm_f.weight"].zero_()).startswith("uniform output, loss 5.5452")
    assert "x its start" in damaged(lambda c: [t.mul_(1e3) for t in c.model_state.values()])
    # a held-out loss far above the training loss recorded with the checkpoint (about 5 against 0.5)
    assert "far above the training loss" in damaged(lambda c: c.train_state["health"].update(trend=0.5))
    # logits 1e4 times as large: confidently wrong, far worse than the uniform output
    cfg = cfg.replace(max_weight_growth=0)
    assert "above 2x the uniform output" in damaged(lambda c: c.model_state["norm_f.weight"].mul_(1e4))

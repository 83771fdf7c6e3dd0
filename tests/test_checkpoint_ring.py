"""Issue 22.1: the ring of checkpoints a run keeps to recover from a divergence (``<run>/checkpoints/``),
resuming one of them (the steps after it are abandoned), and skipping batches (``skip_batches``)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

from transformer_grow.errors import ConfigError
from transformer_grow.train import TrainConfig, read_metrics
from transformer_grow.train.checkpoint import load_checkpoint
from transformer_grow.train.config import LATER_FIELDS
from transformer_grow.train.ring import RING_DIRNAME, ring_entries
from transformer_grow.train.trainer import Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_bytes_data(tmp_path_factory.mktemp("ring"))[0]


def test_the_ring_keeps_the_newest_checkpoints_and_the_initial_one(data, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    Trainer(micro_model(), fast_train_config(max_steps=6, ckpt_interval=1, keep_checkpoints=2), data,
            out_dir=out).fit()
    entries = ring_entries(out)
    assert [step for step, _ in entries] == [0, 5, 6]
    latest = load_checkpoint(out)
    for step, path in entries:
        ckpt = load_checkpoint(path)  # verified: manifest and hashes
        health = ckpt.train_state["health"]
        assert ckpt.train_state["step"] == step and health["finite"] and health["weight_ref"] > 0
        assert (health["trend"] is None) == (step == 0) and health["next_lr"] > 0
    newest = load_checkpoint(entries[-1][1])
    assert all(torch.equal(newest.model_state[k], v) for k, v in latest.model_state.items())


def test_keep_checkpoints_0_keeps_only_the_latest(data, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    Trainer(micro_model(), fast_train_config(max_steps=3, ckpt_interval=1, keep_checkpoints=0), data,
            out_dir=out).fit()
    assert not (out / RING_DIRNAME).exists() and load_checkpoint(out).train_state["step"] == 3


def test_resuming_a_ring_entry_abandons_the_steps_after_it(data, tmp_path, one_torch_thread):
    config = fast_train_config(max_steps=8, ckpt_interval=2, log_interval=1)
    reference = Trainer(micro_model(), config, data)
    reference.fit()
    out = tmp_path / "run"
    Trainer(micro_model(), config, data, out_dir=out).fit()
    assert [s for s, _ in ring_entries(out)] == [0, 4, 6, 8]
    resumed = Trainer.resume(out / RING_DIRNAME / "step-00000004", data)  # continues in its own run directory
    assert resumed.out_dir == out and resumed.step == 4
    assert [s for s, _ in ring_entries(out)] == [0, 4] and load_checkpoint(out).train_state["step"] == 4
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 4
    health = load_checkpoint(out).train_state["health"]  # the divergence monitor watches on as it did
    assert list(resumed.monitor.losses) == health["losses"] and len(health["losses"]) == 4
    assert resumed.monitor.weight_ref == health["weight_ref"] > 0
    resumed.fit()
    # exact resume (one process, same machine: bitwise by design)
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [s for s, _ in ring_entries(out)] == [0, 4, 6, 8]


def test_a_fresh_run_starts_a_fresh_ring(data, tmp_path, one_torch_thread):
    stale = tmp_path / "run" / RING_DIRNAME / "step-00000042"
    stale.mkdir(parents=True)
    Trainer(micro_model(), fast_train_config(max_steps=2), data, out_dir=tmp_path / "run").fit()
    assert not stale.exists() and [s for s, _ in ring_entries(tmp_path / "run")] == [0, 2]


def test_skip_batches_maps_steps_past_the_skipped_ranges():
    config = TrainConfig(max_steps=20, skip_batches=["10:10", "3:4"])
    assert config.skip_ranges() == [(3, 4), (10, 10)]
    # batch numbers (1-based) 3, 4 and 10 are never taken
    assert [config.batch_index(it) + 1 for it in range(9)] == [1, 2, 5, 6, 7, 8, 9, 11, 12]
    assert TrainConfig(max_steps=1).batch_index(7) == 7


@pytest.mark.parametrize("value, message", [
    (["9"], "skip_batches entry '9' is not allowed; it must be a range A:B"),
    (["5:4"], "skip_batches entry '5:4' is not allowed"),
    (["0:3"], "skip_batches entry '0:3' is not allowed"),
    (["1:5", "5:9"], "skip_batches ranges 1:5 and 5:9 overlap"),
    ("1:5", "skip_batches='1:5' is not allowed; it must be a list of ranges A:B"),
])
def test_bad_skip_batches_are_refused_in_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(max_steps=1, skip_batches=value)


@pytest.mark.parametrize("name, value", [("spike_ratio", 1.0), ("spike_ratio", 1e30), ("max_weight_growth", 0.5),
                                         ("stall_steps", -1), ("keep_checkpoints", 10**7)])
def test_bad_divergence_settings_are_refused_in_one_line(name, value):
    with pytest.raises(ConfigError, match=re.escape(f"{name}={value!r} is not allowed")):
        TrainConfig(max_steps=1, **{name: value})


def test_settings_added_later_leave_earlier_config_files_and_fingerprints_as_they_were():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TrainConfig(max_steps=3).to_dict()) == fields - set(LATER_FIELDS)
    changed = TrainConfig(max_steps=3, spike_ratio=5.0, skip_batches=["4:5"])
    assert changed.to_dict()["spike_ratio"] == 5.0 and TrainConfig.from_dict(changed.to_dict()) == changed


def test_the_suggested_skip_keeps_the_runs_earlier_skips_and_passes_the_resume_check():
    from transformer_grow.train.recovery import _recovery
    from transformer_grow.train.resume import check_skip_change

    config = TrainConfig(max_steps=20, skip_batches=["3:4", "9:9"])
    # resumed from step 4 (batches 1, 2, 5, 6 trained), diverged at step 8 (batches 7, 8, 10, 11 since)
    recovery = _recovery(None, 4, None, 1e-3, config, 8, [])
    assert recovery.skipped == (7, 11) and recovery.skip_batches == ["3:4", "7:11"]  # 9:9 lies inside
    check_skip_change(config.replace(skip_batches=recovery.skip_batches), config, 4)  # accepted
    with pytest.raises(ConfigError, match="range 6:11 is not allowed"):
        check_skip_change(config.replace(skip_batches=["3:4", "6:11"]), config, 4)  # batch 6 was trained on

"""LR schedules (warmup, cosine, warmup-stable-decay, constant, re-warmup) and TrainConfig validation."""

from __future__ import annotations

import math

import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.train import LRSchedule, Rewarmup, TrainConfig, lr_at


def schedule(kind: str, **overrides) -> LRSchedule:
    config = TrainConfig(**{"max_steps": 100, "lr": 1.0, "min_lr_ratio": 0.1, "warmup_steps": 10,
                            "schedule": kind, "decay_frac": 0.2, **overrides})
    return LRSchedule.from_config(config, config.total_steps(seq_len=64))


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_linear_warmup_reaches_peak_on_last_warmup_step(kind):
    s = schedule(kind)
    assert [s(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert s(9) == pytest.approx(1.0)


def test_cosine_decays_to_min_at_last_step():
    s = schedule("cosine")
    assert s(10) == pytest.approx(1.0)
    # Halfway between the end of warmup (10) and the last step (99) the rate is the mean of peak and min.
    assert s(10 + 89 / 2) == pytest.approx(0.55)
    assert s(99) == pytest.approx(0.1)
    assert s(500) == pytest.approx(0.1)  # past the horizon (an extended run) it stays at min
    values = [s(i) for i in range(10, 100)]
    assert values == sorted(values, reverse=True)
    assert s(30) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 20 / 89)))


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    s = schedule("wsd")  # 100 steps, decay over the last 20: steps 80..99
    assert all(s(i) == 1.0 for i in range(10, 81))
    assert s(90) == pytest.approx(1.0 - 0.9 * 10 / 19)
    assert s(99) == pytest.approx(0.1)
    assert s(150) == pytest.approx(0.1)


def test_constant_after_warmup():
    s = schedule("constant")
    assert all(s(i) == 1.0 for i in (10, 50, 99, 1000))


def test_max_tokens_sets_the_horizon():
    config = TrainConfig(max_tokens=10_000, batch_size=4, lr=1.0, warmup_steps=0)
    assert config.total_steps(seq_len=64) == math.ceil(10_000 / 256) == 40
    assert TrainConfig(max_tokens=10_000, max_steps=7, batch_size=4).total_steps(64) == 7  # whichever first


def test_rewarmup_multiplies_the_continuing_global_schedule():
    s = schedule("cosine")
    rewarm = Rewarmup(grow_step=50, steps=4)  # the model was replaced after 50 completed steps
    assert lr_at(s, 49) == s(49)
    for k in range(4):  # step indices 50..53 are the 1st..4th steps after growth
        assert lr_at(s, 50 + k, rewarm) == pytest.approx(s(50 + k) * (k + 1) / 4)
    assert lr_at(s, 60, rewarm) == s(60)
    assert Rewarmup.from_dict(rewarm.to_dict()) == rewarm


@pytest.mark.parametrize("settings, message", [
    ({"max_steps": -5}, "max_steps=-5 is not allowed"),
    ({"max_tokens": 0, "max_steps": None}, "max_tokens=0 is not allowed"),
    ({"max_steps": 3, "batch_size": 6, "grad_accum": 4}, "batch_size=6 is not divisible by grad_accum=4"),
    ({"max_steps": 3, "schedule": "linear"}, "schedule='linear' is not allowed"),
    ({"max_steps": 3, "lr": -1.0}, "lr=-1.0 is not allowed"),
    ({"max_steps": 3, "device": "tpu"}, "device='tpu' is not allowed"),
    ({"max_steps": 3, "dtype": "fp16"}, "dtype='fp16' is not allowed"),
    ({"max_steps": 3, "beta2": 1.0}, "beta2=1.0 is not allowed"),
])
def test_train_config_refuses_bad_values(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**settings)


def test_a_train_config_may_leave_the_budget_to_its_user():
    config = TrainConfig(batch_size=8)  # e.g. next to GrowthManager(budget=...): no max_steps asked for
    with pytest.raises(ConfigError, match="no training budget"):
        config.validate()  # what a Trainer (and tgrow train) checks


def test_train_config_round_trips_and_refuses_unknown_keys():
    config = TrainConfig(max_steps=10, schedule="wsd", lr=1e-3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown train setting.*learning_rate"):
        TrainConfig.from_dict({"max_steps": 1, "learning_rate": 0.1})

"""The trainer's composition: one code path with a ``parallel``, growth events through public methods only.

The 2-process DDP/FSDP runs of the same code path are in tests/test_distributed.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import transformer_grow.run as growth_package
from transformer_grow.data.tokens import TokenData
from transformer_grow.distributed.parallel import Parallel
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.run.event import grow_trainer
from transformer_grow.run.manager import STATE_KEY, GrowthManager
from transformer_grow.run.run_state import GrowthRunState
from transformer_grow.train import TrainConfig, Trainer, load_checkpoint
from transformer_grow.train.schedule import LRSchedule

MODEL = preset("micro", vocab_size=64, seq_len=16, d_model=32, n_head=4)
HOOKS = ("configure", "check_batch", "local_data", "wrap", "check", "start_step", "mean_over_ranks", "unwrap",
         "load_optimizer_state", "gather_state", "barrier")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # micro models: threads only slow a shared CPU



@pytest.fixture(scope="module")
def data() -> TokenData:
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=6000)) % 64  # learnable: mostly token i+1 after token i
    return TokenData(train=tokens[:5000].astype(np.int64), val=tokens[5000:].astype(np.int64), vocab_size=64)


def train_config(**overrides) -> TrainConfig:
    settings = {"batch_size": 4, "grad_accum": 2, "max_steps": 20, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 0,
                "eval_windows": 4, "log_interval": 1, "ckpt_interval": 0, "device": "cpu", "dtype": "fp32", "seed": 0}
    return TrainConfig(**{**settings, **overrides})


class RecordingParallel(Parallel):
    """One process, recording every hook the trainer calls."""

    def __init__(self):
        self.calls: list[str] = []

    def __getattribute__(self, name):
        if name in HOOKS:
            object.__getattribute__(self, "calls").append(name)
        return super().__getattribute__(name)


class ReleasingParallel(RecordingParallel):
    """Like a data-parallel wrapper: unwrap releases the model until it is wrapped again."""

    def __init__(self):
        super().__init__()
        self.released = False

    @property
    def live(self) -> bool:
        return not self.released

    def wrap(self, model, device, compile):
        self.released = False
        return super().wrap(model, device, compile)

    def unwrap(self, model, optimizer):
        self.released = True
        return super().unwrap(model, optimizer)


def train_grow_train(trainer: Trainer) -> list[float]:
    losses = [trainer.train_steps(1) for _ in range(2)]
    grow_trainer(trainer, MODEL.replace(n_layer=4), "stack", rewarmup_steps=1, seed=1)
    return losses + [trainer.train_steps(1) for _ in range(2)]


def test_plain_and_parallel_trainers_share_one_code_path(data, tmp_path):
    plain = Trainer(MODEL, train_config(), data)
    assert type(plain.parallel) is Parallel and plain.is_main  # the default: one process
    recording = RecordingParallel()
    composed = Trainer(MODEL, train_config(), data, out_dir=tmp_path, parallel=recording)
    assert train_grow_train(plain) == train_grow_train(composed)  # bitwise: the hooks are the plain operations
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, composed.model.state_dict()[name]), name
    assert (plain.tokens, plain.flops) == (composed.tokens, composed.flops)
    composed.save()
    calls = recording.calls
    assert calls.count("wrap") == 2 and calls.count("unwrap") == 1  # built, grown
    assert calls.count("check") == calls.count("start_step") == calls.count("mean_over_ranks") == 4
    assert calls.count("load_optimizer_state") == 1  # the grown AdamW moments
    # the initial checkpoint (step 0, the ring's first entry: train/ring.py) and this save
    assert calls.count("gather_state") == 2 and calls.count("barrier") == 2
    composed.close()

    resumed_parallel = RecordingParallel()  # resume takes a parallel directly: no hidden strategy state
    resumed = Trainer.resume(tmp_path, data, parallel=resumed_parallel)
    assert resumed.parallel is resumed_parallel and "load_optimizer_state" in resumed_parallel.calls
    assert resumed.train_steps(1) == composed.train_steps(1)


def test_failed_growth_rewraps_the_old_model_and_keeps_its_rewarmup(data):
    parallel = ReleasingParallel()
    trainer = Trainer(MODEL, train_config(), data, parallel=parallel)
    trainer.train_steps(1)
    grow_trainer(trainer, MODEL.replace(n_layer=4), "stack", rewarmup_steps=5)
    rewarmup, model = trainer.rewarmup, trainer.model
    with pytest.raises(ConfigError, match="whole number of times"):
        grow_trainer(trainer, MODEL.replace(n_layer=6), "stack")  # 4 -> 6 layers is no stacking factor
    assert parallel.live and parallel.calls.count("wrap") == 3  # built, grown, wrapped again after the failure
    assert trainer.model is model and trainer.rewarmup == rewarmup
    assert np.isfinite(trainer.train_steps(1))


def test_replace_model_changes_the_batch_only_when_it_splits(data):
    trainer = Trainer(MODEL, train_config(), data)
    plain, state = trainer.unwrap()
    with pytest.raises(ConfigError, match="batch_size=5 is not divisible"):
        trainer.replace_model(plain, state, batch_size=5)  # not 2 equal micro-batches
    assert trainer.config.batch_size == 4
    trainer.replace_model(plain, state, batch_size=8)
    assert trainer.config.batch_size == 8 and trainer.tokens_per_step == 8 * 16
    trainer.train_steps(1)
    assert trainer.tokens == 8 * 16


def test_driver_methods_schedule_time_and_checkpointed_state(data, tmp_path):
    trainer = Trainer(MODEL, train_config(), data, out_dir=tmp_path)
    schedule = LRSchedule.from_config(trainer.config.replace(warmup_steps=0), 50)
    trainer.set_schedule(schedule)
    assert trainer.total_steps == 50 and trainer.lr == schedule(0)
    with pytest.raises(ConfigError, match="schedule=.*must be callable"):
        trainer.set_schedule(0.1)
    before = trainer.wall_seconds
    with trainer.timed():
        sum(range(10_000))
    assert trainer.wall_seconds > before
    assert trainer.driver_state("plan") is None
    trainer.set_driver_state("plan", {"stage": 1, "curve": [0.5]})
    trainer.train_steps(1)
    trainer.save()
    trainer.close()
    assert load_checkpoint(tmp_path).train_state["extra"] == {"plan": {"stage": 1, "curve": [0.5]}}
    assert Trainer.resume(tmp_path, data).driver_state("plan") == {"stage": 1, "curve": [0.5]}


def test_growth_manager_uses_only_the_trainers_public_api(data, tmp_path, monkeypatch):
    """Every attribute the growth package reads or writes on a trainer is public, and it writes none."""
    growth_dir = str(Path(growth_package.__file__).parent)
    touched = set()

    def from_growth() -> bool:
        return sys._getframe(2).f_code.co_filename.startswith(growth_dir)

    def spying_get(self, name):
        if name.startswith("_") and not name.startswith("__") and from_growth():
            touched.add(f"read {name}")
        return object.__getattribute__(self, name)

    def spying_set(self, name, value):
        if from_growth():
            touched.add(f"wrote {name}")
        object.__setattr__(self, name, value)

    monkeypatch.setattr(Trainer, "__getattribute__", spying_get)
    monkeypatch.setattr(Trainer, "__setattr__", spying_set)
    manager = GrowthManager(MODEL.replace(n_layer=4), "g_stack", budget_tokens=16 * 4 * 16,
                            train_config=train_config(max_steps=1), plan_options=PlanOptions(schedule="restart"),
                            n_evals=4, eval_windows=4, out_dir=tmp_path, log=None)
    record = manager.run(data).record
    assert len(record.events) == 1 and record.events[0]["schedule"] == "restart"
    assert touched == set()
    saved = load_checkpoint(tmp_path).train_state["extra"][STATE_KEY]
    assert GrowthRunState.from_dict(saved).to_dict() == saved and saved["stage"] == 1


def test_run_state_reads_and_writes_the_checkpoint_json_of_the_untyped_dict():
    old = {"fingerprint": "abc", "stage": 1,
           "curve": [{"step": 0, "tokens": 0, "flops": 0.0, "wall_seconds": 0.0, "val_loss": 4.1, "stage": 0},
                     {"step": 8, "tokens": 512, "flops": 3.5e6, "wall_seconds": 1.5, "val_loss": 3.2, "stage": 1}],
           "events": [{"step": 4, "operator": "depth=stack"}], "stages": [{"index": 0, "steps": 4}],
           "next_eval": 3, "stage_start": {"step": 4, "tokens": 256, "flops": 1000, "wall_seconds": 0.7},
           "stage_end_step": 12, "schedule": {"start_step": 4, "start_spent": 1000.0, "restart": True}}
    state = GrowthRunState.from_dict(json.loads(json.dumps(old)))
    assert state.curve[1].val_loss == 3.2 and state.stage_start.step == 4 and state.schedule.restart
    assert json.dumps(state.to_dict()) == json.dumps(old)  # same keys, order and values
    with_notes = {**old, "trigger_notes": ["the curve flattened"]}
    assert GrowthRunState.from_dict(with_notes).to_dict() == with_notes

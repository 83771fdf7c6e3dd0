"""GrowthManager on micro plans: trigger guards, optimizer-state policies, LR restart, evaluation."""

import numpy as np
import pytest
import torch

from transformer_grow.data import TokenData
from transformer_grow.growth.builders import PlanOptions
from transformer_grow.growth.manager import GrowthManager
from transformer_grow.growth.plan import PlateauTrigger
from transformer_grow.model import preset
from transformer_grow.train.config import TrainConfig

TARGET = preset("micro", vocab_size=64, n_layer=2, seq_len=16, d_model=32, n_head=2)
TRAIN = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu")
BUDGET = 60 * 4 * 16  # 60 baseline steps


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # a learnable sequence: mostly token i+1 after token i
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % 64
    return TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=64)


def run(data, plan, **options):
    manager = GrowthManager(TARGET, plan, budget_tokens=BUDGET, train_config=TRAIN,
                            plan_options=PlanOptions(**options), n_evals=6, eval_windows=4, log=None)
    return manager, manager.run(data)


def test_adaptive_plan_grows_at_max_fraction_when_the_curve_never_flattens(data):
    trigger = PlateauTrigger(min_fraction=0.1, max_fraction=0.4, min_gain_ratio=1e-9)
    manager, result = run(data, "adaptive", trigger=trigger)
    (event,) = result.record.events
    step_flops = 4 * 16 * result.record.stages[0]["flops_per_token"]
    assert 0.4 * manager.budget - step_flops <= event["flops"] <= 0.4 * manager.budget
    assert abs(result.record.total_flops - manager.budget) <= 4 * 16 * result.record.stages[1]["flops_per_token"]


def test_carried_and_fresh_optimizer_state_after_growth(data):
    carried, _ = run(data, "g_stack", growth_fraction=0.3)
    fresh, _ = run(data, "g_stack", growth_fraction=0.3, optimizer="fresh")
    (c_event,), (f_event,) = carried.state["events"], fresh.state["events"]
    assert c_event["optimizer"] == "carry" and f_event["optimizer"] == "fresh"
    # same small-model training, same growth: identical loss right after growth
    assert c_event["val_loss_after"] == pytest.approx(f_event["val_loss_after"], abs=1e-6)
    # ... but different training afterwards (the moments differ)
    assert carried.state["curve"][-1]["val_loss"] != fresh.state["curve"][-1]["val_loss"]


def test_schedule_restart_and_rewarmup_after_growth(data):
    manager, result = run(data, "g_stack", growth_fraction=0.5, schedule="restart", rewarmup_steps=5)
    trainer = manager.trainer
    grow_step = result.record.events[0]["step"]
    assert trainer.schedule.start_step == grow_step and trainer.rewarmup.grow_step == grow_step
    continued, _ = run(data, "g_stack", growth_fraction=0.5)
    assert continued.trainer.schedule.start_step == 0


def test_evaluation_uses_the_same_windows_for_every_run(data):
    a, _ = run(data, "scratch")
    b, _ = run(data, "g_stack", growth_fraction=0.3)
    assert torch.equal(a._windows, b._windows) and a._windows.shape == (4, TARGET.seq_len + 1)


def test_stage_batches_that_do_not_split_are_refused_before_training():
    from transformer_grow.distributed.env import DistEnv
    from transformer_grow.errors import ConfigError

    three_ranks = DistEnv(0, 3, 0, torch.device("cpu"), "gloo")  # no process group needed: refused first
    refusal = r"^small L=1: batch_size=4 is not divisible by world_size \* grad_accum = 3 \* 1"
    with pytest.raises(ConfigError, match=refusal):
        GrowthManager(TARGET, "g_stack", budget_tokens=BUDGET, train_config=TRAIN, strategy="ddp", env=three_ranks,
                      plan_options=PlanOptions(growth_fraction=0.5), log=None)
    with pytest.raises(ConfigError, match="strategy='zero'"):
        GrowthManager(TARGET, "g_stack", budget_tokens=BUDGET, train_config=TRAIN, strategy="zero",
                      plan_options=PlanOptions(growth_fraction=0.5), log=None)

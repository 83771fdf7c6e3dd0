"""FLOP accounting of plans against a hand computation, and the budget-axis LR schedule."""

import pytest

from transformer_grow.model import preset
from transformer_grow.plans.accounting import account_plan, flops_per_token, param_counts
from transformer_grow.plans.plan import GrowthEvent, GrowthPlan, Stage
from transformer_grow.run.budget import BudgetSchedule
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.schedule import LRSchedule

TARGET = preset("micro", vocab_size=256, n_layer=4)  # d=64, 4 heads of 16, SwiGLU d_ff=192, seq 64
SMALL = TARGET.replace(n_layer=2)


def hand_flops_per_token(n_layer: int) -> int:
    # Per block: q,k,v,o 4*64*64 + SwiGLU 3*64*192 + two RMSNorm weights 2*64; plus the final norm.
    n = n_layer * (4 * 64 * 64 + 3 * 64 * 192 + 2 * 64) + 64
    return 6 * n + 6 * 64 * 256 + 6 * n_layer * 64 * 64  # blocks + output head + attention (T=64, d_attn=64)


def test_flops_per_token_matches_hand_computation():
    assert hand_flops_per_token(2) == 788_352 and hand_flops_per_token(4) == 1_478_016
    assert flops_per_token(SMALL) == 788_352
    assert flops_per_token(TARGET) == 1_478_016
    assert param_counts(SMALL) == (106_816 + 256 * 64, 106_816)  # tied embedding counted once


def plan(mode: str) -> GrowthPlan:
    return GrowthPlan("two", [Stage(SMALL, tokens=5120), Stage(TARGET, growth=GrowthEvent())],
                      budget_tokens=20480, budget_mode=mode)


def test_two_stage_plan_in_tokens_mode():
    account = account_plan(plan("tokens"), tokens_per_step=8 * 64)
    assert [s.steps for s in account.stages] == [10, 30]
    assert [s.tokens for s in account.stages] == [5120, 15360]
    assert account.total_tokens == 20480
    assert account.total_flops == 5120 * 788_352 + 15360 * 1_478_016


def test_two_stage_plan_in_flops_mode_spends_the_baselines_flops():
    account = account_plan(plan("flops"), tokens_per_step=8 * 64)
    budget = 20480 * 1_478_016
    assert account.budget == budget
    # the rest after the small stage: (budget - 5120 * 788352) / (512 * 1478016) = 34.67 -> 35 steps
    assert [s.steps for s in account.stages] == [10, 35]
    assert account.total_tokens == 5120 + 35 * 512
    assert account.total_flops == 5120 * 788_352 + 35 * 512 * 1_478_016
    assert abs(account.total_flops - budget) <= 512 * 1_478_016 / 2  # within half a step of the budget
    assert "total" in account.table()[-2]


def test_shorter_context_stage_keeps_tokens_per_step():
    short = SMALL.replace(seq_len=32)
    account = account_plan(GrowthPlan("s", [Stage(short, tokens=5120), Stage(TARGET, growth=GrowthEvent())],
                                      budget_tokens=20480, budget_mode="tokens"), tokens_per_step=512)
    assert [s.batch_size for s in account.stages] == [16, 8]


def test_budget_schedule_equals_the_step_schedule_when_steps_cost_the_same():
    cfg = TrainConfig(lr=1.0, warmup_steps=5, min_lr_ratio=0.1, max_steps=50)
    steps = LRSchedule.from_config(cfg, 50)
    spent = {"x": 0.0}
    on_budget = BudgetSchedule(steps, 0, 0.0, 49 * 3.0, lambda: spent["x"])
    for it in range(50):
        spent["x"] = it * 3.0  # every step costs 3 units
        assert on_budget(it) == pytest.approx(steps(it), abs=1e-12)


def test_budget_schedule_advances_with_spending_not_steps():
    cfg = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, max_steps=11)
    schedule = BudgetSchedule(LRSchedule.from_config(cfg, 11), 0, 0.0, 100.0, lambda: 50.0)
    assert schedule(3) == pytest.approx(0.5)  # half the budget spent: cosine at its midpoint, whatever the step

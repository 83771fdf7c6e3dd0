"""The adaptive expert count (decisions on hand-built routing windows, its schedule) and the MoE growth
plans ``upcycle`` and ``dynamic`` run end to end by the GrowthManager."""

import numpy as np
import pytest
import torch

from transformer_grow.data import TokenData
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, preset
from transformer_grow.plans.builders import PlanOptions, build_plan
from transformer_grow.plans.experts import ExpertAdaptation
from transformer_grow.run.experts import ExpertController, window_stats
from transformer_grow.run.manager import GrowthManager
from transformer_grow.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TARGET = preset("micro", vocab_size=64, n_layer=2, seq_len=16, d_model=32, n_head=2, n_expert=4,
                moe_router="topany", moe_top_k=2)
TRAIN = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu")
BUDGET = 60 * 4 * 16


def window(load, fallback=0, tokens=100, fallback_sum=None):
    load = torch.tensor(load)
    return {"tokens": torch.tensor(tokens), "assignments": load.sum(), "expert_tokens": load,
            "fallback_tokens": torch.tensor(fallback),
            "fallback_sum": torch.zeros(32) if fallback_sum is None else fallback_sum}


def test_decisions_on_hand_built_windows():
    torch.manual_seed(0)
    model = GPT(TARGET)
    for layer in (b.mlp for b in model.blocks.values()):
        layer(torch.randn(1, 4, 32))  # counters exist
    control = ExpertController(ExpertAdaptation(interval=10, window=5, min_unrouted=0.05, overload=2.0))
    direction = torch.zeros(32)
    direction[3] = 5.0
    counts = {"0": window([60, 40, 0, 20], fallback=10, fallback_sum=direction),  # idle 2, 10% unrouted
              "1": window([90, 5, 5, 5])}  # expert 0 takes 86% > 2 x 1/4: overloaded
    remove, add = control.decide(model, counts)
    assert remove == {"0": [2]}
    new0 = add["0"][0]
    torch.testing.assert_close(new0.routing, direction / 5.0)  # the mean direction of the unrouted tokens
    assert new0.copy_of == 0 and new0.threshold == TARGET.moe_threshold_init
    new1 = add["1"][0]
    vector = model.blocks["1"].mlp.router.weight.detach()[0]
    assert new1.copy_of == 0 and (new1.routing - vector).norm() < 1e-2 * vector.norm()
    assert (new1.routing - vector).norm() > 0  # symmetry-breaking noise
    balanced = {"0": window([25, 25, 25, 25]), "1": window([30, 20, 25, 25])}
    assert control.decide(model, balanced) == ({}, {})
    exact = ExpertController(ExpertAdaptation(new_threshold="exact", min_experts=4))
    remove, add = exact.decide(model, counts)
    assert remove == {} and add["0"][0].threshold is None  # min_experts keeps the idle one


def test_window_report_hand_values():
    stats = window_stats({"0": window([50, 50, 0, 0], fallback=10), "1": window([25, 25, 25, 25])})
    assert stats["mean_active_experts"] == pytest.approx(1.0)
    assert stats["unrouted"] == pytest.approx(0.05)
    assert stats["load_imbalance"] == pytest.approx((4 * 0.5 + 1.0) / 2)  # E sum f^2: 2 and 1
    assert stats["experts"] == [4, 4]


def test_schedule_marks_window_starts_and_decisions():
    control = ExpertController(ExpertAdaptation(interval=10, window=4))
    boundaries, step = [], 0
    while step < 30:
        step += control.steps_to_next(step)
        boundaries.append(step)
    assert boundaries[:6] == [6, 10, 16, 20, 26, 30]
    with pytest.raises(ConfigError, match="window"):
        ExpertAdaptation(interval=10, window=11).validate()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % 64
    return TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=64)


def run(data, plan, target=TARGET, **adaptation):
    options = PlanOptions(growth_fraction=0.3, expert_adaptation=ExpertAdaptation(**adaptation))
    manager = GrowthManager(target, plan, budget_tokens=BUDGET, train_config=TRAIN, plan_options=options,
                            n_evals=5, eval_windows=4, log=None)
    return manager, manager.run(data)


@pytest.mark.parametrize("new_threshold", ["init", "exact"])
def test_dynamic_plan_adapts_experts_records_events_and_holds_the_flops_budget(data, new_threshold):
    manager, result = run(data, "dynamic", interval=10, window=5, min_unrouted=0.0, overload=1.2,
                          new_threshold=new_threshold)
    events = result.record.events
    assert events[0]["operator"] == "experts=upcycle" and events[0]["kind"] == "exact"
    adapt = [e for e in events[1:] if e["operator"] == "experts=adapt"]
    assert adapt and all(e["step"] % 10 == 0 for e in adapt)
    assert adapt[-1]["experts"] == result.model.config.experts_per_layer()
    if new_threshold == "exact":  # added experts cannot fire at first: measured on the validation windows
        additions_only = [e for e in adapt if not any(c["removed"] for c in e["changes"].values())]
        assert additions_only and all(e["kind"] == "exact" and e["max_abs_dlogits"] == 0 for e in additions_only)
    # the budget in FLOPs is held on the routers' measured choices, not the planned top-k
    assert abs(result.record.total_flops / manager.budget - 1) < 0.03
    routing = result.record.stages[-1]["routing"]
    assert routing and all(p["mean_active_experts"] >= 1 for p in routing)
    # the optimizer holds state for exactly the current model's parameters
    trainer = manager.trainer
    assert {id(p) for p in trainer.optimizer.state} <= {id(p) for p in trainer.model.parameters()}


def test_upcycle_plan_with_a_fixed_router_keeps_its_experts(data):
    target = TARGET.replace(moe_router="softmax_topk")
    _, result = run(data, "upcycle", target=target)
    assert [e["operator"] for e in result.record.events] == ["experts=upcycle"]
    assert result.record.events[0]["val_loss_before"] == pytest.approx(result.record.events[0]["val_loss_after"],
                                                                        abs=1e-4)
    assert result.record.stages[-1]["routing"][-1]["mean_active_experts"] == pytest.approx(2.0)


def test_plan_settings_are_checked():
    with pytest.raises(ConfigError, match="top-any"):
        build_plan("dynamic", TARGET.replace(moe_router="softmax_topk"), BUDGET, PlanOptions())
    with pytest.raises(ConfigError, match="n_expert"):
        build_plan("upcycle", TARGET.replace(n_expert=0), BUDGET, PlanOptions())
    plan = build_plan("dynamic", TARGET, BUDGET, PlanOptions())
    assert plan.to_dict()["expert_adaptation"]["interval"] == 100
    assert [s.model.n_expert for s in plan.stages] == [0, 4]

"""The LiGO phase of a training run (run/ligo_phase.py): batches drawn from the trainer, FLOPs and
tokens counted by hand, optimizer state fresh or mapped, the grown model saved, resumed and trained
on; the ``ligo`` plan in accounting, GrowthManager (plan and seed API) and the CLI."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from transformer_grow.cli.main import main
from transformer_grow.data import TokenData
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, preset
from transformer_grow.operators.ligo import ligo_layout
from transformer_grow.optim_state import optimizer_state_by_name
from transformer_grow.plans.accounting import account_plan, flops_per_token
from transformer_grow.plans.builders import PlanOptions, build_plan, check_plan_options_apply
from transformer_grow.plans.ligo import ligo_phase_cost, ligo_steps_for
from transformer_grow.run.event import grow_trainer
from transformer_grow.run.manager import GrowthManager
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, SEQ, BATCH = 64, 16, 4
SMALL = preset("micro", vocab_size=VOCAB, n_layer=2, seq_len=SEQ, d_model=32, n_head=2)
TRAIN = TrainConfig(batch_size=BATCH, lr=3e-3, warmup_steps=2, max_steps=40, device="cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % VOCAB  # mostly token i+1 after token i
    return TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=VOCAB)


def trained_small(data, steps=8):
    trainer = Trainer(SMALL, TRAIN, data)
    trainer.train_steps(steps)
    return trainer


def test_phase_draws_the_next_batches_and_counts_its_flops_by_hand(data, monkeypatch):
    trainer = trained_small(data)
    step, tokens, flops = trainer.step, trainer.tokens, trainer.flops
    drawn = []
    real_batch = data.batch
    monkeypatch.setattr(data, "batch", lambda s, *a, **k: drawn.append(s) or real_batch(s, *a, **k))
    result = grow_trainer(trainer, {"n_layer": 4}, "ligo", ligo_steps=3, ligo_lr=1e-2)
    assert drawn == [step, step + 1, step + 2]  # the run's next batches; training goes on after them
    assert trainer.step == step + 3 and trainer.model.config.n_layer == 4
    layout = ligo_layout(GPT(SMALL), {"n_layer": 4})
    block = sum(p.numel() for n, p in GPT(SMALL).named_parameters() if n.startswith("blocks.0."))
    assert layout.flops(training=True) == 2 * (2 * 4 * 2 * block)  # depth only: 2 c_d, c_d = 2 * L2 * (L1 * T)
    grown_fpt = flops_per_token(SMALL.replace(n_layer=4))
    assert trainer.tokens - tokens == 3 * BATCH * SEQ
    assert trainer.flops - flops == 3 * (BATCH * SEQ * grown_fpt + layout.flops(True)) + layout.flops(False)
    options = result.report.options
    assert options["ligo_steps"] == 3 and options["ligo_flops"] == trainer.flops - flops
    assert np.isfinite(options["ligo_loss_first"]) and np.isfinite(options["ligo_loss_last"])
    n_small, n_grown = (sum(p.numel() for p in GPT(c).parameters()) for c in (SMALL, SMALL.replace(n_layer=4)))
    assert options["ligo_bound_bytes"] == 4 * (n_small + n_grown + layout.operator_params())  # fp32
    event = [r for r in trainer.history if r.get("event") == "ligo"]
    assert len(event) == 1 and event[0]["ligo_tokens"] == 3 * BATCH * SEQ


def test_carried_moments_follow_the_initial_stack_map_fresh_starts_empty(data):
    trainer = trained_small(data)
    _, state = trainer.unwrap()
    source = state["blocks.1.attn.q_proj.weight"]["exp_avg"].clone()
    grow_trainer(trainer, {"n_layer": 4}, "ligo", ligo_steps=1)
    grown = optimizer_state_by_name(trainer.model, trainer.optimizer)
    copies = [k for k in trainer.model.block_keys if k.startswith("1")]  # block 1 and its stacked copy
    assert len(copies) == 2
    for key in copies:
        assert torch.equal(grown[f"blocks.{key}.attn.q_proj.weight"]["exp_avg"], source)
    fresh = trained_small(data)
    grow_trainer(fresh, {"n_layer": 4}, "ligo", ligo_steps=1, optimizer="fresh")
    assert not fresh.optimizer.state


def test_grown_model_saves_loads_and_trains_on(data, tmp_path):
    trainer = trained_small(data)
    grow_trainer(trainer, {"n_layer": 4, "d_model": 64}, "ligo", ligo_steps=2)
    assert trainer.model.config.d_model == 64 and trainer.model.config.n_head == 4  # heads cloned with width
    trainer.train_steps(2)
    trainer.save(tmp_path / "ckpt")
    resumed = Trainer.resume(tmp_path / "ckpt", data)
    x, _ = data.batch(0, 2, SEQ, 0)
    with torch.no_grad():
        assert torch.equal(resumed.model(x).logits, trainer.model(x).logits)
    assert (resumed.step, resumed.flops, resumed.tokens) == (trainer.step, trainer.flops, trainer.tokens)
    assert resumed.train_steps(2) == pytest.approx(trainer.train_steps(2), abs=1e-5)  # same batches, same update


def test_failed_phase_leaves_the_old_model_training(data):
    trainer = trained_small(data)
    with pytest.raises(ConfigError, match="heads=zero"):
        grow_trainer(trainer, {"n_head": 4}, "ligo", ligo_steps=1)
    assert trainer.model.config == SMALL and trainer.step == 8
    with pytest.raises(ConfigError, match="preserve='dynamics' is not allowed"):
        grow_trainer(trainer, {"n_layer": 4}, "ligo", preserve="dynamics")
    with pytest.raises(ConfigError, match="does not take option"):
        grow_trainer(trainer, {"n_layer": 4}, "ligo", noise="plain")
    trainer.train_steps(1)


# ------------------------------------------------------------------------------------ plans
TARGET = SMALL.replace(n_layer=4)
BUDGET = 60 * BATCH * SEQ


def test_default_steps_are_one_percent_of_the_budget_within_the_papers_hundred():
    assert ligo_steps_for({"ligo_tokens": 640}, 64) == 10
    assert ligo_steps_for({"ligo_tokens": 10}, 64) == 1
    assert ligo_steps_for({"ligo_tokens": 10**9}, 64) == 100
    assert ligo_steps_for({"ligo_steps": 7, "ligo_tokens": 640}, 64) == 7
    plan = build_plan("ligo", TARGET, 64_000, PlanOptions())
    assert plan.stages[1].growth.method == "ligo"
    assert plan.stages[1].growth.options == {"depth": "stack", "ligo_steps": None, "ligo_lr": 1e-2,
                                             "ligo_tokens": 640}
    assert [s.model.n_layer for s in plan.stages] == [2, 4]  # g_stack's stages


def test_account_includes_the_phase_and_the_last_stage_takes_the_rest():
    options = PlanOptions(ligo_steps=5, growth_fraction=0.5)
    account = account_plan(build_plan("ligo", TARGET, BUDGET, options), BATCH * SEQ)
    g_stack = account_plan(build_plan("g_stack", TARGET, BUDGET, PlanOptions(growth_fraction=0.5)), BATCH * SEQ)
    target = account.stages[1]
    layout = ligo_layout(GPT(SMALL), {"n_layer": 4})
    phase = 5 * (BATCH * SEQ * flops_per_token(TARGET) + layout.flops(True)) + layout.flops(False)
    assert (target.growth_steps, target.growth_tokens, target.growth_flops) == (5, 5 * BATCH * SEQ, phase)
    assert ligo_phase_cost(SMALL, TARGET, {"ligo_steps": 5}, BATCH * SEQ).flops == phase
    assert account.stages[0].steps == g_stack.stages[0].steps
    # the phase costs 5 steps of the target plus the operator's products: about 5 fewer target steps
    assert target.steps == round((account.budget - account.stages[0].flops - phase)
                                 / (BATCH * SEQ * flops_per_token(TARGET)))
    assert account.total_flops == sum(s.flops for s in account.stages) + phase
    assert any("growth phase" in row for row in account.table())


def test_ligo_options_belong_to_the_ligo_plan():
    check_plan_options_apply(["ligo"], ["ligo_steps", "ligo_lr", "growth_factor"])
    with pytest.raises(ConfigError, match="ligo_steps does not apply to plan g_stack"):
        check_plan_options_apply(["g_stack"], ["ligo_steps"])
    with pytest.raises(ConfigError, match="ligo_lr=0 is not allowed"):
        PlanOptions(ligo_lr=0).validate()
    with pytest.raises(ConfigError, match="ligo_steps=0 is not allowed"):
        PlanOptions(ligo_steps=0).validate()
    with pytest.raises(ConfigError, match="does not apply to LiGO"):
        build_plan("ligo", TARGET, BUDGET, PlanOptions(preserve="dynamics"))


def test_manager_runs_the_ligo_plan_on_its_accounted_budget(data):
    manager = GrowthManager(TARGET, "ligo", budget_tokens=BUDGET, train_config=TRAIN.replace(max_steps=1),
                            plan_options=PlanOptions(ligo_steps=4, growth_fraction=0.5), n_evals=3, eval_windows=4,
                            log=None)
    result = manager.run(data)
    assert result.record.total_flops == manager.account.total_flops  # the phase's FLOPs, as planned
    assert manager.trainer.step == manager.account.total_steps
    event = result.record.events[0]
    assert event["operator"] == "ligo(depth=stack)" and event["kind"] == "none"
    plan_phase = manager.account.stages[1]  # the run record carries the phase's steps and counted FLOPs
    assert event["ligo_steps"] == 4 and event["ligo_flops"] == plan_phase.growth_flops > 0
    assert result.model.config.n_layer == 4 and np.isfinite(result.final_val_loss)


def test_seed_api_strategy_ligo(data):
    windows = torch.as_tensor(data.val_windows(SEQ, 64))
    model = GPT(SMALL)
    manager = GrowthManager(model=model, strategy="ligo", target_size={"n_layer": 4}, budget=f"{BUDGET} tokens",
                            plan_options=PlanOptions(ligo_steps=2, growth_fraction=0.5),
                            train_config=TRAIN.replace(max_steps=1), n_evals=2, eval_windows=4, log=None)
    assert manager.plan.name == "ligo" and manager.plan.stages[1].growth.method == "ligo"
    large = manager.grow_and_train(DataLoader(windows[:-8], batch_size=BATCH), DataLoader(windows[-8:], batch_size=4))
    assert large.config.n_layer == 4 and manager.result.record.events[0]["operator"].startswith("ligo")


def test_cli_plan_shows_the_ligo_phase(capsys):
    assert main(["plan", "--plan", "ligo", "--preset", "micro", "--vocab-size", "64", "--budget-tokens", "200K",
                 "--batch-size", "4", "--ligo-steps", "3", "--ligo-lr", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "growth phase" in out and "grow by ligo" in out and "ligo_lr=0.02" in out


def test_ligo_plan_grows_width_too(data):
    """``ligo_width_factor``: the small model is narrower as well; LiGO learns depth and width expansions,
    starts exactly as stack + clone, and its phase is accounted like the depth-only one."""
    options = PlanOptions(ligo_steps=3, growth_fraction=0.5, ligo_width_factor=2)
    plan = build_plan("ligo", TARGET, BUDGET, options)
    small = plan.stages[0].model
    assert (small.n_layer, small.d_model, small.n_head, small.head_dim) == (2, 16, 1, 16)
    event = plan.stages[1].growth
    assert event.method == "ligo" and event.options["depth"] == "stack" and event.options["width"] == "clone"
    layout = ligo_layout(GPT(small), {"n_layer": 4, "d_model": 32, "n_head": 2, "d_ff": TARGET.d_ff})
    account = account_plan(plan, BATCH * SEQ)
    phase = 3 * (BATCH * SEQ * flops_per_token(TARGET) + layout.flops(True)) + layout.flops(False)
    assert account.stages[1].growth_flops == phase
    manager = GrowthManager(TARGET, plan, budget_tokens=BUDGET, train_config=TRAIN.replace(max_steps=1), n_evals=3,
                            eval_windows=4, log=None)
    result = manager.run(data)
    event = result.record.events[0]
    assert event["operator"].startswith("ligo(") and "width=clone" in event["operator"], event["operator"]
    assert event["ligo_steps"] == 3 and result.record.total_flops == manager.account.total_flops
    assert result.model.config.d_model == 32 and result.model.config.n_layer == 4
    assert np.isfinite(result.final_val_loss)
    check_plan_options_apply(["ligo"], ["ligo_width_factor", "width_method"])
    with pytest.raises(ConfigError, match="ligo_width_factor does not apply to plan g_stack"):
        check_plan_options_apply(["g_stack"], ["ligo_width_factor"])
    with pytest.raises(ConfigError, match="ligo_width_factor=0 is not allowed"):
        PlanOptions(ligo_width_factor=0).validate()

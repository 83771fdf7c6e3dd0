"""The adaptive growth trigger with an annealing-bonus prior file (`PlanOptions.anneal_prior`,
`--anneal-prior`): the flag, its refusal before any work, and what the prior changes in the trigger's fit."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from reliability_helpers import assert_refused, tgrow, train_args
from test_cli_flags import parse

import transformer_grow.run.manager as manager_module
from transformer_grow.cli.plan import PLAN_FLAGS, plan_options_from_args
from transformer_grow.data import TokenData
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import AdaptivePlan, PlanOptions, build_plan
from transformer_grow.plans.plan import GrowthPlan, PlateauTrigger
from transformer_grow.run.manager import GrowthManager
from transformer_grow.run.trigger import stage_schedule, trigger_fires
from transformer_grow.scaling.anneal_prior import AnnealPrior
from transformer_grow.scaling.schedule_laws import schedule_features
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.schedule import LRSchedule

BUDGET = 1000.0  # one budget unit per step of the stage: the stage's model would spend it in 1000 steps
TRIGGER = PlateauTrigger(min_fraction=0.1, max_fraction=0.9, horizon_fraction=0.1, min_gain_ratio=0.1)
PRIOR = AnnealPrior(ratio=0.1, log_sd=0.2, n_runs=5)
TARGET = preset("micro", vocab_size=64, n_layer=2, seq_len=16, d_model=32, n_head=2)


def write_prior(path, prior=PRIOR):
    path.write_text(json.dumps(prior.to_dict()))
    return path


def wsd_stage(now=500):
    """A stage from step 0 under a WSD schedule over the budget (decay in its last 20%), at step ``now``."""
    schedule = LRSchedule("wsd", peak_lr=1e-2, min_lr=1e-3, warmup_steps=20, total_steps=1000, decay_steps=200)
    trainer = SimpleNamespace(step=now, schedule=schedule, rewarmup=None)
    steps = list(range(50, now + 1, 50))
    return trainer, steps


def b_term(note: str) -> float:
    return float(re.search(r"\+ ([0-9.e+-]+) w \(", note).group(1))


def test_the_flag_exists_and_round_trips(tmp_path, capsys):
    path = str(write_prior(tmp_path / "prior.json"))
    assert PLAN_FLAGS.flag("anneal_prior") == "--anneal-prior"
    options = plan_options_from_args(parse("train", "--anneal-prior", path))
    assert options == PlanOptions(anneal_prior=path)
    assert plan_options_from_args(parse("train")).anneal_prior is None  # not given: no prior
    plan = build_plan("adaptive", TARGET, 20_000, options)
    assert isinstance(plan, AdaptivePlan) and plan.anneal_prior == PRIOR
    assert plan.to_dict()["anneal_prior"] == PRIOR.to_dict()  # in the run's fingerprint: a resume keeps it
    plain = build_plan("adaptive", TARGET, 20_000, PlanOptions())
    assert type(plain) is GrowthPlan and "anneal_prior" not in plain.to_dict()  # unchanged without a prior
    rc, out, err = tgrow(capsys, "plan", "--plan", "adaptive", "--preset", "micro", "--budget-tokens", "1M",
                         "--anneal-prior", path)
    assert rc == 0, err
    assert "anneal prior" in out and "pooled over 5 completed run(s)" in out


def test_the_prior_applies_only_to_a_plan_with_a_trigger(tmp_path, capsys):
    path = write_prior(tmp_path / "prior.json")
    assert_refused(tgrow(capsys, "plan", "--plan", "g_stack", "--preset", "micro", "--budget-tokens", "1M",
                         "--anneal-prior", path), "--anneal-prior does not apply to plan g_stack; it is an option "
                                                  "of adaptive")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"ratio": 0.1, "log_sd": 0.2, "n_runs": 3, "colour": "red"}', "unknown field(s) colour"),
    ('{"ratio": -1, "log_sd": 0.2, "n_runs": 3}', "ratio=-1.0 must be > 0"),
    ('{"ratio": 0.1, "log_sd": 0.2, "n_runs": 3, "form": "lr_area"}', "the growth trigger fits multi_power"),
])  # fmt: skip
def test_a_bad_prior_file_is_refused_with_one_line_before_any_work(tmp_path, capsys, content, message):
    bad = tmp_path / "prior.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        PlanOptions(anneal_prior=str(bad)).validate()
    out = tmp_path / "run"
    err = assert_refused(tgrow(capsys, *train_args(tmp_path), "--plan", "adaptive", "--n-layer", "2",
                               "--anneal-prior", bad, "--out", out), message)
    assert err.count("\n") == 1 and str(bad) in err
    assert not out.exists() and not (tmp_path / "cache").exists()  # no run directory, no data prepared


def test_the_schedule_runs_to_the_end_of_the_budget_only_for_a_prior():
    trainer, steps = wsd_stage()
    before = stage_schedule(trainer, 0, steps, 500.0, 1.0, TRIGGER, BUDGET)
    assert before.lrs.size == 600 and before.horizon is None  # to the horizon, as without the option
    same = stage_schedule(trainer, 0, steps, 500.0, 1.0, TRIGGER, BUDGET, to_budget_end=False)
    assert np.array_equal(same.lrs, before.lrs) and (same.steps, same.cost_per_step, same.horizon) == \
        (before.steps, before.cost_per_step, None)
    full = stage_schedule(trainer, 0, steps, 500.0, 1.0, TRIGGER, BUDGET, to_budget_end=True)
    assert full.lrs.size == 1000 and full.horizon == 600  # the decay included; the verdict's horizon kept
    assert np.array_equal(full.lrs[:600], before.lrs) and full.lrs[-1] == pytest.approx(1e-3)


def test_a_prior_gives_the_trigger_the_bonus_of_a_decay_it_has_not_seen():
    # The stage's curve follows the multi-power law with B = 0.3 under the WSD schedule, seen only before
    # the decay: on its own it shows no annealing (B fitted as 0, the bonus taken for part of the floor E).
    trainer, steps = wsd_stage()
    stage = stage_schedule(trainer, 0, steps, 500.0, 1.0, TRIGGER, BUDGET, to_budget_end=True)
    s1_end = float(np.sum(stage.lrs))
    z, w = schedule_features("multi_power", stage.lrs, np.array(steps), s1_end)
    losses = list(2.0 + z**-0.5 + 0.3 * w)
    z_end, w_end = schedule_features("multi_power", stage.lrs, np.array([1000]), s1_end)
    truth = float(2.0 + z_end[0] ** -0.5 + 0.3 * w_end[0])
    prior = AnnealPrior(ratio=0.3 / truth, log_sd=0.2, n_runs=5)
    spent = [float(s) for s in steps]
    _, without = trigger_fires(spent, losses, TRIGGER, BUDGET, stage)
    _, with_prior = trigger_fires(spent, losses, TRIGGER, BUDGET, stage, prior)
    assert with_prior != without
    assert b_term(without) == 0 and "anneal prior" not in without
    assert b_term(with_prior) == pytest.approx(0.3, abs=0.03) and "anneal prior of" in with_prior
    assert float(with_prior.split("fitted L = ")[1].split(" ")[0]) == pytest.approx(2.0, abs=0.03)  # E


def test_without_a_prior_the_trigger_answers_as_before():
    trainer, steps = wsd_stage()
    stage = stage_schedule(trainer, 0, steps, 500.0, 1.0, TRIGGER, BUDGET)
    z, w = schedule_features("multi_power", stage.lrs, np.array(steps), float(np.sum(stage.lrs)))
    losses, spent = list(2.0 + z**-0.5 + 0.3 * w), [float(s) for s in steps]
    assert trigger_fires(spent, losses, TRIGGER, BUDGET, stage, prior=None) == \
        trigger_fires(spent, losses, TRIGGER, BUDGET, stage)
    assert trigger_fires(spent, losses, TRIGGER, BUDGET, None, prior=None) == trigger_fires(spent, losses, TRIGGER,
                                                                                            BUDGET)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_manager_asks_the_trigger_with_the_prior_and_the_whole_budgets_rates(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % 64
    data = TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=64)
    train = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu", schedule="wsd",
                        decay_frac=0.2)
    trigger = PlateauTrigger(min_fraction=0.15, max_fraction=0.5, min_gain_ratio=0.9)
    options = PlanOptions(trigger=trigger, anneal_prior=str(write_prior(tmp_path / "prior.json")))
    manager = GrowthManager(TARGET, "adaptive", budget_tokens=60 * 4 * 16, train_config=train, plan_options=options,
                            n_evals=12, eval_windows=4, log=None)
    calls = []

    def spy(*args):
        calls.append(args)
        return trigger_fires(*args)

    monkeypatch.setattr(manager_module, "trigger_fires", spy)
    manager.run(data)
    assert calls and all(len(args) == 6 and args[5] == PRIOR for args in calls)
    for args in calls:
        schedule = args[4]
        assert schedule.horizon is not None and schedule.lrs.size > schedule.horizon  # past the horizon
        assert schedule.lrs[-1] == pytest.approx(train.lr * train.min_lr_ratio)  # to the end of the decay

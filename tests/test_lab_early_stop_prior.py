"""Grid early stopping with the annealing-bonus prior pooled over the grid's completed runs
(`transformer_grow.lab.runner`: record_lrs, reference_curve, pooled_anneal_prior, decide_early_stop)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from transformer_grow.data import TokenData
from transformer_grow.lab.grid import SCRATCH, GridSpec, GridTraining, read_results
from transformer_grow.lab.runner import (
    EarlyStopRule,
    GridRunner,
    decide_early_stop,
    pooled_anneal_prior,
    record_lrs,
    reference_curve,
)
from transformer_grow.scaling.anneal_prior import AnnealPrior, fit_anneal_prior
from transformer_grow.scaling.schedule_laws import schedule_features
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.schedule import LRSchedule, lr_at
from transformer_grow.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ_LEN = 32
SPEC = GridSpec(name="t", models=((2, 32),), tokens=(2048,), seq_len=SEQ_LEN, vocab_size=64,
                training=GridTraining(batch_size=4, n_evals=8, eval_windows=4, device="cpu", dtype="fp32"))
KEY = "same-settings"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % 64  # mostly token i+1 after token i: learnable
    return TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=64)


def law_losses(lrs, steps, e=2.0, a=1.0, alpha=0.5, b=0.3):
    """The multi-power law (Luo et al. 2025) ``E + A z^-alpha + B w`` at ``steps`` under ``lrs``."""
    lrs = np.asarray(lrs, dtype=float)
    s1_end = float(np.sum(lrs))
    z, w = schedule_features("multi_power", lrs, np.asarray(steps, dtype=int), s1_end)
    return e + a * z**-alpha + b * w


def synthetic_record(schedule="wsd", upto=1.0, b=0.3, total=400, n_points=10, **extra):
    """A finished scratch record of ``total`` steps whose curve follows the law up to ``upto`` of its steps."""
    train = TrainConfig(batch_size=4, max_tokens=total * 4 * SEQ_LEN, lr=1e-2, min_lr_ratio=0.1, warmup_steps=20,
                        schedule=schedule, decay_frac=0.2, device="cpu")
    record = {"plan": SCRATCH, "settings_key": KEY, "early_stopped": False, "final_val_loss": 2.5,
              "config": {"model": {"seq_len": SEQ_LEN}, "train": train.to_dict()}}
    lrs = record_lrs(record)
    steps = np.linspace(total / n_points, upto * total, n_points).round().astype(int)
    losses = law_losses(lrs, steps, b=b)
    record["val_curve"] = [{"step": int(s), "tokens": int(s) * 4 * SEQ_LEN, "val_loss": float(v)}
                           for s, v in zip(steps, losses)]
    return json.loads(json.dumps({**record, **extra}))  # as read back from the results file


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_record_lrs_are_the_trainers_own_rates(data, schedule):
    runner = GridRunner(SPEC, None, "unused.jsonl", log=None, data=data)
    run = SPEC.runs()[0]
    model_config = runner.model_config(run)
    train_config = dataclasses.replace(runner.train_config(run), schedule=schedule, decay_frac=0.3)
    trainer = Trainer(model_config, train_config, data)
    try:
        expected = [lr_at(trainer.schedule, i) for i in range(trainer.total_steps)]
    finally:
        trainer.close()
    record = json.loads(json.dumps({"config": {"model": model_config.to_dict(), "train": train_config.to_dict()}}))
    rebuilt = record_lrs(record)
    assert len(rebuilt) == trainer.total_steps == 16 and rebuilt == expected
    assert len(set(rebuilt)) > 3  # warmup and decay: not a constant that any rebuild would match


def test_record_lrs_is_none_for_a_record_it_cannot_rebuild():
    good = synthetic_record()
    assert record_lrs({"val_curve": []}) is None  # no config (e.g. written by hand)
    assert record_lrs({"config": {"model": {"seq_len": SEQ_LEN}}}) is None
    unknown = {"config": {**good["config"], "train": {**good["config"]["train"], "not_a_setting": 1}}}
    assert record_lrs(unknown) is None
    no_budget = {"config": {**good["config"], "train": {**good["config"]["train"], "max_tokens": None}}}
    assert record_lrs(no_budget) is None


def test_a_prior_brings_a_wsd_runs_predicted_final_loss_close_to_the_truth():
    # A warmup-stable-decay run seen only before its decay (the last 20% of 1000 steps): its curve cannot
    # show what the decay will pay, so without a prior the fit leaves B at 0 and overestimates the final loss.
    total = 1000
    schedule = LRSchedule("wsd", peak_lr=1e-2, min_lr=1e-3, warmup_steps=20, total_steps=total, decay_steps=200)
    lrs = [lr_at(schedule, i) for i in range(total)]
    truth = float(law_losses(lrs, [total])[0])
    steps = np.arange(50, 751, 50)
    losses = law_losses(lrs, steps)
    prior = AnnealPrior(ratio=0.3 / truth, log_sd=0.2, n_runs=5)  # the bonus ratio of completed runs
    rule = EarlyStopRule(n_bootstrap=20)
    without = decide_early_stop(steps, losses, lrs, total, 2.0, rule)
    with_prior = decide_early_stop(steps, losses, lrs, total, 2.0, rule, prior=prior)
    assert without.predicted_final_loss != with_prior.predicted_final_loss
    assert abs(without.predicted_final_loss / truth - 1) > 0.05  # the decay's bonus missed: ~7% too high
    assert abs(with_prior.predicted_final_loss / truth - 1) < 0.01
    assert with_prior.interval[0] <= truth <= with_prior.interval[1]
    assert decide_early_stop(steps, losses, lrs, total, 2.0, rule, prior=None) == without


def test_the_pooled_prior_uses_only_completed_runs_of_the_same_settings():
    good = [synthetic_record("wsd", b=0.3), synthetic_record("cosine", b=0.2)]
    ignored = [
        synthetic_record("wsd", b=3.0, early_stopped=True),  # early-stopped: not a completed run
        synthetic_record("wsd", b=3.0, settings_key="other-settings"),
        synthetic_record("wsd", b=3.0, plan="g_stack"),
        synthetic_record("wsd", b=3.0, upto=0.6),  # its curve stops before the decay
        synthetic_record("constant", b=3.0),  # a schedule that never decays
        {"plan": SCRATCH, "settings_key": KEY, "val_curve": [{"step": 1, "tokens": 1, "val_loss": 0.5},
                                                             {"step": 2, "tokens": 10**6, "val_loss": 0.5}]},
    ]
    assert reference_curve(ignored[3]) is None and reference_curve(ignored[4]) is None
    assert reference_curve(ignored[5]) is None and reference_curve(good[0]) is not None
    prior = pooled_anneal_prior([*ignored[:3], good[0], *ignored[3:], good[1]], SCRATCH, KEY)
    assert prior == fit_anneal_prior([reference_curve(r) for r in good])
    assert prior.n_runs == 2 and all(r < 0.5 for r in prior.ratios)  # none of the B = 3 runs got in
    assert pooled_anneal_prior(ignored, SCRATCH, KEY) is None  # nothing usable: no prior, as before


def test_an_early_stopped_record_keeps_the_prior_its_decision_used(data, tmp_path):
    runner = GridRunner(SPEC, None, tmp_path / "results.jsonl", early_stop=EarlyStopRule(n_bootstrap=4), log=None,
                        data=data)
    run = SPEC.runs()[0]
    train = runner.train_config(run)
    # a finished run of the same settings, far better at every token count: the run stops early
    reference = {"run_id": "reference", "plan": SCRATCH, "settings_key": runner.settings_key(run),
                 "early_stopped": False, "final_val_loss": 0.4,
                 "config": {"model": runner.model_config(run).to_dict(), "train": train.to_dict()}}
    lrs = record_lrs(reference)
    steps = np.arange(2, 17, 2)
    reference["val_curve"] = [{"step": int(s), "tokens": int(s) * 4 * SEQ_LEN, "val_loss": float(v)}
                              for s, v in zip(steps, law_losses(lrs, steps, e=0.2, a=0.2, b=0.05))]
    (tmp_path / "results.jsonl").write_text(json.dumps(reference) + "\n")
    expected = pooled_anneal_prior(read_results(tmp_path / "results.jsonl"), SCRATCH, runner.settings_key(run))
    assert expected is not None and expected.n_runs == 1
    record = runner(run)
    assert record["early_stopped"] is True
    assert record["early_stop_prior"] == expected.to_dict()
    assert record["early_stop_rule"]["use_prior"] is True

    runner.early_stop = EarlyStopRule(n_bootstrap=4, use_prior=False)
    record = runner(run)
    assert record["early_stopped"] is True and record["early_stop_prior"] is None

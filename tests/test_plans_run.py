"""GrowthManager on micro plans: trigger, optimizer-state policies, LR after growth, evaluation, failed growth."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transformer_grow.operators as grow_package
import transformer_grow.run.manager as manager_module
from transformer_grow.data import TokenData
from transformer_grow.model import GPT, preset
from transformer_grow.optim_state import optimizer_state_by_name
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.plans.plan import PlateauTrigger
from transformer_grow.run.budget import evaluate_fixed_windows
from transformer_grow.run.manager import GrowthManager
from transformer_grow.run.trigger import trigger_fires
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.evaluate import evaluate_windows
from transformer_grow.train.metrics import read_metrics

TARGET = preset("micro", vocab_size=64, n_layer=2, seq_len=16, d_model=32, n_head=2)
TRAIN = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu")
BUDGET = 60 * 4 * 16  # 60 baseline steps
CPU = torch.device("cpu")
# compound plan whose first stage has half the depth and half the context (twice the batch)
HALF_DEPTH_AND_CONTEXT = {"compound_stages": [{"depth": 2, "seq": 2}], "growth_fraction": 0.4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # micro models: threads only slow a shared CPU



@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # a learnable sequence: mostly token i+1 after token i
    tokens = np.cumsum(rng.integers(1, 3, size=20_000)) % 64
    return TokenData(train=tokens[:18_000].astype(np.int64), val=tokens[18_000:].astype(np.int64), vocab_size=64)


def manager_for(plan, target=TARGET, train=TRAIN, n_evals=6, out_dir=None, **options):
    return GrowthManager(target, plan, budget_tokens=BUDGET, train_config=train, plan_options=PlanOptions(**options),
                         n_evals=n_evals, eval_windows=4, out_dir=out_dir, log=None)


def run(data, plan, **options):
    manager = manager_for(plan, **options)
    return manager, manager.run(data)


def spy_on_growth(monkeypatch, manager, fail=False):
    """Wrap :func:`transformer_grow.operators.grow` (what a growth event calls) to record, at the moment of
    growth, the trainer's step, a copy of the model it grows and that model's AdamW state; with
    ``fail``, raise after the grown model was built (a growth that fails half-way)."""
    real_grow, seen = grow_package.grow, {}

    def grow_and_record(model, *args, **kwargs):
        trainer = manager.trainer
        seen.update(step=trainer.step, tokens=trainer.tokens, flops=trainer.flops, model_object=model,
                    model=copy.deepcopy(model), state=optimizer_state_by_name(trainer.model, trainer.optimizer))
        seen["result"] = real_grow(model, *args, **kwargs)
        if fail:
            raise RuntimeError("simulated failure half-way through growth")
        return seen["result"]

    monkeypatch.setattr(grow_package, "grow", grow_and_record)
    return seen


def lr_by_step(out_dir) -> dict[int, float]:
    """The learning rate of every step, from the run's metrics (one record per step with log_interval=1)."""
    return {r["step"]: r["lr"] for r in read_metrics(out_dir / "metrics.jsonl") if "lr" in r}


# ----------------------------------------------------------------------------------------------- trigger
def test_adaptive_plan_grows_at_max_fraction_when_the_curve_never_flattens(data):
    trigger = PlateauTrigger(min_fraction=0.1, max_fraction=0.4, min_gain_ratio=1e-9)
    manager, result = run(data, "adaptive", trigger=trigger)
    (event,) = result.record.events
    step_flops = 4 * 16 * result.record.stages[0]["flops_per_token"]
    assert 0.4 * manager.budget - step_flops <= event["flops"] <= 0.4 * manager.budget
    assert abs(result.record.total_flops - manager.budget) <= 4 * 16 * result.record.stages[1]["flops_per_token"]


def test_adaptive_plan_grows_at_the_evaluation_where_its_trigger_fires(data, monkeypatch):
    # a lenient trigger: fires once the curve's next 10% of the budget is expected to gain < 90% of
    # what is left to gain, long before the max_fraction fallback
    trigger = PlateauTrigger(min_fraction=0.15, max_fraction=0.6, min_gain_ratio=0.9)
    manager = manager_for("adaptive", n_evals=20, trigger=trigger)
    calls = []  # every question the manager asked the trigger (the stage's curve and schedule so far)

    def spy(*args):
        calls.append((args, trigger_fires(*args)))
        return calls[-1][1]

    monkeypatch.setattr(manager_module, "trigger_fires", spy)
    result = manager.run(data)
    (event,) = result.record.events
    stage = [p for p in result.record.curve if p.stage == 0 and p.step > 0]
    # asked after every evaluation of the small stage, with that stage's curve so far
    assert [len(args[0]) for args, _ in calls] == list(range(1, len(calls) + 1))
    assert [args[1] for args, _ in calls] == [[p.val_loss for p in stage[:i]] for i in range(1, len(calls) + 1)]
    assert all(args[4] is not None for args, _ in calls)  # with the stage's learning rates: the schedule-aware law
    fired = [i for i, (_, (fires, _)) in enumerate(calls) if fires]
    assert fired == [len(calls) - 1], "the stage must end at the first evaluation where the trigger fires"
    assert event["step"] == stage[fired[0]].step and event["flops"] == stage[fired[0]].flops
    assert trigger_fires(*calls[-1][0]) == calls[-1][1]  # a replay of the same question gives the same answer
    step_flops = TRAIN.batch_size * TARGET.seq_len * result.record.stages[0]["flops_per_token"]
    assert event["flops"] < trigger.max_fraction * manager.budget - step_flops  # not the fallback
    assert calls[-1][1][1] in result.record.notes  # the record says why it grew


# ------------------------------------------------------------------------------------- optimizer state
GROW_DEPTH = ("g_stack", {"growth_fraction": 0.3})  # new blocks copy old ones: moments copied
GROW_WIDTH = ("compound", {"compound_stages": [{"width": 2}], "growth_fraction": 0.3})  # cloning: moments scaled


@pytest.mark.parametrize(("plan", "policy"), [(GROW_DEPTH, "carry"), (GROW_WIDTH, "carry"), (GROW_DEPTH, "fresh")])
def test_optimizer_state_right_after_growth(data, monkeypatch, plan, policy):
    manager = manager_for(plan[0], optimizer=policy, **plan[1])
    seen = spy_on_growth(monkeypatch, manager)
    grow_step = manager.account.stages[0].steps
    manager.open(data)
    try:
        assert manager.advance(limit_steps=grow_step) is None  # stops right after the growth event
        trainer = manager.trainer
        assert seen["step"] == trainer.step == grow_step and trainer.model.config == TARGET
        small_state, param_map = seen["state"], seen["result"].param_map
        assert small_state and all(float(s["exp_avg_sq"].abs().sum()) > 0 for s in small_state.values())
        grown_state = optimizer_state_by_name(trainer.model, trainer.optimizer)
        if policy == "fresh":
            assert grown_state == {}  # no moments until the first step of the grown model
        else:
            names = [name for name, _ in trainer.model.named_parameters()]
            assert sorted(grown_state) == sorted(names)
            for name in names:  # the small model's moments mapped like the values: m by s, v by s**2
                entry, source = param_map[name], small_state[param_map[name].source]
                assert torch.equal(grown_state[name]["exp_avg"], entry.apply(source["exp_avg"], power=1)), name
                assert torch.equal(grown_state[name]["exp_avg_sq"], entry.apply(source["exp_avg_sq"], power=2)), name
                assert float(grown_state[name]["step"]) == grow_step  # Adam's bias correction continues
            # not an identity: stacked copies of old blocks, or scaled copies of old rows and columns
            assert any(param_map[name].source != name or not torch.equal(grown_state[name]["exp_avg"],
                                                                         small_state[name]["exp_avg"])
                       for name in names)
        manager.advance(limit_steps=grow_step + 1)
        steps = {float(s["step"]) for s in optimizer_state_by_name(trainer.model, trainer.optimizer).values()}
        assert steps == ({grow_step + 1.0} if policy == "carry" else {1.0})
    finally:
        manager.close()


# ------------------------------------------------------------------------------- learning rate after growth
def test_rewarmup_ramps_the_lr_linearly_from_zero_to_the_schedule_after_growth(data, tmp_path):
    train = TRAIN.replace(log_interval=1)
    plain = manager_for("g_stack", train=train, out_dir=tmp_path / "plain", growth_fraction=0.5)
    grow_step = plain.run(data).record.events[0]["step"]
    rewarm = manager_for("g_stack", train=train, out_dir=tmp_path / "rewarm", growth_fraction=0.5, rewarmup_steps=5)
    assert rewarm.run(data).record.events[0]["step"] == grow_step
    schedule, lr = lr_by_step(tmp_path / "plain"), lr_by_step(tmp_path / "rewarm")
    assert sorted(lr) == sorted(schedule) == list(range(1, max(schedule) + 1))
    for step in lr:  # (step = steps done: the record of step s carries the lr step s ran at)
        if grow_step < step <= grow_step + 5:
            assert lr[step] == pytest.approx(schedule[step] * (step - grow_step) / 5, rel=1e-9), step
        else:
            assert lr[step] == pytest.approx(schedule[step], rel=1e-9), step
    assert lr[grow_step + 1] < 0.25 * schedule[grow_step + 1]  # starts near zero


def test_schedule_restart_returns_to_the_peak_lr_after_growth_and_anneals_again(data, tmp_path):
    train = TRAIN.replace(log_interval=1)
    continued = manager_for("g_stack", train=train, out_dir=tmp_path / "continue", growth_fraction=0.5)
    grow_step = continued.run(data).record.events[0]["step"]
    restarted = manager_for("g_stack", train=train, out_dir=tmp_path / "restart", growth_fraction=0.5,
                            schedule="restart")
    restarted.run(data)
    before, after = lr_by_step(tmp_path / "continue"), lr_by_step(tmp_path / "restart")
    last = max(after)
    assert all(after[s] == pytest.approx(before[s], rel=1e-9) for s in range(1, grow_step + 1))
    assert before[grow_step + 1] < 0.9 * TRAIN.lr  # the continued cosine is well into its decay ...
    assert after[grow_step + 1] == pytest.approx(TRAIN.lr)  # ... the restarted one is back at its peak
    assert all(after[s] > before[s] for s in range(grow_step + 1, last))
    # both anneal to the minimum at the budget's end (the last step starts a fraction of a step short of it)
    min_lr = TRAIN.lr * TRAIN.min_lr_ratio
    assert after[last] == pytest.approx(min_lr, rel=1e-2) and before[last] == pytest.approx(min_lr, rel=1e-2)


# ------------------------------------------------------------------------------------------ evaluation
def test_every_run_is_evaluated_on_the_targets_fixed_validation_windows(data):
    windows = data.val_windows(TARGET.seq_len, 4)
    for plan, options in (("scratch", {}), ("g_stack", {"growth_fraction": 0.3})):
        _, result = run(data, plan, **options)
        final = result.record.curve[-1]
        assert final.val_loss == pytest.approx(evaluate_windows(result.model, windows, 4, CPU), rel=1e-6), plan
    # the same windows given explicitly: the same run, point for point
    default = manager_for("g_stack", growth_fraction=0.3).run(data).record.curve
    explicit = manager_for("g_stack", growth_fraction=0.3).run(data, eval_data=windows).record.curve
    assert [p.val_loss for p in explicit] == [p.val_loss for p in default]


def chunked_cross_entropy(model, windows: torch.Tensor) -> float:
    """Reference: mean per-token cross-entropy, each window cut into consecutive chunks of the model's context."""
    total, count, length, size = 0.0, 0, windows.shape[1] - 1, model.config.seq_len
    model.eval()
    with torch.no_grad():
        for start in range(0, length, size):
            piece = windows[:, start:min(start + size, length) + 1]
            logits = model(piece[:, :-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1).double(), piece[:, 1:].flatten(), reduction="sum"))
            count += piece[:, 1:].numel()
    return total / count


def test_learned_positions_with_a_shorter_context_are_evaluated_in_chunks():
    torch.manual_seed(0)
    windows = torch.randint(0, 64, (5, 17))
    short = GPT(TARGET.replace(pos="learned", n_layer=1, seq_len=6))  # chunks of 6, 6 and 4 predictions
    expected = chunked_cross_entropy(short, windows)
    assert evaluate_fixed_windows(short, windows, 2, CPU) == pytest.approx(expected, rel=1e-6)
    # a model that sees the whole window reads it unchunked
    full = GPT(TARGET.replace(pos="learned", n_layer=1))
    assert evaluate_fixed_windows(full, windows, 2, CPU) == pytest.approx(evaluate_windows(full, windows, 2, CPU))
    assert chunked_cross_entropy(full, windows) == pytest.approx(evaluate_windows(full, windows, 2, CPU), rel=1e-6)


def test_growth_run_measures_a_short_context_stage_on_the_targets_windows_in_chunks(data, monkeypatch):
    target = TARGET.replace(pos="learned")
    manager = manager_for("compound", target=target, **HALF_DEPTH_AND_CONTEXT)
    seen = spy_on_growth(monkeypatch, manager)
    result = manager.run(data)
    (event,) = result.record.events
    small = seen["model"]
    assert small.config.seq_len == target.seq_len // 2
    expected = chunked_cross_entropy(small, data.val_windows(target.seq_len, 4))
    assert event["val_loss_before"] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------- failed growth
def fail_growth_once_then_continue(data, monkeypatch):
    """A compound run whose first growth fails half-way; checks the trainer right after the failure,
    then lets growth work again and finishes the run. Returns (record, uninterrupted reference record)."""
    reference = manager_for("compound", **HALF_DEPTH_AND_CONTEXT).run(data).record
    manager = manager_for("compound", **HALF_DEPTH_AND_CONTEXT)
    seen = spy_on_growth(monkeypatch, manager, fail=True)
    manager.open(data)
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            manager.advance()
        trainer = manager.trainer
        # the old model (the same object, untouched), its AdamW state, counters and stage batch
        assert trainer.model is seen["model_object"] and trainer.model.config == seen["model"].config
        for name, value in seen["model"].state_dict().items():
            assert torch.equal(trainer.model.state_dict()[name], value), name
        state = optimizer_state_by_name(trainer.model, trainer.optimizer)
        assert sorted(state) == sorted(seen["state"])
        for name, entry in seen["state"].items():
            assert all(torch.equal(state[name][k], entry[k]) for k in entry), name
        assert (trainer.step, trainer.tokens, trainer.flops) == (seen["step"], seen["tokens"], seen["flops"])
        assert trainer.config.batch_size == manager.account.stages[0].batch_size == 2 * TRAIN.batch_size
        monkeypatch.undo()  # growth works again: the run goes on from where it stopped
        result = manager.advance()
    finally:
        manager.close()
    assert [e["step"] for e in reference.events] == [seen["step"]]
    return result.record, reference


def test_a_growth_that_fails_half_way_leaves_the_trainer_as_it_was_and_the_run_can_continue(data, monkeypatch):
    record, reference = fail_growth_once_then_continue(data, monkeypatch)
    # the continued run is the uninterrupted one: same growth step, same curve
    assert [e["step"] for e in record.events] == [e["step"] for e in reference.events]
    (event,), (reference_event,) = record.events, reference.events
    assert event["val_loss_after"] == pytest.approx(reference_event["val_loss_after"], rel=1e-6)
    assert [p.step for p in record.curve] == [p.step for p in reference.curve]
    assert [p.val_loss for p in record.curve] == pytest.approx([p.val_loss for p in reference.curve], rel=1e-6)
    assert record.total_flops == reference.total_flops and record.total_tokens == reference.total_tokens


def test_a_failed_growth_leaves_no_trace_in_the_stage_records(data, monkeypatch):
    record, reference = fail_growth_once_then_continue(data, monkeypatch)
    assert [s["model"] for s in record.stages] == [s["model"] for s in reference.stages]
    assert [s["steps"] for s in record.stages] == [s["steps"] for s in reference.stages]


def test_stage_batches_that_do_not_split_are_refused_before_training():
    from transformer_grow.distributed.env import DistEnv
    from transformer_grow.errors import ConfigError

    three_ranks = DistEnv(0, 3, 0, torch.device("cpu"), "gloo")  # no process group needed: refused first
    refusal = r"^small L=1: batch_size=4 is not divisible by world_size \* grad_accum = 3 \* 1"
    with pytest.raises(ConfigError, match=refusal):
        GrowthManager(TARGET, "g_stack", budget_tokens=BUDGET, train_config=TRAIN, parallel="ddp", env=three_ranks,
                      plan_options=PlanOptions(growth_fraction=0.5), log=None)
    with pytest.raises(ConfigError, match="parallel='zero'"):
        GrowthManager(TARGET, "g_stack", budget_tokens=BUDGET, train_config=TRAIN, parallel="zero",
                      plan_options=PlanOptions(growth_fraction=0.5), log=None)

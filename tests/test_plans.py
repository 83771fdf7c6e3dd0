"""Growth plans: validation of stages and budgets, built-in plans, and G_stack's timing rule."""

import warnings

import pytest

from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import PLAN_NAMES, PlanOptions, build_plan, shrink
from transformer_grow.plans.plan import GrowthEvent, GrowthPlan, PlateauTrigger, Stage
from transformer_grow.plans.timing import GrowthTimingWarning, g_stack_log10_tokens, g_stack_timing
from transformer_grow.run.event import check_growth_events

TARGET = preset("micro", vocab_size=256, n_layer=4)
SMALL = TARGET.replace(n_layer=2)


def two_stage(small_tokens=1000, last_tokens=None, budget=4000, mode="tokens", **event):
    return GrowthPlan("p", [Stage(SMALL, tokens=small_tokens, name="small"),
                            Stage(TARGET, tokens=last_tokens, growth=GrowthEvent(**event), name="big")],
                      budget_tokens=budget, budget_mode=mode)


def test_valid_two_stage_plan_passes():
    two_stage().validate()
    two_stage(last_tokens=3000).validate()  # adds up exactly


def test_growth_to_a_smaller_model_is_refused():
    plan = GrowthPlan("p", [Stage(TARGET, tokens=100), Stage(SMALL, growth=GrowthEvent())], budget_tokens=4000)
    with pytest.raises(ConfigError, match="growth to a smaller model: n_layer=2 is smaller than the model's 4; "
                                          "growth does not shrink"):
        plan.validate()


def test_growth_that_does_not_grow_or_changes_family_is_refused():
    with pytest.raises(ConfigError, match="does not grow"):
        GrowthPlan("p", [Stage(TARGET, tokens=100), Stage(TARGET, growth=GrowthEvent())], 4000).validate()
    other = TARGET.replace(norm="layernorm")
    with pytest.raises(ConfigError, match="norm cannot change by growth"):
        GrowthPlan("p", [Stage(SMALL, tokens=100), Stage(other, growth=GrowthEvent())], 4000).validate()


@pytest.mark.parametrize("kwargs, message", [
    ({"small_tokens": 4000}, "budgets do not add up.*nothing is left"),
    ({"small_tokens": 5000}, "budgets do not add up"),
    ({"last_tokens": 2000}, "budgets do not add up: the stages take 3000 tokens"),
])
def test_budgets_that_do_not_add_up_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        two_stage(**kwargs).validate()


def test_flops_budget_counts_the_small_stage_at_its_own_cost():
    # In FLOPs mode a small stage of as many tokens as the budget still leaves room (it is cheaper).
    two_stage(small_tokens=4000, mode="flops").validate()
    with pytest.raises(ConfigError, match="budgets do not add up"):
        two_stage(small_tokens=20000, mode="flops").validate()


def test_trigger_with_no_stage_to_grow_into_is_refused():
    plan = GrowthPlan("p", [Stage(SMALL, tokens=100), Stage(TARGET, trigger=PlateauTrigger(), growth=GrowthEvent())],
                      budget_tokens=4000)
    with pytest.raises(ConfigError, match="trigger on the last stage has no stage to grow into"):
        plan.validate()


def test_stage_structure_errors():
    with pytest.raises(ConfigError, match="first stage has nothing to grow from"):
        GrowthPlan("p", [Stage(SMALL, growth=GrowthEvent())], 4000).validate()
    with pytest.raises(ConfigError, match="needs a growth event"):
        GrowthPlan("p", [Stage(SMALL, tokens=10), Stage(TARGET)], 4000).validate()
    with pytest.raises(ConfigError, match="needs tokens or a trigger"):
        GrowthPlan("p", [Stage(SMALL), Stage(TARGET, growth=GrowthEvent())], 4000).validate()
    with pytest.raises(ConfigError, match="optimizer='keep' is not allowed"):
        two_stage(optimizer="keep").validate()
    with pytest.raises(ConfigError, match="rewarmup_steps=-1"):
        two_stage(rewarmup_steps=-1).validate()
    with pytest.raises(ConfigError, match="min_fraction"):
        PlateauTrigger(min_fraction=0.6, max_fraction=0.5).validate("x")


def test_plan_round_trips_through_dict():
    plan = build_plan("compound", TARGET, 40_000, PlanOptions(growth_fraction=0.3))
    again = GrowthPlan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()


# Plans that grow something other than the shape: what each grows, per stage.
GROWS = {"share_unshare": lambda c: c.n_layer if c.share == "none" else c.share_groups,  # stored blocks
         "upcycle": lambda c: c.n_expert, "dynamic": lambda c: c.n_expert}
PLAN_TARGETS = {"upcycle": TARGET.replace(n_expert=4), "dynamic": TARGET.replace(n_expert=4, moe_router="topany")}


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_builtin_plans_are_valid_and_end_at_the_target(name):
    target = PLAN_TARGETS.get(name, TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)
        plan = build_plan(name, target, 40_000)
    assert plan.target == target
    check_growth_events(plan)  # the grow() dry run accepts every event
    grows = GROWS.get(name, lambda c: (c.n_layer, c.d_model, c.seq_len))
    sizes = [grows(s.model) for s in plan.stages]
    assert len(plan.stages) >= 2 or name == "scratch"
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes


def test_builtin_plan_shapes():
    assert [s.model.n_layer for s in build_plan("progressive", TARGET, 40_000).stages] == [1, 2, 4]
    compound = build_plan("compound", TARGET, 40_000).stages
    first = compound[0].model
    assert (first.n_layer, first.d_model, first.n_head, first.head_dim, first.d_ff, first.seq_len) == \
        (2, 32, 2, 16, TARGET.d_ff // 2, 32)
    assert [s.growth.options.get("width") for s in compound[1:]] == [None, "clone"]
    assert compound[1].growth.method == "stack" and compound[2].growth.method is None


def test_bad_plan_options_are_refused_before_training():
    with pytest.raises(ConfigError, match="depth growth factor 3 must be a positive integer dividing"):
        build_plan("g_stack", TARGET, 40_000, PlanOptions(growth_factor=3, growth_fraction=0.2))
    with pytest.raises(ConfigError, match="plan='nope' is not allowed"):
        build_plan("nope", TARGET, 40_000)
    with pytest.raises(ConfigError, match="method='foo' is not a depth or width method"):
        build_plan("g_stack", TARGET, 40_000, PlanOptions(growth_fraction=0.2, method="foo"))


# ----------------------------------------------------------------------------- G_stack timing
def test_g_stack_formula_matches_hand_computation():
    n, c = 1.1e9, 6 * 1.1e9 * 300e9  # a TinyLlama-sized model on 300B tokens
    # by hand: log10(N) = 9.041393, log10(C) = 21.296665 -> 7.956426 + 7.666459 - 5.74 = 9.882884
    assert g_stack_log10_tokens(n, c) == pytest.approx(9.882884, abs=1e-5)
    timing = g_stack_timing(int(n), int(300e9), warn=False)
    assert not timing.clamped
    assert timing.growth_tokens == pytest.approx(10**9.882884, rel=1e-4)  # ~7.6B tokens, ~2.5% of the run


def test_g_stack_timing_is_clamped_with_a_warning_at_small_scale():
    with pytest.warns(GrowthTimingWarning, match="clamped to 500,000 tokens"):
        timing = g_stack_timing(2_000_000, 1_000_000, max_fraction=0.5)
    assert timing.clamped and timing.growth_tokens == 500_000 and timing.formula_tokens > 1e9
    assert any("clamped" in line for line in timing.explain())


def test_explicit_fraction_replaces_the_formula():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no clamping warning
        timing = g_stack_timing(2_000_000, 1_000_000, fraction=0.3)
    assert timing.growth_tokens == 300_000 and not timing.clamped
    assert "explicit fraction" in timing.explain()[0]
    with pytest.raises(ConfigError, match="fraction"):
        g_stack_timing(2_000_000, 1_000_000, fraction=1.5)


def test_g_stack_plan_uses_the_timing():
    with pytest.warns(GrowthTimingWarning):
        plan = build_plan("g_stack", TARGET, 40_000, PlanOptions(max_fraction=0.4))
    assert plan.stages[0].tokens == 16_000
    assert any("Du et al. 2024" in note for note in plan.notes)


def test_shrink_keeps_head_size():
    small = shrink(preset("tiny", vocab_size=256), depth=2, width=2, seq=2)
    assert (small.n_layer, small.d_model, small.n_head, small.head_dim, small.seq_len) == (2, 128, 2, 64, 128)

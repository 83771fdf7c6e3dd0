"""Small-only controls, the verdict lines against them, and the regime check of `tgrow compare`."""

import pytest

from transformer_grow.compare.methods import Method, RunSpec, method_plans
from transformer_grow.compare.regime import CHINCHILLA_RULE, ComputeOptimalLaw, regime, regime_lines
from transformer_grow.compare.summary import build_compare_report
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.accounting import account_plan, flops_per_token
from transformer_grow.plans.builders import PlanOptions, build_plan, small_only_plan
from transformer_grow.run.record import EvalPoint, RunRecord

TARGET = preset("tiny", n_layer=8, d_model=128, n_head=2, seq_len=128, vocab_size=256)
BATCH_TOKENS = 16 * 128
BUDGET = 614_400


@pytest.mark.parametrize("plan_name, mode", [("g_stack", "flops"), ("compound", "flops"), ("progressive", "flops"),
                                             ("g_stack", "tokens")])
def test_small_only_control_spends_the_baselines_flops_within_one_step(plan_name, mode):
    options = PlanOptions(budget_mode=mode, growth_fraction=0.5)
    plan = build_plan(plan_name, TARGET, BUDGET, options)
    control = small_only_plan(plan, BUDGET)
    baseline = account_plan(build_plan("scratch", TARGET, BUDGET, options), BATCH_TOKENS)
    account = account_plan(control, BATCH_TOKENS)
    assert len(control.stages) == 1 and control.stages[0].growth is None  # never grown
    small = plan.stages[0].model
    assert (control.target.n_layer, control.target.d_model) == (small.n_layer, small.d_model)
    assert control.target.seq_len == TARGET.seq_len  # the same batches and fixed windows as every run
    assert account.tokens_per_step == baseline.tokens_per_step
    # the budget's units are the small model's tokens: scaled by the ratio of FLOPs per token
    assert control.budget_tokens == round(BUDGET * flops_per_token(TARGET) / flops_per_token(control.target))
    one_step = BATCH_TOKENS * flops_per_token(TARGET)
    assert abs(account.total_flops - baseline.total_flops) <= one_step
    assert account.total_tokens > baseline.total_tokens  # the smaller model reads more tokens on the same FLOPs


def test_control_names_and_one_control_per_distinct_first_stage_model():
    options = PlanOptions(growth_fraction=0.5)
    methods = {m.name: m for m, _ in method_plans(TARGET, BUDGET, ["g_stack", "adaptive", "compound", "progressive"],
                                                  options, controls=True)}
    assert list(methods) == ["scratch", "g_stack", "adaptive", "compound", "progressive", "small-only:L4",
                             "small-only:L4-d64", "small-only:L2"]
    assert methods["small-only:L4"].control_of == ("g_stack", "adaptive")  # the same 4-layer model: one control
    assert methods["g_stack"].control == methods["adaptive"].control == "small-only:L4"
    assert methods["compound"].control == "small-only:L4-d64" and methods["small-only:L2"].kind == "control"
    plain = [m.name for m, _ in method_plans(TARGET, BUDGET, ["g_stack"], options, controls=False)]
    assert plain == ["scratch", "g_stack"]
    # a plan whose first stage only shortens the context has no smaller model to train alone
    seq_only = PlanOptions(growth_fraction=0.5, compound_stages=[{"seq": 2}])
    assert [m.control for m, _ in method_plans(TARGET, BUDGET, ["compound"], seq_only, True)] == [None, None]


# ------------------------------------------------------------------------------ verdicts
def record(name, final_loss, flops=1000.0):
    curve = [EvalPoint(0, 0, 0.0, 0.0, 5.0), EvalPoint(10, 100, flops / 2, 1.0, (5.0 + final_loss) / 2),
             EvalPoint(20, 200, flops, 2.0, final_loss)]
    return RunRecord(name, curve, flops, 200, 2.0)


def synthetic_report(losses: dict[str, list[float]]):
    """Runs of every method at each seed, with the given final losses (equal FLOPs: the final point)."""
    plan = build_plan("scratch", TARGET, BUDGET)
    methods = [Method("scratch", "baseline"), Method("g_stack", "plan", control="small-only:L1"),
               Method("compound", "plan", control="small-only:L1"),
               Method("progressive", "plan", control="small-only:L1"),
               Method("small-only:L1", "control", control_of=("g_stack", "compound", "progressive"))]
    results = [(RunSpec(m, seed, 1.0, plan), record(m.name, losses[m.name][i]))
               for i, seed in enumerate(range(len(losses["scratch"]))) for m in methods]
    return build_compare_report(results, {"preset": "test"})


def test_verdicts_against_the_baseline_and_the_small_only_control():
    report = synthetic_report({"scratch": [3.0], "small-only:L1": [2.5], "g_stack": [2.3], "compound": [2.7],
                               "progressive": [3.2]})
    v = report["verdicts"]
    assert (v["g_stack"]["vs_baseline"]["beats"], v["g_stack"]["vs_control"]["beats"]) == (True, True)
    assert v["g_stack"]["lines"][0].startswith("g_stack: beats the baseline (loss -0.7000, 1 seed: no interval) and "
                                               "beats its small-only control small-only:L1 (loss -0.2000")
    assert len(v["g_stack"]["lines"]) == 1
    assert (v["compound"]["vs_baseline"]["beats"], v["compound"]["vs_control"]["beats"]) == (True, False)
    assert "beats the baseline" in v["compound"]["lines"][0] and "does NOT beat its small-only control" in \
        v["compound"]["lines"][0]
    assert v["compound"]["lines"][1].startswith("A smaller model is the better use of this budget: small-only:L1")
    assert (v["progressive"]["vs_baseline"]["beats"], v["progressive"]["vs_control"]["beats"]) == (False, False)
    assert "gain over the baseline comes from the target being too large" in v["compound"]["lines"][1]
    assert v["progressive"]["lines"][0].startswith("progressive: does NOT beat the baseline")
    assert "and does NOT beat its small-only control" in v["progressive"]["lines"][0]
    assert v["progressive"]["lines"][1] == ("A smaller model is the better use of this budget: small-only:L1 trained "
                                            "alone, never grown, ends lower than both progressive and the baseline.")
    from transformer_grow.compare.report import markdown_summary

    md = markdown_summary(report)
    assert "- compound: beats the baseline" in md and "## Verdicts (equal FLOPs)" in md
    assert report["speedup"]["small-only:L1"]["kind"] == "control"


def test_verdicts_with_seeds_say_when_a_difference_is_within_seed_noise():
    report = synthetic_report({"scratch": [3.0, 3.0, 3.0], "small-only:L1": [2.5, 2.6, 2.4],
                               "g_stack": [2.45, 2.65, 2.5], "compound": [2.0, 2.1, 2.05],
                               "progressive": [3.1, 3.2, 3.3]})
    g = report["verdicts"]["g_stack"]
    assert g["vs_control"]["mean"] == pytest.approx(0.1 / 3) and g["vs_control"]["clear"] is False
    assert "within seed noise" in g["lines"][0] and "is level with its small-only control" in g["lines"][0]
    assert g["lines"][0].startswith("g_stack: beats the baseline")  # -0.47, far outside the noise
    assert not any("A smaller model" in line for line in g["lines"])  # the control is ahead only within noise
    assert report["verdicts"]["compound"]["vs_control"]["clear"] is True
    assert report["aggregate"]["compound"]["final_val_loss"]["mean"] == pytest.approx(2.05)


# ------------------------------------------------------------------------------ regime
def test_regime_prints_n_opt_and_warns_when_the_target_is_too_large():
    n = 1_000_000
    flops = 120.0 * n ** 2  # Chinchilla rule of thumb: N_opt = sqrt(C / 120), i.e. 20 tokens per parameter
    assert CHINCHILLA_RULE.n_opt(flops) == pytest.approx(n)
    assert "Hoffmann" in CHINCHILLA_RULE.source
    big = regime(CHINCHILLA_RULE, 4 * n, 20 * n, flops)
    assert big["target_over_n_opt"] == pytest.approx(4.0) and big["too_large"] is True
    assert big["tokens_per_param"] == pytest.approx(5.0)
    lines = regime_lines(big)
    assert "5 tokens per parameter" in lines[0] and "target N / N_opt = 4" in lines[1]
    assert lines[2].startswith("WARNING: the target is 4x larger than compute-optimal")
    small = regime_lines(regime(CHINCHILLA_RULE, n // 2, 20 * n, flops))
    assert not any("WARNING" in line for line in small)
    assert regime_lines(regime(None, n, 20 * n, flops))[-1].startswith("No compute-optimal law")


@pytest.mark.parametrize("law, message", [
    (ComputeOptimalLaw(-1.0, 0.5, "x"), "coefficient=-1.0"),
    (ComputeOptimalLaw(0.1, 1.5, "x"), "exponent=1.5"),
    (ComputeOptimalLaw(0.1, 0.5, " "), "source"),
])
def test_bad_compute_optimal_law_is_refused(law, message):
    with pytest.raises(ConfigError, match=message):
        law.validate()


def test_a_difference_within_seed_noise_gets_no_verdict():
    """Three seeds: g_stack is clearly better than the baseline, but its lead over the control flips
    sign between seeds, so the report says there is no verdict against the control."""
    report = synthetic_report({"scratch": [3.0, 3.1, 3.05], "small-only:L1": [2.5, 2.7, 2.6],
                               "g_stack": [2.45, 2.75, 2.58], "compound": [2.9, 3.0, 2.95],
                               "progressive": [3.3, 3.4, 3.35]})
    lines = report["verdicts"]["g_stack"]["lines"]
    assert report["verdicts"]["g_stack"]["vs_baseline"]["clear"] is True
    assert report["verdicts"]["g_stack"]["vs_control"]["clear"] is False
    assert lines[-1].startswith("No verdict against small-only:L1: the 90% interval")
    assert not any("No verdict" in line for line in report["verdicts"]["compound"]["lines"])

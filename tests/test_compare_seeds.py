"""Seeds, budgets and the schedule-fair compute multiplier of `tgrow compare`, and a 2-seed micro run."""

import json
import math

import pytest

from transformer_grow.cli.main import main
from transformer_grow.compare.budgets import compute_multipliers, fit_power, fit_saturating
from transformer_grow.compare.run import CompareConfig, run_compare
from transformer_grow.compare.stats import NO_INTERVAL, fmt, summarize
from transformer_grow.data import DataConfig, prepare_data
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # micro models: threads only slow a shared CPU

def test_t_interval_over_seeds_on_known_numbers():
    s = summarize([1.0, 2.0, 3.0])
    half = 2.919986 / math.sqrt(3)  # t_{0.95, 2} * sd (= 1) / sqrt(3)
    assert s["mean"] == pytest.approx(2.0) and (s["low"], s["high"]) == pytest.approx((2 - half, 2 + half), rel=1e-5)
    assert fmt(s, suffix="x") == f"2.00x [{2 - half:.2f}, {2 + half:.2f}]"
    one = summarize([1.5])
    assert one["mean"] == 1.5 and one["low"] is None and fmt(one) == "1.50"
    missing = summarize([1.0, None, 3.0])  # a plan that never reached the loss in one seed
    assert (missing["n"], missing["missing"], missing["mean"]) == (2, 1, 2.0)
    assert "(1 of 3 seeds: n/a)" in fmt(missing)
    assert summarize([None])["mean"] is None


def test_power_law_fit_recovers_a_known_compute_multiplier():
    flops = [1e9, 2e9, 4e9]
    baseline = [(c, 5.0 * c ** -0.1) for c in flops]
    plan = [(c, 5.0 * (2.0 * c) ** -0.1) for c in flops]  # worth twice its compute at every budget
    law = fit_power(*zip(*baseline))
    assert (law.a, law.b) == pytest.approx((5.0, 0.1))
    out = compute_multipliers({"scratch": baseline, "g": plan}, "scratch")
    assert out["g"]["multiplier_power"] == pytest.approx(2.0)
    assert out["g"]["extrapolated_power"] is True  # 8e9 FLOPs: past the baseline's largest budget
    assert out["scratch"]["multiplier_power"] == pytest.approx(1.0)
    assert "multiplier_saturating" not in out["g"]  # three budgets: no irreducible term


def test_saturating_fit_with_four_budgets():
    flops = [1e9, 2e9, 4e9, 8e9]
    law = fit_saturating(flops, [1.5 + 2000.0 * c ** -0.3 for c in flops])
    assert law.E == pytest.approx(1.5, rel=0.05) and law.b == pytest.approx(0.3, rel=0.05)
    baseline = [(c, 1.5 + 2000.0 * c ** -0.3) for c in flops]
    worse = [(c, 1.5 + 2000.0 * (c / 2) ** -0.3) for c in flops]  # worth half its compute
    out = compute_multipliers({"scratch": baseline, "g": worse}, "scratch")
    assert out["g"]["multiplier_saturating"] == pytest.approx(0.5, rel=0.05)
    assert out["g"]["extrapolated_saturating"] is False


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    words = "the quick brown fox jumps over a lazy dog while growing models learn faster than ever".split()
    for f in range(6):
        lines = [" ".join(words[(i * 5 + j * 3 + f) % len(words)] for j in range(12)) for i in range(100)]
        (root / f"doc{f}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


def test_two_seeds_two_budgets_with_controls_end_to_end(text_dir, tmp_path):
    data_config = DataConfig(corpus=str(text_dir), tokenizer="bytes", cache_dir=str(tmp_path / "c"))
    data = prepare_data(data_config, progress=False)
    config = CompareConfig(
        name="micro-seeds", target=preset("micro", n_layer=2, seq_len=32), budget_tokens=24 * 4 * 32,
        plans=["g_stack"], train=TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu"),
        data=data_config, plan_options=PlanOptions(growth_fraction=0.4), n_evals=3, eval_windows=2,
        seeds=[0, 1], budgets=[0.5])
    lines = []
    report = run_compare(config, tmp_path / "out", data=data, log=lines.append, progress_log=None)
    runs = tmp_path / "out" / "runs"
    for seed in (0, 1):
        for name in ("scratch", "g_stack", "small-only-L1"):
            assert (runs / f"seed{seed}" / name / "result.json").exists()
            assert (runs / f"seed{seed}" / "budget0.5" / name / "result.json").exists()
    strict = json.loads((tmp_path / "out" / "report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert strict["seeds"] == [0, 1] and strict["interval"].startswith("90% Student t")
    assert [r["name"] for r in report["runs"]] == ["scratch", "g_stack", "small-only:L1"]  # the first seed's
    per_seed = report["per_seed"]
    assert set(per_seed) == {"0", "1"} and per_seed["0"]["final_val_loss"] != per_seed["1"]["final_val_loss"]
    finals = report["aggregate"]["g_stack"]["final_val_loss"]
    assert finals["mean"] == pytest.approx((per_seed["0"]["final_val_loss"]["g_stack"]
                                            + per_seed["1"]["final_val_loss"]["g_stack"]) / 2)
    assert finals["low"] < finals["mean"] < finals["high"]
    budgets = report["budgets"]
    assert budgets["fractions"] == [0.5, 1.0] and set(budgets["multiplier"]) == {"scratch", "g_stack",
                                                                                  "small-only:L1"}
    assert budgets["multiplier"]["scratch"]["power"]["mean"] == pytest.approx(1.0)
    half = budgets["per_seed"]["0"]["g_stack"]["points"]
    assert half[0][0] == pytest.approx(half[1][0] / 2, rel=0.1)  # the half-budget run spent half the FLOPs
    assert "small-only:L1" in " ".join(report["verdicts"]["g_stack"]["lines"])
    md = (tmp_path / "out" / "report.md").read_text()
    for heading in ("## Regime", "## Over seeds", "## Verdicts", "## Per seed", "## Schedule-fair"):
        assert heading in md
    assert any(line.startswith("g_stack: ") for line in lines)  # the verdicts are printed too


def test_single_seed_report_says_there_is_no_interval():
    from test_compare_controls import synthetic_report

    from transformer_grow.compare.report import markdown_summary

    report = synthetic_report({"scratch": [3.0], "small-only:L1": [2.5], "g_stack": [2.3], "compound": [2.7],
                               "progressive": [3.2]})
    assert report["interval"] == NO_INTERVAL and "1 seed: no interval" in markdown_summary(report)
    assert report["budgets"] is None


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0,0"], "lists a seed twice"),
    (["--seeds", "0,1", "--seed", "3"], "--seed 3 and --seeds [0, 1] disagree"),
    (["--budgets", "1.5"], "budgets=[1.5] is not allowed"),
    (["--budgets", "1"], "at least one below 1"),
    (["--budgets", "0.001"], "budgets fraction 0.001 is too small"),
    (["--compute-optimal", "{coefficient: 0.1, exponent: 2, source: x}"], "exponent=2"),
])
def test_compare_refuses_bad_seeds_budgets_and_laws_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--budget-tokens", "200k", "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compare_flags_set_seeds_budgets_and_controls():
    import argparse

    from transformer_grow.cli.compare import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "--seeds", "0,1,2", "--budgets", "0.25,0.5", "--no-controls",
                              "--budget-tokens", "2M"])
    config = config_from_args(args)
    assert config.seeds == [0, 1, 2] and config.fractions() == [1.0, 0.25, 0.5] and config.controls is False
    assert config_from_args(parser.parse_args(["compare", "--seed", "7"])).seeds == [7]
    with pytest.raises(ConfigError, match="seeds"):
        CompareConfig(**{**vars(config), "seeds": []}).validate()


def test_empty_budgets_switch_a_presets_budgets_off():
    from transformer_grow.cli.compare import config_from_args
    from transformer_grow.cli.main import build_parser

    parser = build_parser()
    assert config_from_args(parser.parse_args(["compare", "--preset", "dev"])).budgets == [0.25, 0.5]
    assert config_from_args(parser.parse_args(["compare", "--preset", "dev", "--budgets", ""])).budgets is None
    assert config_from_args(parser.parse_args(["compare", "--preset", "dev", "--budgets", "0.5"])).budgets == [0.5]


def test_a_comparison_may_gain_seeds_in_place_but_not_other_settings(tmp_path):
    from transformer_grow.compare.run import SETTINGS_FILENAME, _check_settings

    settings = {"name": "q", "seeds": [0, 1, 2], "train": {"lr": 3e-3}}
    _check_settings(tmp_path, settings)
    _check_settings(tmp_path, {**settings, "seeds": [0, 1, 2, 3, 4]})  # more seeds: every run checks its own
    assert json.loads((tmp_path / SETTINGS_FILENAME).read_text())["seeds"] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="other settings; resume it with the same settings"):
        _check_settings(tmp_path, {**settings, "train": {"lr": 1e-3}})

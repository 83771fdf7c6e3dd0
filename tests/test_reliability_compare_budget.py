"""Issue 13.6: `tgrow compare` refuses a budget it cannot honour: zero, one too small for a step per
evaluation, or one where a plan, rounded to whole steps, would spend more than the baseline."""

from __future__ import annotations

import dataclasses

import pytest
from reliability_helpers import assert_refused, tgrow

from transformer_grow.compare.run import compare_preset
from transformer_grow.errors import ConfigError


@pytest.mark.parametrize("budget, message", [
    ("0", "budget_tokens=0 must be a positive integer"),
    ("10", "budget_tokens=10 is too small"),
    ("1e16", "at most"),
])
def test_a_budget_that_cannot_be_honoured_is_refused(budget, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert_refused(tgrow(capsys, "compare", "--budget-tokens", budget, "--out", out), message)
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::transformer_grow.plans.timing.GrowthTimingWarning")
def test_a_plan_that_would_overspend_the_baseline_is_refused():
    config = compare_preset("quick")
    step = config.train.batch_size * config.target.seq_len
    # 3 steps: g_stack's two stages, each rounded up to whole steps, overspend the baseline
    config = dataclasses.replace(config, budget_tokens=3 * step, n_evals=2)
    with pytest.raises(ConfigError, match=r"plan 'g_stack' would spend 1\.\d+x the baseline's FLOPs"):
        config.validate()
    dataclasses.replace(config, budget_tokens=300 * step).validate()  # the preset's own scale is fine

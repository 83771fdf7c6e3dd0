"""The growth ladder (`tgrow scaling ladder`): its rules, the law from its IsoFLOP grid, a tiny ladder end to
end, and one-line refusals."""

from __future__ import annotations

import json
import math

import pytest
from reliability_helpers import assert_refused, tgrow
from test_compare_seeds import text_dir  # noqa: F401 - the module-scoped corpus fixture

from transformer_grow.data import prepare_data
from transformer_grow.errors import ConfigError
from transformer_grow.io import atomic_write_text, json_text
from transformer_grow.ladder.config import LadderConfig, tokens_for
from transformer_grow.ladder.run import GRID_RESULTS, fit_law, run_ladder, rung_target

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::transformer_grow.plans.timing.GrowthTimingWarning")]


def test_batch_grows_with_compute_and_shapes_keep_rope_pairs():
    config = LadderConfig()
    assert config.batch_size(4e12) == 32 and config.batch_size(1e12) == 16 and config.batch_size(1e9) == 4
    assert [config.batch_size(c) for c in config.budgets] == sorted(config.batch_size(c) for c in config.budgets)
    wide, odd = config.model(32), config.model(30)
    assert (wide.n_head, wide.head_dim, wide.d_ff, wide.n_layer) == (2, 16, 128, 4)  # the presets' 4 x 32 shape
    assert (odd.n_head, odd.head_dim) == (1, 30)  # two heads of 15 would break rotary pairs
    width, n = config.nearest_width(9000)
    assert width == 12 and abs(math.log(n / 9000)) < math.log(1.25)
    train = config.train_config(tokens=1_000_000, flops=1e11)
    assert train.batch_size == config.batch_size(1e11) and train.warmup_steps >= config.min_warmup


@pytest.mark.parametrize("changes,message", [
    ({"budgets": [1e10]}, "at least two distinct FLOP budgets"),
    ({"plans": ["scratch"]}, "choose growth plans"),
    ({"fractions": [0.5]}, "at least two budget fractions"),
    ({"seeds": [0, 0]}, "distinct seeds"),
    ({"grid_points": 2}, "grid_points=2"),
    ({"min_batch": 64}, "must not exceed max_batch"),
])
def test_bad_settings_are_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        LadderConfig(**changes).validate()


def test_cli_refuses_bad_settings_before_any_work(tmp_path, capsys):
    assert_refused(tgrow(capsys, "scaling", "ladder", "--budgets", "1e10", "--out", tmp_path / "l"),
                   "at least two distinct FLOP budgets")
    assert not (tmp_path / "l").exists()


def synthetic_grid(config: LadderConfig, out, k: float, a: float, vocab: int = 256) -> None:
    """IsoFLOP records whose loss is a parabola in ln N with its vertex at N_opt = k C^a."""
    records = []
    widths = config.widths(6 * k * max(config.budgets) ** a, vocab)
    for flops in config.budgets:
        n_opt = k * flops ** a
        for width, n in widths:
            if not n_opt / 6 < n < n_opt * 6:
                continue
            loss = 3.0 - 0.1 * math.log(flops) + 0.05 * math.log(n / n_opt) ** 2
            model = config.model(width, vocab)
            records.append({"run_id": f"C{flops:.3g}-d{width}-s0", "budget": flops, "d_model": width, "seed": 0,
                            "n_params_nonembedding": n, "tokens": tokens_for(model, flops), "flops": flops,
                            "final_val_loss": loss})
    atomic_write_text(out / GRID_RESULTS, "".join(json_text(r) + "\n" for r in records))


def test_law_from_the_grid_recovers_the_optimum(tmp_path):
    config = LadderConfig(budgets=[1e10, 1e11, 1e12])
    synthetic_grid(config, tmp_path, k=0.5, a=0.4)
    law = fit_law(config, tmp_path)
    assert law["exponent"] == pytest.approx(0.4, abs=0.02) and law["coefficient"] == pytest.approx(0.5, rel=0.3)
    assert json.loads((tmp_path / "law.json").read_text())["exponent"] == law["exponent"]
    target, ratio = rung_target(config, law, 1e11, 256)
    assert 0.8 <= ratio <= 1.25 and target.n_layer == config.n_layer


def test_a_tiny_ladder_end_to_end(text_dir, tmp_path):  # noqa: F811
    config = LadderConfig(corpus=str(text_dir), label="tiny", budgets=[1.2e8, 2.4e8], plans=["g_stack"], seeds=[0],
                          seq_len=32, min_batch=2, max_batch=2, n_evals=3, eval_windows=2)
    data = prepare_data(config.data_config(), progress=False)
    out = tmp_path / "ladder"
    out.mkdir()
    synthetic_grid(config, out, k=0.5, a=0.4, vocab=int(data.vocab_size))
    lines: list[str] = []
    summary = run_ladder(config, out, data=data, log=lines.append, progress_log=None, phases=("rungs",))
    assert summary["corpus"] == "tiny" and [r["flops"] for r in summary["rungs"]] == [1.2e8, 2.4e8]
    rung = summary["rungs"][0]
    assert 0.8 <= rung["n_over_n_opt"] <= 1.25 and rung["seeds"] == [0]
    assert set(rung["methods"]) == {"scratch", "g_stack", "small-only:L2"}
    plan = rung["methods"]["g_stack"]
    assert plan["kind"] == "plan" and plan["control"] == "small-only:L2"
    assert plan["multiplier"]["mean"] > 0 and plan["vs_scratch"]["verdict"] in ("beats", "loses", "level")
    assert rung["methods"]["small-only:L2"]["multiplier"]["mean"] > 0
    assert (out / "summary.md").exists() and any("| g_stack |" in line for line in lines)
    for i, flops in enumerate(config.budgets):  # one comparison per rung, with every budget fraction
        assert (out / "rungs" / f"{i}-C{flops:.3g}" / "runs" / "seed0" / "budget0.25" / "g_stack" / "result.json"
                ).exists()
    # resumable: the same ladder finds everything done; another ladder's settings are refused
    again = run_ladder(config, out, data=data, log=lambda line: None, progress_log=None, phases=("rungs",))
    assert again["rungs"] == summary["rungs"]
    with pytest.raises(ConfigError, match="holds a ladder with other settings"):
        run_ladder(LadderConfig(**{**config.to_dict(), "lr": 1e-3}), out, data=data, progress_log=None,
                   phases=("rungs",))

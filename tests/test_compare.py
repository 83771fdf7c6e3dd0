"""`tgrow compare`: speedup arithmetic, an end-to-end micro comparison, resume after a kill."""

import json
import os

import pytest

from transformer_grow.cli.main import main
from transformer_grow.compare.report import EvalPoint, build_report, crossing, loss_at, speedup
from transformer_grow.compare.run import CompareConfig, run_compare
from transformer_grow.data import DataConfig, prepare_data
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # micro models: threads only slow a shared CPU

def curve(*points):
    """Points ``(flops, wall, tokens, loss)``."""
    return [EvalPoint(i, int(t), float(f), float(w), float(loss)) for i, (f, w, t, loss) in enumerate(points)]




BASE = curve((0, 0, 0, 5.0), (100, 10, 1000, 4.0), (200, 20, 2000, 3.0))


def test_crossing_interpolates_between_evaluations():
    plan = curve((0, 0, 0, 5.0), (50, 8, 800, 3.5), (100, 16, 1600, 2.5))
    hit = crossing(plan, 3.0)  # halfway from 3.5 to 2.5
    assert hit == {"flops": 75.0, "wall_seconds": 12.0, "tokens": 1200.0}
    assert speedup(BASE, plan) == {"flops": 200 / 75, "wall_clock": 20 / 12, "tokens": 2000 / 1200}


def test_plan_that_never_reaches_the_baseline_loss_is_null():
    plan = curve((0, 0, 0, 5.0), (100, 10, 1500, 3.4), (210, 21, 3000, 3.01))
    assert crossing(plan, 3.0) is None
    assert speedup(BASE, plan) == {"flops": None, "wall_clock": None, "tokens": None}


def test_crossing_at_a_first_evaluation_and_noisy_baseline():
    assert crossing(curve((10, 1, 100, 2.0)), 3.0)["flops"] == 10.0
    # a baseline that dipped below its final loss earlier is measured at that earlier crossing
    noisy = curve((0, 0, 0, 5.0), (100, 10, 1000, 2.9), (200, 20, 2000, 3.0))
    assert crossing(noisy, 3.0)["flops"] == pytest.approx(100 * 2.0 / 2.1)


def test_loss_at_equal_flops():
    assert loss_at(BASE, 150) == pytest.approx(3.5)
    assert loss_at(BASE, 250) is None
    report = build_report_for([("scratch", BASE), ("g", curve((0, 0, 0, 5.0), (180, 9, 3000, 2.8)))])
    assert report["equal_flops"]["flops"] == 180
    assert report["equal_flops"]["val_loss"]["scratch"] == pytest.approx(3.2)
    assert report["speedup"]["g"]["val_loss_at_equal_flops"] == pytest.approx(2.8)


def build_report_for(runs):
    from transformer_grow.compare.report import RunRecord

    records = [RunRecord(name, c, c[-1].flops, c[-1].tokens, c[-1].wall_seconds) for name, c in runs]
    return build_report(records, "scratch", {"preset": "test"})


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "growing", "models",
             "learn", "faster", "than", "ever"]
    for f in range(8):
        lines = [" ".join(words[(i * 7 + j * 3 + f) % len(words)] for j in range(12)) for i in range(120)]
        (root / f"doc{f}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


def micro_config(text_dir, cache, plans=("g_stack",)):
    return CompareConfig(
        name="micro-test", target=preset("micro", n_layer=2, seq_len=32), budget_tokens=40 * 4 * 32,
        plans=list(plans), train=TrainConfig(batch_size=4, lr=3e-3, warmup_steps=3, max_steps=1, device="cpu"),
        data=DataConfig(corpus=str(text_dir), tokenizer="bytes", cache_dir=str(cache)),
        plan_options=PlanOptions(growth_fraction=0.3), n_evals=4, eval_windows=4)


def test_micro_compare_end_to_end_through_the_cli(text_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--preset", "quick", "--target", "micro", "--n-layer", "2", "--seq-len", "32",
                 "--budget-tokens", str(40 * 4 * 32), "--batch-size", "4", "--warmup-steps", "3", "--device", "cpu",
                 "--plans", "g_stack,compound", "--growth-fraction", "0.3", "--n-evals", "4", "--eval-windows", "4",
                 "--corpus", str(text_dir), "--tokenizer", "bytes", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for png in ("loss_vs_flops.png", "loss_vs_wall.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "report.md").read_text()
    assert "| g_stack |" in summary and "FLOPs speedup" in summary
    # the baseline, the plans, then one small-only control per distinct first-stage model
    assert [r["name"] for r in report["runs"]] == ["scratch", "g_stack", "compound", "small-only:L1",
                                                   "small-only:L1-d32"]
    assert report["methods"]["g_stack"] == {"kind": "plan", "control": "small-only:L1", "control_of": []}
    assert report["methods"]["small-only:L1-d32"]["control_of"] == ["compound"]
    assert "## Verdicts (equal FLOPs)" in summary and "| small-only:L1 | control |" in summary
    for run in report["runs"]:
        assert {"name", "final_val_loss", "total_flops", "wall_seconds"} <= set(run)
        assert run["final_val_loss"] == run["curve"][-1]["val_loss"] and run["wall_seconds"] > 0
        assert len(run["curve"]) >= 5  # start + 4 fixed FLOP intervals (+ final)
    for name in ("g_stack", "compound"):
        entry = report["speedup"][name]
        assert set(entry) >= {"flops", "wall_clock", "tokens"}
        assert all(entry[k] is None or entry[k] > 0 for k in ("flops", "wall_clock", "tokens"))
    # equal-FLOPs budget: every run, the controls included, spends the baseline's FLOPs to within one step
    baseline_flops = report["runs"][0]["total_flops"]
    step_flops = 4 * 32 * report["runs"][0]["stages"][0]["flops_per_token"]
    assert all(abs(r["total_flops"] - baseline_flops) <= step_flops for r in report["runs"])
    g_stack = report["runs"][1]
    assert sum(s["flops"] for s in g_stack["stages"]) == g_stack["total_flops"]  # small model's FLOPs included
    assert g_stack["stages"][0]["model"].startswith("L=1") and len(g_stack["events"]) == 1
    assert "FLOPs speedup" in capsys.readouterr().out


def test_killed_compare_resumes_without_rerunning_finished_runs(text_dir, tmp_path):
    data = prepare_data(DataConfig(corpus=str(text_dir), tokenizer="bytes", cache_dir=str(tmp_path / "c")),
                        progress=False)
    config = micro_config(text_dir, tmp_path / "c")
    out = tmp_path / "cmp"
    # "killed" after run 1 (runs one after another)
    assert run_compare(config, out, data=data, progress_log=None, interleave=False, max_runs=1) is None
    first = out / "runs" / "seed0" / "scratch" / "result.json"
    stamp = first.stat().st_mtime_ns
    assert not (out / "report.json").exists()
    # the second run is interrupted midway too: it resumes from its checkpoint
    from transformer_grow.run.manager import GrowthManager

    manager = GrowthManager(config.target.replace(vocab_size=256), "g_stack", budget_tokens=config.budget_tokens,
                            train_config=config.train, plan_options=config.plan_options, n_evals=config.n_evals,
                            eval_windows=config.eval_windows, out_dir=out / "runs" / "seed0" / "g_stack", log=None)
    assert manager.run(data, limit_steps=20) is None
    assert (out / "runs" / "seed0" / "g_stack" / "checkpoint").is_dir()
    lines = []
    report = run_compare(config, out, data=data, log=lines.append, progress_log=lines.append, interleave=False)
    assert first.stat().st_mtime_ns == stamp  # the finished baseline was not re-run
    assert any("resuming at step 20" in line for line in lines)
    assert [r["name"] for r in report["runs"]] == ["scratch", "g_stack", "small-only:L1"]
    assert json.loads((out / "report.json").read_text())["speedup"]["g_stack"].keys() >= {"flops", "wall_clock"}
    # an uninterrupted run gives the same curve (exact resume)
    fresh = GrowthManager(config.target.replace(vocab_size=256), "g_stack", budget_tokens=config.budget_tokens,
                          train_config=config.train, plan_options=config.plan_options, n_evals=config.n_evals,
                          eval_windows=config.eval_windows, log=None).run(data)
    resumed = report["runs"][1]["curve"]
    assert [p["val_loss"] for p in resumed] == pytest.approx([p.val_loss for p in fresh.record.curve], abs=1e-5)
    # a rerun with other settings in the same directory is refused
    other = micro_config(text_dir, tmp_path / "c", plans=("compound",))
    with pytest.raises(ConfigError, match="other settings"):
        run_compare(other, out, data=data, progress_log=None)
    assert os.path.exists(out / "report.json")


def test_plan_cli_prints_stages_and_g_stack_timing(capsys):
    assert main(["plan", "--plan", "g_stack", "--preset", "tiny", "--budget-tokens", "20M"]) == 0
    out = capsys.readouterr()
    assert "G_stack timing (Du et al. 2024" in out.out and "clamped" in out.out
    assert "small L=2" in out.out and "total" in out.out
    assert main(["plan", "--plan", "g_stack", "--preset", "tiny", "--budget-tokens", "20M",
                 "--growth-factor", "3"]) == 2
    assert "growth factor 3" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--plans", "scratch"], "plan 'scratch' is not a growth plan"),
    (["--plans", "g_stack,nope"], "plan 'nope' is not a growth plan"),
    (["--growth-factor", "3"], "growth factor 3"),
    (["--corpus", "/nonexistent/dir"], "does not exist"),
])
def test_compare_refuses_bad_settings_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--budget-tokens", "10k", "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_report_says_when_a_smaller_stage_reached_the_baseline_loss():
    small_first = curve((0, 0, 0, 5.0), (100, 10, 1500, 2.9), (200, 20, 3000, 2.5))
    small_first[1].stage, small_first[2].stage = 0, 1
    report = build_report_for([("scratch", BASE), ("g", small_first)])
    assert report["speedup"]["g"]["reached_in_stage"] == 0
    assert report["speedup"]["g"]["reached_before_final_stage"] is True
    from transformer_grow.compare.report import markdown_summary

    assert "reached the baseline's final loss before the last growth" in markdown_summary(report)


def test_interleaved_compare_killed_midway_resumes_every_run(text_dir, tmp_path):
    data = prepare_data(DataConfig(corpus=str(text_dir), tokenizer="bytes", cache_dir=str(tmp_path / "c")),
                        progress=False)
    config = micro_config(text_dir, tmp_path / "c")
    lines = []
    assert run_compare(config, tmp_path / "a", data=data, progress_log=lines.append, max_rounds=2) is None
    assert sum("round 2/4 done" in line for line in lines) == 1
    for name in ("scratch", "g_stack", "small-only-L1"):  # every run paused halfway, checkpointed
        assert (tmp_path / "a" / "runs" / "seed0" / name / "checkpoint").is_dir()
        assert not (tmp_path / "a" / "runs" / "seed0" / name / "result.json").exists()
    lines.clear()
    resumed = run_compare(config, tmp_path / "a", data=data, log=lines.append, progress_log=lines.append)
    assert sum("resuming at step" in line for line in lines) == 3
    straight = run_compare(config, tmp_path / "b", data=data, log=lines.append, progress_log=None)
    for a, b in zip(resumed["runs"], straight["runs"]):
        assert [p["val_loss"] for p in a["curve"]] == pytest.approx([p["val_loss"] for p in b["curve"]], abs=1e-5)
        assert [p["flops"] for p in a["curve"]] == [p["flops"] for p in b["curve"]]
    assert resumed["settings"]["interleaved"] is True


def test_report_lists_growth_expert_and_ligo_events_and_the_final_routing():
    from transformer_grow.compare.sections import events_lines

    grow = {"step": 40, "flops": 2.5e9, "operator": "depth=stack", "kind": "approximate", "val_loss_before": 2.5,
            "val_loss_after": 2.75, "ligo_steps": 5, "ligo_tokens": 20480, "ligo_flops": 6.06e9,
            "ligo_loss_first": 2.7, "ligo_loss_last": 2.55, "ligo_bound_bytes": 3 * 2**20}
    experts = {"step": 60, "flops": 7.5e9, "operator": "experts=adapt", "kind": "exact", "experts_before": [4, 4],
               "experts": [3, 5]}
    routing = {"step": 80, "flops": 1e10, "stage": 1, "mean_active_experts": 1.5, "unrouted": 0.02,
               "load_imbalance": 1.25, "experts": [3, 5]}
    report = {"runs": [{"name": "scratch", "total_flops": 1e10, "events": [], "stages": [{}]},
                       {"name": "ligo", "total_flops": 1e10, "events": [grow], "stages": [{}, {}]},
                       {"name": "dynamic", "total_flops": 1e10, "events": [experts],
                        "stages": [{}, {"routing": [routing]}]}]}
    lines = events_lines(report)
    assert not any("scratch" in line for line in lines)  # nothing happened to the baseline
    assert lines[1] == ("  - step 40 (25% of the FLOPs): depth=stack (approximate); val loss 2.5000 -> 2.7500; LiGO "
                        "phase 5 steps on 20,480 tokens, 6.06e+09 FLOPs (counted), its loss 2.7000 -> 2.5500, "
                        "memory bound 3.00 MiB")
    assert lines[3] == "  - step 60 (75% of the FLOPs): experts per layer [4, 4] -> [3, 5] (exact)"
    assert lines[4] == ("  - routing at the end: 1.50 active experts per token, 2.0% of tokens fired no expert, load "
                        "imbalance 1.25 (1 = balanced), experts per layer [3, 5]")

"""Distributed training and growth: 2 CPU processes (gloo) under DDP and FSDP2, against one process.

One job under the real launcher (`torchrun --standalone --nproc_per_node 2 tests/test_distributed.py`) runs
every distributed scenario and leaves its results in files; the tests below check them against a
single-process run of the same global batches. Tolerances: per-step training loss within 1e-5 relative,
parameters within 1e-5 absolute (different float summation order of the batch mean; Adam's update is bounded
by the learning rate). DDP replicas must be bitwise identical across ranks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transformer_grow.data.tokens import TokenData
from transformer_grow.distributed.env import RankData, check_batch_split, resolve_dist_device, torchrun_ranks
from transformer_grow.distributed.guard import ParameterSignature, WrappedModelChanged, ensure_unwrapped
from transformer_grow.errors import ConfigError
from transformer_grow.io import atomic_save_safetensors, atomic_write_json, atomic_write_text
from transformer_grow.model import GPT, preset
from transformer_grow.model.gpt import Block
from transformer_grow.run.event import grow_trainer
from transformer_grow.train import TrainConfig, Trainer, load_checkpoint, read_metrics
from transformer_grow.train.distributed import distributed_session, make_trainer, resume_trainer

WORLD = 2
STEPS_BEFORE, STEPS_AFTER = 3, 3
SCENARIOS = {"ddp": "stack", "fsdp": "insert_zero"}  # strategy -> depth growth operator (2 -> 4 layers)
# Ranks sum gradients in another order than one process does, so gradients differ by float rounding;
# Adam divides by sqrt(v), which can turn a rounding difference in a near-zero gradient into a visible
# update difference. 1e-4 is still 30x below one Adam step at lr=3e-3: a missed sync or a skipped
# micro-batch moves parameters by whole steps and fails this (checked by reversing the sync logic).
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-4
MANAGER_BUDGET_TOKENS = 8 * 8 * 16  # 8 steps of the target: 4 steps of the 2-layer model, then 4-layer steps
JOB_TIMEOUT_S = 240
DEMO_ARGS = ["--parallel", "fsdp", "--device", "cpu", "--steps-before", "2", "--steps-after", "2", "--seq-len", "32"]


def _data() -> TokenData:
    rng = np.random.default_rng(0)
    return TokenData(train=rng.integers(0, 64, 4000), val=rng.integers(0, 64, 800), vocab_size=64)


def _model_config():
    return preset("micro", vocab_size=64, seq_len=16, d_model=32, n_head=4)


def _train_config() -> TrainConfig:
    return TrainConfig(batch_size=8, grad_accum=2, max_steps=STEPS_BEFORE + STEPS_AFTER + 1, warmup_steps=1, lr=3e-3,
                       eval_interval=0, eval_windows=4, log_interval=1, ckpt_interval=0, device="cpu",
                       dtype="fp32", seed=0)


def _train_and_grow(trainer: Trainer, method: str) -> list[float]:
    """3 steps, grow 2 -> 4 layers (moments carried, 2 re-warmup steps), 3 steps; per-step losses."""
    losses = [trainer.train_steps(1) for _ in range(STEPS_BEFORE)]
    grow_trainer(trainer, _model_config().replace(n_layer=4), method, rewarmup_steps=2, seed=1)
    losses += [trainer.train_steps(1) for _ in range(STEPS_AFTER)]
    return losses


# ----------------------------------------------------------------------------------------- the job
def _scenario(env, strategy: str, out: Path) -> dict:
    from transformer_grow.operators import grow

    trainer = make_trainer(_model_config(), _train_config(), _data(), out_dir=out / strategy, strategy=strategy,
                           env=env)
    losses = _train_and_grow(trainer, SCENARIOS[strategy])
    history = [r["train_loss"] for r in trainer.history if "train_loss" in r]
    val_loss = trainer.evaluate()
    trainer.save()
    atomic_save_safetensors(out / f"{strategy}-full-rank{env.rank}.safetensors",
                            trainer.parallel.wrapped.full_model_state())
    if strategy == "ddp":  # each rank's own replica
        atomic_save_safetensors(out / f"ddp-local-rank{env.rank}.safetensors", trainer.model.state_dict())
    result = {"losses": losses, "history": history, "val_loss": val_loss, "tokens": trainer.tokens,
              "flops": trainer.flops, "step": trainer.step, "n_layer": trainer.model.config.n_layer}
    if strategy == "fsdp":  # resume the checkpoint under FSDP: one more step, same as the live trainer
        resumed = resume_trainer(out / strategy, _data(), out_dir=out / "fsdp-resumed", strategy="fsdp", env=env)
        result["resumed_loss"] = resumed.train_steps(1)
        result["continued_loss"] = trainer.train_steps(1)
        resumed.close()
    try:  # a failed growth (n_layer 4 -> 6 is no whole stacking factor) leaves the old model training
        grow_trainer(trainer, _model_config().replace(n_layer=6), "stack")
        result["failed_growth"] = "not refused"
    except ConfigError as e:
        result["failed_growth"] = str(e)
    result["loss_after_failed_growth"] = trainer.train_steps(1)
    result["n_layer_after_failed_growth"] = trainer.model.config.n_layer
    refusals = {}
    for what, attempt in (("ensure_unwrapped", lambda: ensure_unwrapped(trainer.model)),
                          ("grow_wrapped",
                           lambda: grow(trainer.parallel.wrapped.module, _model_config().replace(n_layer=8)))):
        try:
            attempt()
            refusals[what] = "not refused"
        except Exception as e:  # noqa: BLE001 - the type and message are the result
            refusals[what] = f"{type(e).__name__}: {e}"
    trainer.model.blocks["appended"] = Block(trainer.model.config)  # growth in place under the live wrapper
    try:
        trainer.train_steps(1)
        refusals["train_after_append"] = "not refused"
    except WrappedModelChanged as e:
        refusals["train_after_append"] = f"WrappedModelChanged: {e}"
    result["refusals"] = refusals
    trainer.close()
    return result


def _manager(out_dir: Path | None, strategy: str | None = None, env=None):
    """A g_stack plan (2 -> 4 layers at half the budget, moments carried) run by GrowthManager."""
    from transformer_grow.plans.builders import PlanOptions
    from transformer_grow.run.manager import GrowthManager

    return GrowthManager(_model_config().replace(n_layer=4), "g_stack", budget_tokens=MANAGER_BUDGET_TOKENS,
                         train_config=_train_config(), plan_options=PlanOptions(growth_fraction=0.5), n_evals=2,
                         eval_windows=4, out_dir=out_dir, log=print, parallel=strategy, env=env)


def _manager_scenario(env, strategy: str | None, out: Path) -> dict:
    manager = _manager(None if strategy is None else out / f"manager-{strategy}", strategy, env)
    record = manager.run(_data()).record
    return {"curve": [p.val_loss for p in record.curve], "tokens": record.total_tokens, "flops": record.total_flops,
            "events": [(e["step"], e["operator"]) for e in record.events]}


def _single_process_reference(out: Path) -> None:
    """Plain :class:`Trainer` runs (no process group used) of the same scenarios: same global batches,
    growth and seeds. Run by rank 0 of the job, where torchrun has set one thread per process."""
    runs = {}
    for strategy, method in SCENARIOS.items():
        trainer = Trainer(_model_config(), _train_config(), _data())
        losses = _train_and_grow(trainer, method)
        runs[strategy] = {"losses": losses, "val_loss": trainer.evaluate(), "tokens": trainer.tokens,
                          "flops": trainer.flops}
        atomic_save_safetensors(out / f"reference-{strategy}.safetensors", trainer.model.state_dict())
        if strategy == "fsdp":
            runs[strategy]["next_loss"] = trainer.train_steps(1)
    runs["manager"] = _manager_scenario(None, None, out / "reference")
    atomic_write_json(out / "reference.json", runs)


def _torchrun_worker(out: str) -> None:
    """One rank of the job (``torchrun ... tests/test_distributed.py OUT``): the scenarios, then the demo."""
    import dist_demo

    out_dir = Path(out)
    atomic_write_text(out_dir / f"pid-rank{os.environ['RANK']}", str(os.getpid()))  # for the fixture's cleanup
    try:
        with distributed_session(device="cpu") as env:
            results = {strategy: _scenario(env, strategy, out_dir) for strategy in SCENARIOS}
            results["manager"] = {strategy: _manager_scenario(env, strategy, out_dir) for strategy in SCENARIOS}
            if env.is_main:
                _single_process_reference(out_dir)
            # The demo's own session reuses this group and leaves it alive; this session ends it.
            results["demo_exit_code"] = dist_demo.main(DEMO_ARGS + ["--out", str(out_dir / "demo")])
            results["initialized_after_demo"] = torch.distributed.is_initialized()
        results["initialized_after_session"] = torch.distributed.is_initialized()
    except BaseException:
        atomic_write_json(out_dir / f"error-rank{os.environ['RANK']}.json", {"traceback": traceback.format_exc()})
        raise
    atomic_write_json(out_dir / f"results-rank{env.rank}.json", results)


def _worker_pids(out: Path) -> list[int]:
    return [int(p.read_text()) for p in out.glob("pid-rank*")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen, out: Path) -> None:
    """SIGTERM to torchrun (it stops its workers), then SIGKILL whatever is left: the launcher's process
    group and every rank (each recorded its pid; torchrun starts them in sessions of their own)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for pid in _worker_pids(out):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run the job under the real launcher; nothing it starts outlives the timeout."""
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               __file__, str(out)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "TGROW_CACHE": str(out / "cache")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        output = f"the distributed job did not finish within {JOB_TIMEOUT_S}s"
    finally:
        _stop(process, out)
    assert not [pid for pid in _worker_pids(out) if _alive(pid)], "a rank outlived the job"
    errors = "".join(p.read_text() for p in out.glob("error-rank*.json"))
    assert process.returncode == 0, f"{output}\n{errors}"
    results = [json.loads((out / f"results-rank{r}.json").read_text()) for r in range(WORLD)]
    return out, results, output


@pytest.fixture(scope="module")
def reference(job):
    """The single-process runs (see :func:`_single_process_reference`), with their final states."""
    out, _, _ = job
    runs = json.loads((out / "reference.json").read_text())
    for strategy in SCENARIOS:
        runs[strategy]["state"] = load_file(out / f"reference-{strategy}.safetensors")
    return runs


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("strategy", list(SCENARIOS))
def test_growth_run_matches_single_process(job, reference, strategy):
    out, results, _ = job
    ref = reference[strategy]
    for rank_result in results:
        got = rank_result[strategy]
        assert got["n_layer"] == 4 and got["step"] == STEPS_BEFORE + STEPS_AFTER
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(got["history"], ref["losses"], rtol=LOSS_RTOL)  # all-reduced, logged
        assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=LOSS_RTOL)
        assert (got["tokens"], got["flops"]) == (ref["tokens"], ref["flops"])  # the global batch is counted
    full = [load_file(out / f"{strategy}-full-rank{r}.safetensors") for r in range(WORLD)]
    assert _max_diff(full[0], ref["state"]) < PARAM_ATOL
    assert _max_diff(full[0], full[1]) == 0.0
    if strategy == "ddp":  # every replica is the whole model: bitwise identical after the steps
        local = [load_file(out / f"ddp-local-rank{r}.safetensors") for r in range(WORLD)]
        assert _max_diff(local[0], local[1]) == 0.0


@pytest.mark.parametrize("strategy", list(SCENARIOS))
def test_growth_manager_plan_matches_single_process(job, reference, strategy):
    out, results, output = job
    ref = reference["manager"]
    assert len(ref["events"]) == 1 and ref["events"][0][1] == "depth=stack"
    for rank_result in results:
        got = rank_result["manager"][strategy]
        assert got["events"] == ref["events"] and (got["tokens"], got["flops"]) == (ref["tokens"], ref["flops"])
        np.testing.assert_allclose(got["curve"], ref["curve"], rtol=LOSS_RTOL)
    result = json.loads((out / f"manager-{strategy}" / "result.json").read_text())  # written by rank 0
    assert result["record"]["final_val_loss"] == pytest.approx(ref["curve"][-1], rel=LOSS_RTOL)
    assert load_checkpoint(out / f"manager-{strategy}").model_config.n_layer == 4
    # One line from the single-process reference and one from rank 0 per strategy: rank 1 is silent.
    assert output.count("[g_stack] grew to L=4") == 1 + len(SCENARIOS)


@pytest.mark.parametrize("strategy", list(SCENARIOS))
def test_rank0_writes_a_full_single_process_checkpoint(job, reference, strategy):
    out, _, _ = job
    ckpt = load_checkpoint(out / strategy)
    assert ckpt.model_config.n_layer == 4 and ckpt.train_state["step"] == STEPS_BEFORE + STEPS_AFTER
    assert _max_diff(ckpt.model_state, reference[strategy]["state"]) < PARAM_ATOL
    assert set(ckpt.optimizer_state) == set(reference[strategy]["state"])
    steps = [r["step"] for r in read_metrics(out / strategy / "metrics.jsonl")]
    # One record per step (the trainer took a few more steps after saving): rank 0 is the only writer.
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > STEPS_BEFORE + STEPS_AFTER
    assert not list(out.glob("error-rank*.json"))


def test_fsdp_resume_continues_like_the_live_run(job, reference):
    _, results, _ = job
    for rank_result in results:
        got = rank_result["fsdp"]
        assert got["resumed_loss"] == got["continued_loss"]
        assert got["resumed_loss"] == pytest.approx(reference["fsdp"]["next_loss"], rel=LOSS_RTOL)


@pytest.mark.parametrize("strategy", list(SCENARIOS))
def test_growing_or_changing_a_live_wrapped_model_is_refused(job, strategy):
    _, results, _ = job
    for rank_result in results:
        refusals = rank_result[strategy]["refusals"]
        assert refusals["ensure_unwrapped"].startswith("ConfigError: cannot grow a model wrapped")
        assert "unwrap it first" in refusals["ensure_unwrapped"]
        assert refusals["grow_wrapped"].startswith("ConfigError: cannot grow a model wrapped")
        assert refusals["train_after_append"].startswith("WrappedModelChanged")
        assert "added: blocks.appended." in refusals["train_after_append"]
    assert all(r["initialized_after_demo"] for r in results)  # a nested session does not end its owner's group
    assert not any(r["initialized_after_session"] for r in results)  # barrier, then the group was destroyed


# ------------------------------------------------------------------------------ single-process parts
def test_rank_views_partition_the_global_batch():
    data = _data()
    x, y = data.batch(5, 8, 16, seed=3)
    parts = [RankData(data, r, WORLD).batch(5, 8, 16, seed=3) for r in range(WORLD)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert RankData(data, 1, WORLD).vocab_size == 64


def test_bad_distributed_settings_are_refused_before_work():
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE, LOCAL_RANK .*missing: LOCAL_RANK.*torchrun"):
        torchrun_ranks({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="RANK=2 must lie in"):
        torchrun_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="device='mps' is not allowed"):
        resolve_dist_device("mps", 0)
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by world_size \\* grad_accum = 2 \\* 2"):
        check_batch_split(6, 2, 2)
    with pytest.raises(ConfigError, match="strategy='zero3'"):
        make_trainer(_model_config(), _train_config(), _data(), strategy="zero3")
    with pytest.raises(ConfigError, match="no torch.distributed process group"):
        make_trainer(_model_config(), _train_config(), _data(), strategy="ddp")


def test_parameter_signature_names_what_changed():
    model = GPT(_model_config())
    signature = ParameterSignature.of(model)
    signature.check(model, "DistributedDataParallel")  # unchanged: passes
    ensure_unwrapped(model)  # a plain model may be grown
    model.blocks["new"] = Block(model.config)
    with pytest.raises(WrappedModelChanged, match="added: blocks.new.attn_norm.weight.*unwrap it first"):
        signature.check(model, "DistributedDataParallel")


def test_demo_under_torchrun(job):
    out, results, output = job
    assert [r["demo_exit_code"] for r in results] == [0] * WORLD
    assert "fsdp on 2 ranks (gloo, cpu): 2 layers" in output and "grew 2 -> 4 layers by depth=stack" in output
    assert output.count("largest parameter difference from rank 0: 0\n") == 1  # printed by rank 0 only
    ckpt = load_checkpoint(out / "demo")
    assert ckpt.model_config.n_layer == 4 and ckpt.train_state["tokens"] == 4 * 8 * 32  # the global batch


if __name__ == "__main__":  # a rank of the job, started by torchrun (see the `job` fixture)
    _torchrun_worker(sys.argv[1])


def test_shutdown_meets_at_a_barrier_before_destroying_the_group(monkeypatch):
    from transformer_grow.distributed import env as dist_env

    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda **kw: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    env = dist_env.DistEnv(0, 2, 0, torch.device("cpu"), "gloo")
    dist_env.shutdown_distributed(env)
    assert calls == ["barrier", "destroy"]
    monkeypatch.setattr(dist_env, "init_distributed", lambda device, timeout_s: env)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)  # the session creates the group
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"), dist_env.distributed_session("cpu"):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        raise RuntimeError("boom")
    assert calls == ["destroy"]  # after an error on this rank: no barrier the others may never reach


@pytest.mark.parametrize("strategy", list(SCENARIOS))
def test_failed_growth_rewraps_the_old_model(job, strategy):
    _, results, _ = job
    for rank_result in results:
        got = rank_result[strategy]
        assert "whole number of times" in got["failed_growth"]
        assert got["n_layer_after_failed_growth"] == 4 and np.isfinite(got["loss_after_failed_growth"])

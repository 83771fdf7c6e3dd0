"""Exact resume after a real SIGKILL: `tgrow train` killed mid-run, then `--resume`d, ends where an
uninterrupted run ends. All three runs are `python -m transformer_grow.cli.main` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_helpers import FAST_TRAIN_ARGS, TINY_MODEL_ARGS, cli_data_args

import transformer_grow
from transformer_grow.train import load_checkpoint, read_metrics, resolve_checkpoint_dir

MAX_STEPS = 150


def child_env() -> dict[str, str]:
    src = str(Path(transformer_grow.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    # Every run of this test uses one intra-op thread: identical float reductions in each process, and
    # two runs side by side do not oversubscribe a small machine.
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_tgrow(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transformer_grow.cli.main", *argv], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    args = [*TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *cli_data_args(tmp_path), "--max-steps", str(MAX_STEPS),
            "--ckpt-interval", "5", "--log-interval", "10", "--eval-interval", "50"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted = start_tgrow("train", *args, "--out", str(full))
    victim = start_tgrow("train", *args, "--out", str(killed))
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint" / "state.json").exists():
            if victim.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"training exited (rc {victim.returncode}) or stalled before its first checkpoint: "
                            f"{finish(victim)[2][-2000:]}")
            time.sleep(0.002)
        os.kill(victim.pid, signal.SIGKILL)
        assert finish(victim)[0] == -signal.SIGKILL, "the run finished before it could be killed"
        rc, _, err = finish(uninterrupted)
        assert rc == 0, err[-2000:]
        killed_at = load_checkpoint(resolve_checkpoint_dir(killed)).train_state["step"]
        assert 0 < killed_at < MAX_STEPS
        rc, out, err = finish(start_tgrow("train", "--resume", str(killed), "--no-progress"))
        assert rc == 0, err[-2000:]
    finally:
        for proc in (victim, uninterrupted):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert f"resuming at step {killed_at}" in err and f"done: step {MAX_STEPS}" in out

    a, b = load_checkpoint(full), load_checkpoint(killed)
    assert a.train_state["step"] == b.train_state["step"] == MAX_STEPS
    assert b.train_state["last_val_loss"] == pytest.approx(a.train_state["last_val_loss"], abs=1e-6)
    assert b.train_state["last_train_loss"] == pytest.approx(a.train_state["last_train_loss"], abs=1e-6)
    for name, tensor in a.model_state.items():
        assert (b.model_state[name] - tensor).abs().max() <= 1e-6, name
    assert a.train_state["tokens"] == b.train_state["tokens"] and a.train_state["flops"] == b.train_state["flops"]
    full_steps = [r["step"] for r in read_metrics(full / "metrics.jsonl")]
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == full_steps  # nothing lost or repeated

"""Issue 13.1: one writer per output directory. A second `tgrow train`/`compare`/`scaling run` on a
directory in use is refused in one line naming the holder's PID (exit 2); the lock goes with its
process (also when killed); a writer removes only temporary checkpoints no live writer owns."""

from __future__ import annotations

import os
import signal

import torch
from reliability_helpers import assert_refused, cli_data_args, start_python, tgrow, train_args

from transformer_grow.io import LOCK_FILENAME, lock_run_dir
from transformer_grow.model import GPT, preset
from transformer_grow.train.checkpoint import Checkpoint, save_checkpoint


def hold_locks(*directories) -> object:
    """A child process holding the locks of ``directories`` until its stdin closes."""
    child = start_python("import sys\nfrom contextlib import ExitStack\nfrom transformer_grow.io import lock_run_dir\n"
                         f"with ExitStack() as stack:\n    for d in {[str(d) for d in directories]!r}:\n"
                         "        stack.enter_context(lock_run_dir(d))\n    print('locked', flush=True)\n"
                         "    sys.stdin.read()\n")
    assert child.stdout.readline().strip() == "locked", child.stderr.read()
    return child


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    train_out, compare_out, grid_out = tmp_path / "train", tmp_path / "cmp", tmp_path / "grid"
    child = hold_locks(train_out, compare_out, grid_out)
    try:
        holder = f"process {child.pid}"
        assert_refused(tgrow(capsys, *train_args(tmp_path), "--out", train_out), holder, str(train_out))
        assert_refused(tgrow(capsys, *train_args(tmp_path), "--plan", "g_stack", "--n-layer", "2",
                             "--out", train_out), holder)
        assert_refused(tgrow(capsys, "compare", "--budget-tokens", "64k", "--n-evals", "2", "--growth-fraction", "0.5",
                             *cli_data_args(tmp_path),
                             "--out", compare_out), holder)
        assert_refused(tgrow(capsys, "scaling", "run", "--models", "1x32", "--tokens", "4096", "--seq-len", "32",
                             *cli_data_args(tmp_path), "--device", "cpu", "--no-progress", "--out", grid_out), holder)
        assert sorted(os.listdir(train_out)) == [LOCK_FILENAME]  # nothing written by the refused runs
    finally:
        child.kill()
        child.communicate()
    # SIGKILL released it: the directory is free again, and an unused lock leaves no file behind
    with lock_run_dir(train_out):
        pass
    assert os.listdir(train_out) == []


def test_the_lock_is_reentrant_and_a_refused_run_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    with lock_run_dir(out), lock_run_dir(out):  # the CLI and the library writer under it
        assert (out / LOCK_FILENAME).read_text().strip() == str(os.getpid())
    assert not out.exists()  # created by the lock, nothing written: removed again
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    result = tgrow(capsys, "train", "--corpus", binary, "--tokenizer", "bytes", "--max-steps", "2", "--preset",
                   "micro", "--device", "cpu", "--no-progress", "--cache-dir", tmp_path / "cache", "--out", out)
    assert_refused(result, str(binary))
    assert not out.exists()


def tiny_checkpoint() -> Checkpoint:
    config = preset("micro", n_layer=1, vocab_size=64)
    model = GPT(config)
    return Checkpoint(config, model.block_keys, {k: v.detach() for k, v in model.state_dict().items()}, None,
                      {"step": 0, "tokens": 0, "flops": 0, "wall_seconds": 0.0})


def test_stale_temporary_checkpoints_of_a_live_writer_are_kept(tmp_path):
    child = start_python("import sys; print('up', flush=True); sys.stdin.read()")
    try:
        assert child.stdout.readline().strip() == "up"
        live = tmp_path / f".checkpoint.tmp-{child.pid}-abc"
        dead = tmp_path / ".checkpoint.tmp-99999999-abc"
        live.mkdir()
        dead.mkdir()
        save_checkpoint(tmp_path / "checkpoint", tiny_checkpoint())
        assert live.exists() and not dead.exists()  # another writer may be at work in `live`
        with lock_run_dir(tmp_path):  # holding the directory: no other writer can be
            save_checkpoint(tmp_path / "checkpoint", tiny_checkpoint())
        assert not live.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    torch.manual_seed(0)

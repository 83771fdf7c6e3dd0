"""Issue 13.5: disk problems are one line, not a traceback: --out an existing file (exit 2, before any
data preparation), a read-only or forbidden location (exit 2), a full disk mid-run (exit 1, the last
good checkpoint intact and loadable)."""

from __future__ import annotations

import errno
import os

import pytest
from reliability_helpers import assert_refused, tgrow, train_args

import transformer_grow.io as tio
from transformer_grow.train.checkpoint import load_checkpoint


def test_out_an_existing_file_is_refused_before_data_preparation(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file\n")
    assert_refused(tgrow(capsys, *train_args(tmp_path), "--out", target), str(target), "not a directory")
    assert not (tmp_path / "cache").exists()  # refused before the data was prepared
    assert_refused(tgrow(capsys, *train_args(tmp_path), "--out", target / "below"), "is not a directory")
    assert_refused(tgrow(capsys, "compare", "--budget-tokens", "64k", "--n-evals", "2", "--out", target),
                   "not a directory")
    assert target.read_text() == "a file\n"


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_location_is_one_line_exit_2(code, tmp_path, capsys, monkeypatch):
    args = train_args(tmp_path)  # writes the corpus
    real_mkdir = tio.Path.mkdir

    def refuse(path, *args, **kwargs):  # what mkdir gives on a read-only filesystem or without permission
        if path.name == "run":
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(tio.Path, "mkdir", refuse)
    err = assert_refused(tgrow(capsys, *args, "--out", tmp_path / "run"), os.strerror(code))
    assert str(tmp_path / "run") in err


def test_a_full_disk_mid_run_is_one_line_exit_1_and_the_last_checkpoint_survives(tmp_path, capsys, monkeypatch):
    writes = {"n": 0}
    real = tio.atomic_write_bytes

    def fill_up(path, data):
        writes["n"] += 1
        if writes["n"] > 15:  # the initial checkpoint (step 0, in the ring) and four more fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    import transformer_grow.train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", fill_up)
    out = tmp_path / "run"
    err = assert_refused(tgrow(capsys, *train_args(tmp_path, 8), "--ckpt-interval", "1", "--out", out),
                         "No space left on device", "last checkpoint", code=1)
    assert "checkpoint" in err
    step = load_checkpoint(out).train_state["step"]
    assert step == 4  # four checkpoints of three tensor/state files each were written; the fifth failed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary checkpoint left

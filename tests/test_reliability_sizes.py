"""Issue 13.7: every size a user types is bounded before anything is allocated or prepared: one line
naming the value and the limit (exit 2), and a model + batch whose estimated memory exceeds the
machine's is refused with the estimate in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import assert_refused, tgrow, train_args

from transformer_grow.cli.main import main
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.memory import check_training_memory


@pytest.mark.parametrize("flag, value, message", [
    ("--n-layer", "99999999999", "n_layer=99999999999 is not allowed"),
    ("--d-ff", "1e11", "d_ff=100000000000 is not allowed"),
    ("--batch-size", "1e11", "batch_size=100000000000 is not allowed"),
    ("--eval-windows", "1e11", "eval_windows=100000000000 is not allowed"),
    ("--seq-len", "1e9", "seq_len=1000000000 is not allowed"),
    ("--cache-dir", "/dev/null/x", "'/dev/null' is not a directory"),
])
def test_train_refuses_an_unbounded_size_before_any_work(flag, value, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert_refused(tgrow(capsys, *train_args(tmp_path), flag, value, "--out", out), message)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_model_that_cannot_fit_in_memory_is_refused_with_the_estimate(tmp_path, capsys):
    out = tmp_path / "run"
    err = assert_refused(tgrow(capsys, *train_args(tmp_path), "--n-layer", "4000", "--d-model", "16384", "--n-head",
                               "128", "--out", out), "needs at least an estimated", "GiB", "RAM")
    assert "smaller model" in err and not out.exists()
    with pytest.raises(ConfigError, match="micro-batches of 1000000"):
        check_training_memory(preset("micro", vocab_size=256), TrainConfig(batch_size=1_000_000, max_steps=1,
                                                                           device="cpu"))
    check_training_memory(preset("micro", vocab_size=256), TrainConfig(batch_size=32, max_steps=1, device="cpu"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    assert main([*train_args(root, 2), "--out", str(root / "run")]) == 0
    return root


@pytest.mark.parametrize("flags, message", [
    (["--windows", "1e11"], "--windows=100000000000 is not allowed"),
    (["--batch-size", "1e11"], "--batch-size=100000000000 is not allowed"),
    (["--windows", "1000000", "--batch-size", "1000000"], "needs at least an estimated"),
])
def test_eval_refuses_unbounded_windows(flags, message, trained, capsys):
    assert_refused(tgrow(capsys, "eval", trained / "run", "--device", "cpu", "--no-progress", *flags), message)


def test_scaling_fit_refuses_a_binary_csv(tmp_path, capsys):
    path = tmp_path / "results.csv"
    path.write_bytes(b"n_params,tokens\n" + bytes(range(128, 256)))
    assert_refused(tgrow(capsys, "scaling", "fit", path), str(path), "is not UTF-8 text (byte offset 16")

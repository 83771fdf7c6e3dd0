"""Shared pieces of the reliability tests: run `tgrow` in-process and check a clean refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_train_helpers import FAST_TRAIN_ARGS, TINY_MODEL_ARGS, cli_data_args

import transformer_grow
from transformer_grow.cli.main import main

__all__ = ["FAST_TRAIN_ARGS", "TINY_MODEL_ARGS", "assert_refused", "child_env", "cli_data_args", "tgrow",
           "train_args"]


def tgrow(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with its exit code, stdout and stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_refused(result: tuple[int, str, str], *fragments: str, code: int = 2) -> str:
    """Exit ``code``, at most three lines of output, no traceback, and ``fragments`` in the error."""
    rc, out, err = result
    text = out + err
    assert rc == code, f"exit {rc}, expected {code}: {text[-2000:]}"
    assert "Traceback" not in text, text
    assert len(text.strip().splitlines()) <= 3, text
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def train_args(root: Path, steps: int = 4, *extra: str) -> list[str]:
    """`tgrow train` flags of a 1-layer width-32 model on the test corpus, for ``steps`` steps."""
    return ["train", *TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *cli_data_args(root), "--max-steps", str(steps), *extra]


def child_env() -> dict[str, str]:
    src = str(Path(transformer_grow.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def start_python(code: str) -> subprocess.Popen:
    """A child Python process running ``code`` (stdout piped, text mode)."""
    return subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

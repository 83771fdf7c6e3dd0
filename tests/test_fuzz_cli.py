"""Every `tgrow` flag that takes a value, given hostile values (issue 13): exit code 2, at most three
lines of output, no traceback, and nothing left in the output directory.

The flags are read from the parser itself, so a new flag is fuzzed without editing this file. Each
flag gets the values that no setting of its kind may accept: for numbers, non-finite, absurdly large
or negative values and text; for free text, a path below a file (``/dev/null/x``) and a NUL byte.
Every other argument of the command line is valid and small (a micro model, a tiny corpus, bytes
tokenizer), so a value that slipped through would show as a run that starts (exit 0 or 1).
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import pytest
import torch
import transformers as T
from reliability_helpers import FAST_TRAIN_ARGS, TINY_MODEL_ARGS, assert_refused, cli_data_args, tgrow
from test_hf_convert import CONFIGS

import transformer_grow.cli.main as cli_main
from transformer_grow.cli.flags import parse_count
from transformer_grow.cli.main import build_parser, main
from transformer_grow.train.trainer import Trainer

NUMBER_VALUES = ["nan", "-1e30", "1e30"]  # argparse refuses text; inf fails as nan does
TEXT_VALUES = ["/dev/null/x", "a\x00b"]
# Flags whose every text is a valid value: fuzzed with the number values only where they are numbers.
FREE_TEXT = {("sample", "--prompt")}
# Flags set by the base command line of each case (the fuzzed flag replaces its value there).
OUT = "{out}"


def base_commands(root: Path) -> dict[str, list[str]]:
    """A valid, small command line per sub-command; ``{out}`` is the output directory."""
    data = cli_data_args(root)
    train = [*TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *data, "--max-steps", "1"]
    return {
        "train": ["train", *train, "--out", OUT],
        "train --plan": ["train", *train, "--plan", "g_stack", "--n-layer", "2", "--growth-fraction", "0.5",
                         "--out", OUT],
        "eval": ["eval", str(root / "run"), "--device", "cpu", "--no-progress"],
        "sample": ["sample", str(root / "run"), "--max-new-tokens", "1", "--device", "cpu", "--no-progress"],
        "grow": ["grow", str(root / "run"), "--to", "tiny", "--method", "stack", "--out", OUT],
        # A Hugging Face directory in (tiny Llama; hostile directories themselves: tests/test_hf_fuzz.py).
        "grow --hf": ["grow", "--hf", str(root / "hf"), "--to", str(root / "hf-target.json"), "--depth", "insert_zero",
                      "--out", OUT],
        "hf check": ["hf", "check", str(root / "hf")],
        "plan": ["plan", "--plan", "g_stack", "--preset", "micro", "--budget-tokens", "1M"],
        "compare": ["compare", "--budget-tokens", "64k", "--n-evals", "2", "--growth-fraction", "0.5", *data,
                    "--out", OUT],
        "scaling run": ["scaling", "run", "--models", "1x32", "--tokens", "4096", "--seq-len", "32", *data,
                        "--device", "cpu", "--no-progress", "--out", OUT],
    }


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _is_numeric(action: argparse.Action) -> bool:
    return action.type in (int, float, parse_count) or getattr(action.type, "__name__", "") in (
        "_parse_float", "comma-separated int list", "comma-separated float list")


def cases() -> list[tuple[str, str, str]]:
    """``(command, flag, value)`` for every value-taking flag of every command in :func:`base_commands`."""
    parser = build_parser()
    found = []
    for command in base_commands(Path("/")):
        words = command.split()[:2] if command.startswith(("scaling", "hf")) else command.split()[:1]
        for action in _subparser(parser, words)._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
                continue
            flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
            if action.choices is not None and flag in ("--device", "--preset", "--target", "--plan", "--mode"):
                values = ["abc"]
            elif _is_numeric(action):
                values = NUMBER_VALUES
            elif (words[0], flag) in FREE_TEXT:
                continue
            else:
                values = TEXT_VALUES
            found += [(command, flag, value) for value in values]
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny corpus and a trained micro checkpoint (for eval, sample and grow)."""
    root = tmp_path_factory.mktemp("fuzz")
    argv = ["train", *TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *cli_data_args(root), "--max-steps", "1",
            "--out", str(root / "run")]
    assert main(argv) == 0
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(CONFIGS["llama"]()).save_pretrained(root / "hf")
    (root / "hf-target.json").write_text('{"model": {"n_layer": 3}}')
    return root


def _command_line(base: list[str], flag: str, value: str, out: Path) -> list[str]:
    argv = [str(out) if a == OUT else a for a in base]
    if flag in argv:  # the fuzzed flag replaces the base's value
        at = argv.index(flag)
        argv = argv[:at] + argv[at + 2:]
    return [*argv, f"{flag}={value}"]


_parser = functools.cache(build_parser)


class WorkStarted(BaseException):
    """Raised where training would start: a hostile value got through (and the test stays fast)."""


def _refuse_to_train(*args, **kwargs):
    raise WorkStarted("a trainer was built: the value was accepted")


@pytest.mark.parametrize("command, flag, value", cases())
def test_a_hostile_value_is_refused_in_one_line(command, flag, value, root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "__init__", _refuse_to_train)
    monkeypatch.setattr(cli_main, "build_parser", _parser)  # one parser for all cases (parsing changes nothing)
    out = tmp_path / "out"
    before = sorted(os.listdir(root))
    argv = _command_line(base_commands(root)[command], flag, value, out)
    assert_refused(tgrow(capsys, *argv))
    assert not out.exists(), f"{command} {flag}={value!r} left {sorted(os.listdir(out))}"
    assert sorted(os.listdir(tmp_path)) == [] and sorted(os.listdir(root)) == before


def test_every_command_is_fuzzed():
    commands = {command for command, _, _ in cases()}
    assert commands == set(base_commands(Path("/")))
    assert len(cases()) > 400

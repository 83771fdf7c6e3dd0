"""Issue 13.8: nonsense is refused, not trained on: non-finite numbers, options of a plan other than
the one chosen, and corpora that are not text in the expected encoding (strict UTF-8 by default,
naming the file and byte offset; --encoding/--encoding-errors for a user who wants otherwise)."""

from __future__ import annotations

import pytest
from reliability_helpers import assert_refused, tgrow, train_args

PLAN = ["--plan", "g_stack", "--n-layer", "2"]


@pytest.mark.parametrize("flags, message", [
    (["--rope-base", "inf"], "rope_base=inf is not allowed"),
    (["--norm-eps", "nan"], "norm_eps=nan is not allowed"),
    (["--lr", "nan"], "lr=nan is not allowed"),
    ([*PLAN, "--width-method", "bogus"], "--width-method does not apply to plan g_stack"),
    ([*PLAN, "--stage-fractions", "nan"], "--stage-fractions does not apply to plan g_stack"),
    ([*PLAN, "--progressive-steps", "-1"], "--progressive-steps does not apply to plan g_stack"),
    (["--plan", "progressive", "--n-layer", "4", "--progressive-steps", "-1"], "progressive_steps=-1 is not allowed"),
    (["--plan", "compound", "--n-layer", "2", "--stage-fractions", "nan"], "stage_fractions=[nan] is not allowed"),
    (["--plan", "scratch", "--growth-factor", "2"], "--growth-factor does not apply to plan scratch"),
    (["--encoding", "rot13"], "encoding='rot13' is not a known text encoding"),
])
def test_nonsense_settings_are_refused(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert_refused(tgrow(capsys, *train_args(tmp_path), *flags, "--out", out), message)
    assert not out.exists()


def test_plan_and_compare_refuse_options_of_other_plans(tmp_path, capsys):
    assert_refused(tgrow(capsys, "plan", "--plan", "g_stack", "--preset", "micro", "--budget-tokens", "1M",
                         "--width-method", "net2net"), "--width-method does not apply to plan g_stack")
    assert_refused(tgrow(capsys, "compare", "--plans", "g_stack", "--trigger", "{min_points: 6}",
                         "--out", tmp_path / "cmp"), "--trigger does not apply to plan g_stack")


def with_corpus(args: list[str], path) -> list[str]:
    at = args.index("--corpus") + 1
    return [*args[:at], str(path), *args[at + 1:]]


CORPORA = {
    "random bytes": (bytes(range(1, 256)) * 40, "not valid utf-8 text at byte offset 127"),
    "an ELF binary": (b"\x7fELF\x02\x01\x01" + b"\x00" * 500 + b"text" * 500, "NUL byte at byte offset 7"),
    "Latin-1 text": ("naïve café résumé\n".encode("latin-1") * 200, "not valid utf-8 text at byte offset 2"),
}


@pytest.mark.parametrize("corpus", CORPORA)
def test_a_corpus_that_is_not_utf8_text_is_refused_naming_file_and_offset(corpus, tmp_path, capsys):
    data, message = CORPORA[corpus]
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    args = with_corpus(train_args(tmp_path), path)
    assert_refused(tgrow(capsys, *args, "--out", tmp_path / "run"), str(path), message)


def test_latin1_text_trains_when_its_encoding_is_given(tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_bytes("naïve café résumé, ça va\n".encode("latin-1") * 400)
    args = with_corpus(train_args(tmp_path, 2), path)
    rc, _, err = tgrow(capsys, *args, "--encoding", "latin-1", "--out", tmp_path / "a")
    assert rc == 0, err
    rc, _, err = tgrow(capsys, *args, "--encoding-errors", "replace", "--out", tmp_path / "b")
    assert rc == 0, err

"""CLI flags generated from the config dataclasses (`transformer_grow.cli.flags`): one flag per field,
help from the field documentation, the dataclass as the one source of defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from transformer_grow.cli.common import DATA_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, build_run_setup
from transformer_grow.cli.compare import COMPARE_TRAIN_FLAGS, config_from_args
from transformer_grow.cli.flags import ConfigFlags, field_docs, parse_count
from transformer_grow.cli.main import build_parser, main
from transformer_grow.cli.plan import PLAN_FLAGS, plan_options_from_args
from transformer_grow.compare.run import CompareConfig
from transformer_grow.data import DataConfig
from transformer_grow.model import PRESETS, ModelConfig
from transformer_grow.plans.builders import PlanOptions
from transformer_grow.plans.plan import PlateauTrigger
from transformer_grow.train.config import TrainConfig

CONFIGS = [(ModelConfig, MODEL_FLAGS), (TrainConfig, TRAIN_FLAGS), (DataConfig, DATA_FLAGS), (PlanOptions, PLAN_FLAGS)]
PRESET_FIELDS = {name for settings in PRESETS.values() for name in settings}


def command(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def actions_by_flag(name: str) -> dict[str, argparse.Action]:
    return {flag: action for action in command(name)._actions for flag in action.option_strings}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("cls, flags", CONFIGS, ids=[cls.__name__ for cls, _ in CONFIGS])
def test_every_field_has_a_documented_flag_on_train(cls, flags):
    # Iterates the dataclass itself: a new field without a flag (or without documentation) fails here.
    actions = actions_by_flag("train")
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = flags.flag(f.name)
        assert flag in actions, f"{cls.__name__}.{f.name} has no flag on `tgrow train`"
        assert docs.get(f.name), f"{cls.__name__}.{f.name} is not documented in the Attributes: section"
        assert actions[flag].help.startswith(docs[f.name].rstrip(".").replace("%", "%%"))
        assert actions[flag].dest == flags.dest(f.name) and actions[flag].default is None  # "not given"


def test_compare_and_plan_commands_have_a_flag_for_every_field_they_do_not_set_themselves():
    compare = actions_by_flag("compare")
    for f in dataclasses.fields(ModelConfig):
        assert f.name == "vocab_size" or MODEL_FLAGS.flag(f.name) in compare  # the vocabulary is the data's
    for f in dataclasses.fields(TrainConfig):
        assert f.name in COMPARE_TRAIN_FLAGS.exclude or TRAIN_FLAGS.flag(f.name) in compare
    assert COMPARE_TRAIN_FLAGS.exclude == {"max_steps", "max_tokens", "eval_interval", "eval_windows", "ckpt_interval"}
    for cls, flags in ((DataConfig, DATA_FLAGS), (PlanOptions, PLAN_FLAGS)):
        assert all(flags.flag(f.name) in compare for f in dataclasses.fields(cls))
    for name in ("budget_tokens", "plans", "n_evals", "eval_windows"):  # CompareConfig's own fields
        assert "--" + name.replace("_", "-") in compare and field_docs(CompareConfig)[name]
    plan = actions_by_flag("plan")
    assert all(("--vocab-size" if f.name == "vocab_size" else MODEL_FLAGS.flag(f.name)) in plan
               for f in dataclasses.fields(ModelConfig))
    assert all(PLAN_FLAGS.flag(f.name) in plan for f in dataclasses.fields(PlanOptions))
    assert "--batch-size" in plan


@pytest.mark.parametrize("cls, flags", CONFIGS, ids=[cls.__name__ for cls, _ in CONFIGS])
def test_the_help_shows_the_dataclass_default(cls, flags):
    """Each shown default, read back the way the flag reads its value, is the dataclass default."""
    actions = actions_by_flag("train")
    instance_defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        action, default = actions[flags.flag(f.name)], instance_defaults[f.name]
        if cls is ModelConfig and f.name in PRESET_FIELDS:
            assert f"(default: the preset's, else {default})" in action.help
            continue
        if default is None or default is dataclasses.MISSING or (cls is ModelConfig and f.name == "vocab_size"):
            continue
        assert action.help.endswith(")") and "(default: " in action.help, (f.name, action.help)
        shown = action.help.rsplit("(default: ", 1)[1][:-1]
        if isinstance(default, bool):
            assert shown == ("on" if default else "off")
        else:
            assert action.type(shown) == default, (f.name, shown, default)


def test_no_flag_given_leaves_every_default_to_the_dataclass():
    args = parse("train", "--max-steps", "5", "--device", "cpu")
    for cls, flags in CONFIGS:
        given = flags.given(args)
        assert given == ({"max_steps": 5, "device": "cpu"} if cls is TrainConfig else {}), cls
    setup = build_run_setup(args)
    assert setup.train == TrainConfig(max_steps=5, device="cpu")
    assert setup.data == DataConfig() and not setup.vocab_size_given
    assert setup.model == ModelConfig(vocab_size=DataConfig().vocab_size)
    assert plan_options_from_args(args) == PlanOptions()


def test_flag_values_reach_the_configs():
    args = parse("train", "--preset", "micro", "--n-expert", "4", "--moe-top-k", "1", "--norm-eps", "1e-6",
                 "--init-std", "0.01", "--rope-scale", "2", "--no-scale-residual-init", "--moe-aux-loss-coef", "0.05",
                 "--model-vocab-size", "300", "--no-tie", "--max-steps", "2M", "--max-tokens", "1e6", "--beta2", "0.99",
                 "--eval-batch-size", "3", "--device", "cpu", "--tokenizer", "bytes", "--val-fraction", "0.1",
                 "--vocab-size", "500", "--stage-fractions", "0.1,0.2", "--compound-stages", "[{depth: 2}, {seq: 2}]",
                 "--trigger", "{min_fraction: 0.2, min_points: 6}", "--growth-options", '{"noise": "cancel"}',
                 "--optimizer-state", "fresh", "--schedule-policy", "restart", "--max-growth-fraction", "0.3",
                 "--growth-method", "interleave")
    setup = build_run_setup(args)
    model = setup.model
    assert (model.n_layer, model.n_expert, model.moe_top_k, model.norm_eps, model.init_std) == (2, 4, 1, 1e-6, 0.01)
    assert (model.rope_scale, model.scale_residual_init, model.moe_aux_loss_coef) == (2.0, False, 0.05)
    assert model.vocab_size == 300 and setup.vocab_size_given and model.tie_embeddings is False
    train = setup.train
    assert (train.max_steps, train.max_tokens, train.beta2, train.eval_batch_size) == (2_000_000, 10**6, 0.99, 3)
    assert (setup.data.tokenizer, setup.data.val_fraction, setup.data.vocab_size) == ("bytes", 0.1, 500)
    options = plan_options_from_args(args)
    assert options == dataclasses.replace(
        PlanOptions(), stage_fractions=[0.1, 0.2], compound_stages=[{"depth": 2}, {"seq": 2}],
        trigger=PlateauTrigger(min_fraction=0.2, min_points=6), options={"noise": "cancel"}, optimizer="fresh",
        schedule="restart", max_fraction=0.3, method="interleave")


def test_compare_flags_refine_the_comparison_preset():
    config = config_from_args(parse("compare", "--plans", "g_stack", "--budget-tokens", "20k", "--beta2", "0.99",
                                    "--n-expert", "2", "--moe-top-k", "1", "--n-evals", "3",
                                    "--growth-fraction", "0.4"))
    assert config.name == "quick" and config.plans == ["g_stack"] and config.budget_tokens == 20_000
    assert config.train.beta2 == 0.99 and config.train.lr == 3e-3  # the rest: the preset's
    assert (config.target.n_expert, config.target.moe_top_k) == (2, 1) and config.n_evals == 3
    assert config.plan_options.growth_fraction == 0.4 and config.plan_options.max_fraction == 0.5


def test_plan_takes_its_default_batch_from_train_config(capsys):
    per_step = f"{TrainConfig.batch_size * PRESETS['micro']['seq_len']:,} tokens per step"
    assert main(["plan", "--preset", "micro", "--budget-tokens", "1M"]) == 0
    assert per_step in capsys.readouterr().out
    assert main(["plan", "--preset", "micro", "--budget-tokens", "1M", "--batch-size", "3"]) == 0
    assert f"{3 * PRESETS['micro']['seq_len']:,} tokens per step" in capsys.readouterr().out


def test_plan_reads_batch_and_moe_settings_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "micro", "batch_size": 5, "n_expert": 4}))
    assert main(["plan", "--config", str(config), "--budget-tokens", "1M", "--moe-top-k", "1"]) == 0
    moe = capsys.readouterr().out
    assert f"{5 * PRESETS['micro']['seq_len']:,} tokens per step" in moe
    assert main(["plan", "--config", str(config), "--budget-tokens", "1M", "--n-expert", "0"]) == 0
    dense = capsys.readouterr().out  # the flag beats the file: a dense model has fewer parameters
    assert moe != dense and f"{5 * PRESETS['micro']['seq_len']:,} tokens per step" in dense


@pytest.mark.parametrize("argv, message", [
    (["train", "--n-layer", "two"], "argument --n-layer: 'two' is not a count"),
    (["train", "--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["train", "--trigger", "{bogus: 1}"], "unknown key(s) bogus; allowed: min_fraction"),
    (["train", "--compound-stages", "{depth: 2}"], "is not a list"),
    (["train", "--stage-fractions", "0.1,x"], "'0.1,x' is not a comma-separated list"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["train", "--preset", "micro", "--n-expert", "2", "--moe-top-k", "3", "--max-steps", "1", "--out", "X"],
     "moe_top_k=3 must be between 1 and n_expert=2"),
    (["plan", "--budget-tokens", "1M", "--batch-size", "0"], "batch_size=0 is not allowed"),
])
def test_bad_flags_are_refused_in_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(out) if a == "X" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_field_without_a_command_line_form_is_refused_when_the_parser_is_built():
    @dataclasses.dataclass
    class Odd:
        """Attributes:
        ratio: a complex number.
        """

        ratio: complex = 1j

    with pytest.raises(TypeError, match=r"Odd.ratio: no command-line form"):
        ConfigFlags(Odd, "odd").add_to(argparse.ArgumentParser())


def test_field_docs_reads_the_attributes_section():
    @dataclasses.dataclass
    class Doc:
        """Summary.

        Attributes:
            width: how wide; spans
                two lines with ``markup`` and :class:`~a.b.Thing`.
            depth (int): how deep.

        Notes:
            other: not a field.
        """

        width: int = 1
        depth: int = 2

    assert field_docs(Doc) == {"width": "how wide; spans two lines with markup and Thing.", "depth": "how deep."}


def test_parse_count_reads_suffixes_and_refuses_fractions():
    assert [parse_count(t) for t in ("1000", "1e6", "10M", "2.5B", "500k", "-1k")] == \
        [1000, 10**6, 10**7, 2_500_000_000, 500_000, -1000]
    for bad in ("1.5", "ten", "1x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_count(bad)

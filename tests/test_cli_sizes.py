"""Counts and sizes everywhere (issue 22, items 5 and 7): one count parser (``1.2e8``, ``350M``) for the
CLI, config files and the seed API; ``--to SIZE`` picks a shape the chosen operators reach, near the
size; a shared checkpoint grows in one command; duplicate config keys and a negative default ``--at``
get one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from reliability_helpers import assert_refused, tgrow

from transformer_grow.cli.flags import parse_count as flag_count
from transformer_grow.counts import count_value, parse_count
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig, preset
from transformer_grow.model.sizing import count_params, is_size, target_for_size
from transformer_grow.run.api import parse_count as api_count
from transformer_grow.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("text, value", [("1.2e8", 120_000_000), ("350M", 350 * 10**6), ("7b", 7 * 10**9),
                                         ("2G", 2 * 10**9), ("1.5K", 1500), ("1e3K", 10**6), ("125000", 125000),
                                         (" 7 B ", 7 * 10**9)])
def test_one_count_syntax_for_flags_sizes_and_the_seed_api(text, value):
    assert count_value(text) == value and flag_count(text) == value
    assert parse_count(text, "n") == api_count(text, "n") == value
    assert is_size(text)
    assert flag_count("9223372036854775807") == 2**63 - 1  # exact for integer literals (a seed), no float rounding


@pytest.mark.parametrize("text", ["seven", "7 billion", "1_000", "nan", "inf", "1e400", "e5", ""])
def test_what_is_not_a_count_is_refused_in_one_line(text):
    assert count_value(text) is None and not is_size(text)
    with pytest.raises(ConfigError, match=f"n={text!r} is not allowed; write a positive number") as e:
        parse_count(text, "n")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ sizes
def llama_like() -> ModelConfig:
    return ModelConfig(n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, vocab_size=64, seq_len=16,
                       norm="rmsnorm", mlp="swiglu", pos="rope", tie_embeddings=False, bias=False)


def test_a_size_far_from_every_shape_is_refused_naming_the_nearest():
    source = llama_like()  # 22,688 parameters; the first shape-keeping step (d 48, L 3) has 82,512
    with pytest.raises(ConfigError, match=r"--to='50K' \(50,000 parameters\): no architecture of this model's shape "
                                          r"lies within 25% of it; the nearest: 82.5K \(82,512 parameters") as e:
        target_for_size(source, "50K", what="--to")
    assert "\n" not in str(e.value)
    assert count_params(target_for_size(source, "82.5K")) == 82_512


@pytest.mark.parametrize("size", ["50K", "100K", "1.2e6"])
def test_whole_multiples_for_stack_and_clone_land_near_the_size(size):
    source, n = llama_like(), parse_count(size, "size")
    target = target_for_size(source, size, whole_depth=True, whole_width=True)
    assert target.n_layer % source.n_layer == 0 and target.d_model % source.d_model == 0
    k = target.d_model // source.d_model
    assert (target.n_head, target.n_kv_head, target.d_ff) == (4 * k, 2 * k, 64 * k)  # clone widens it all
    assert abs(count_params(target) - n) <= 0.25 * n


@pytest.fixture
def hf_llama_dir(tmp_path):
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, vocab_size=64, max_position_embeddings=16)
    T.LlamaForCausalLM(config).save_pretrained(tmp_path / "src")
    return tmp_path / "src"


@pytest.mark.parametrize("to", ["50K", "1.2e5"])
def test_grow_hf_to_a_size_uses_a_shape_its_default_operators_reach(hf_llama_dir, tmp_path, capsys, to):
    rc, out, err = tgrow(capsys, "grow", "--hf", hf_llama_dir, "--to", to, "--out", tmp_path / "out")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "growth_record.json").read_text())
    grown = json.loads((tmp_path / "out" / "config.json").read_text())
    assert grown["num_hidden_layers"] % 2 == 0 and grown["hidden_size"] % 32 == 0  # stack and clone: whole multiples
    n = parse_count(to, "to")
    assert abs(record["report"]["new_params"] - n) <= 0.25 * n  # near the size asked for
    assert "params 22,688 -> " in out


def test_grow_hf_refuses_a_size_no_whole_multiple_reaches(hf_llama_dir, tmp_path, capsys):
    err = assert_refused(tgrow(capsys, "grow", "--hf", hf_llama_dir, "--to", "27K", "--out", tmp_path / "o"))
    assert "whole multiples of the depth (depth=stack) and the width (width=clone)" in err
    assert "insert_zero" in err  # what reaches sizes in between


def test_grow_a_checkpoint_to_a_size(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT(preset("micro", vocab_size=256))  # 123,200 parameters
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "src", Checkpoint(model.config, model.block_keys, state, None, {"step": 0}))
    rc, _, err = tgrow(capsys, "grow", tmp_path / "src", "--to", "2.5e5", "--out", tmp_path / "grown")
    assert rc == 0, err
    grown = load_checkpoint(tmp_path / "grown").model_config
    assert (grown.n_layer, grown.d_model) == (4, 64)  # stack: a whole multiple of the depth
    assert abs(count_params(grown) - 2.5e5) <= 0.25 * 2.5e5


# ------------------------------------------------------------------ a shared checkpoint
@pytest.mark.parametrize("method", ["unshare+stack", "stack"])
def test_a_shared_checkpoint_grows_to_a_preset_in_one_command(tmp_path, capsys, method):
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=256, n_layer=2, seq_len=64))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "src", Checkpoint(model.config, model.block_keys, state, None, {"step": 0}))
    rc, _, err = tgrow(capsys, "share", tmp_path / "src", "--n-groups", "1", "--out", tmp_path / "shared")
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "shared").model_config.share_layers == [0, 0]
    rc, out, err = tgrow(capsys, "grow", tmp_path / "shared", "--to", "tiny", "--method", method,
                         "--out", tmp_path / "grown")
    assert rc == 0, err  # was: share_layers=[0, 0] must list ... each of the 4 layers
    grown = load_checkpoint(tmp_path / "grown").model_config
    assert (grown.share, grown.n_layer, grown.d_model) == ("none", 4, 256)
    report = json.loads((tmp_path / "grown" / "growth_report.json").read_text())  # the certificate
    assert [s["method"] for s in report["steps"]][:2] == ["unshare", "stack"] and report["steps"][0]["kind"] == "exact"
    assert report["max_abs_dlogits"] is not None


# ------------------------------------------------------------------ config files and --at
@pytest.mark.parametrize("name, text, fragment", [
    ("c.yaml", "model:\n  n_layer: 2\n  n_layer: 4\n", "key 'n_layer' appears twice (line 3)"),
    ("c.yaml", "max_steps: 3\nmax-steps: 5\n", "setting 'max_steps' is given twice (as 'max_steps' and 'max-steps')"),
    ("c.json", '{"train": {"lr": 0.1, "lr": 0.2}}', "key 'lr' appears twice"),
])
def test_a_config_file_naming_a_setting_twice_is_refused(tmp_path, capsys, name, text, fragment):
    (tmp_path / name).write_text(text)
    assert_refused(tgrow(capsys, "train", "--config", tmp_path / name, "--out", tmp_path / "run"), fragment)


def test_an_inline_yaml_flag_naming_a_key_twice_is_refused(capsys, tmp_path):
    err = assert_refused(tgrow(capsys, "train", "--preset", "micro", "--trigger", "{patience: 1, patience: 2}",
                               "--out", tmp_path / "run"))
    assert "key 'patience' appears twice" in err


def test_negative_steps_name_the_default_at(tmp_path, capsys):
    rows = [f"{s},,0.001" for s in (-30, -20)] + [f"{10 * i},{5 - 0.1 * i}," for i in range(1, 8)]
    (tmp_path / "c.csv").write_text("step,loss,lr\n" + "\n".join(rows) + "\n")
    err = assert_refused(tgrow(capsys, "scaling", "curve", tmp_path / "c.csv", "--loss-col", "loss"))
    assert "the default --at, the end of the learning rates (step=0), is not positive; give --at X with X > 0" in err
    assert "None" not in err
    err = assert_refused(tgrow(capsys, "scaling", "curve", tmp_path / "c.csv", "--loss-col", "loss", "--at", "-5"))
    assert "--at -5: every x must be positive" in err


def test_inline_hf_config_json_naming_a_key_twice_is_refused():
    from transformer_grow.errors import ConfigError
    from transformer_grow.run.hf_run import read_hf_config

    with pytest.raises(ConfigError, match="'hidden_size' appears twice"):
        read_hf_config('{"model_type": "llama", "hidden_size": 32, "hidden_size": 64}')

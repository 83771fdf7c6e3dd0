"""Hugging Face directories as untrusted input (issue 22, items 3 and 4): what was not measured is never
certified, every malformed directory gets one line and exit 2 before a weight is loaded, pickles are
never unpickled, and a target that cannot fit in memory is refused before anything is allocated."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)
from reliability_helpers import assert_refused, tgrow
from safetensors.torch import load_file, save_file
from test_hf_convert import CONFIGS, trained_hf

import transformer_grow.hf.load as hf_load
from transformer_grow.errors import ConfigError
from transformer_grow.hf import from_hf, grow_hf, inspect_hf, load_hf, to_hf
from transformer_grow.hf.check import check_operators
from transformer_grow.operators.report import GrowthCertificateError, GrowthReport, certify

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> Path:
    """save_pretrained directories of a tiny Llama and a tiny Mixtral (transformers 5 stores its experts in
    the original per-expert layout)."""
    root = tmp_path_factory.mktemp("hfdirs")
    for name in ("llama", "mixtral"):
        torch.manual_seed(0)
        T.AutoModelForCausalLM.from_config(CONFIGS[name]()).save_pretrained(root / name)
    return root


def damaged(dirs: Path, tmp_path: Path, name: str = "llama", *, tensors=None, config=None) -> Path:
    """A copy of ``dirs/name`` with its tensors (a function of the state dict) or config.json edited."""
    out = tmp_path / f"damaged-{name}"
    shutil.copytree(dirs / name, out)
    if tensors is not None:
        state = load_file(out / WEIGHTS)
        tensors(state)
        save_file(state, out / WEIGHTS, metadata={"format": "pt"})
    if config is not None:
        settings = json.loads((out / "config.json").read_text())
        config(settings)
        (out / "config.json").write_text(json.dumps(settings))
    return out


def grow_cli(capsys, src: Path, out: Path):
    """The audit's command line: one more block (insert_zero) and a wider model (zero_pad)."""
    target = out.parent / "target.json"
    target.write_text(json.dumps({"model": {"n_layer": 3, "d_model": 48, "head_dim": 8}}))
    return tgrow(capsys, "grow", "--hf", src, "--to", target, "--depth", "insert_zero", "--width", "zero_pad",
                 "--out", out)


def set_value(key, value):
    def edit(state):
        state[key].view(-1)[0] = value
    return edit


DOWN_1 = "model.layers.1.mlp.down_proj.weight"


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop(DOWN_1), [DOWN_1, "missing", "1 of 21"]),  # the audit: it was certified "exact"
    (lambda s: s.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(3)),
     ["unexpected tensor", "model.layers.0.mlp.extra.weight"]),
    (lambda s: s.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(63, 32)),
     ["model.layers.0.mlp.up_proj.weight", "(63, 32)", "(64, 32)"]),
    (set_value("model.layers.0.mlp.up_proj.weight", float("nan")), ["model.layers.0.mlp.up_proj.weight", "NaN"]),
    (set_value("model.norm.weight", float("inf")), ["model.norm.weight", "NaN or inf"]),
    (lambda s: s.__setitem__("model.norm.weight", s["model.norm.weight"].to(torch.int32)), ["'I32'", "floating"]),
])
def test_what_was_not_measured_is_refused_before_any_certificate(edit, words, dirs, tmp_path, capsys):
    src = damaged(dirs, tmp_path, tensors=edit)
    out = tmp_path / "out"
    assert_refused(grow_cli(capsys, src, out), *words)
    assert not out.exists()
    assert_refused(tgrow(capsys, "hf", "check", src), *words)


def test_a_missing_expert_of_the_original_layout_is_refused(dirs, tmp_path):
    w3 = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    assert w3 in load_file(dirs / "mixtral" / WEIGHTS)  # the layout save_pretrained writes
    assert type(load_hf(dirs / "mixtral")).__name__ == "MixtralForCausalLM"
    with pytest.raises(ConfigError, match=rf"{w3} missing"):
        inspect_hf(damaged(dirs, tmp_path, "mixtral", tensors=lambda s: s.pop(w3)))


def test_a_sharded_directory_loads_and_a_missing_shard_is_refused(tmp_path):
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(CONFIGS["llama"]()).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "sharded" / WEIGHTS).exists()
    assert inspect_hf(tmp_path / "sharded").config.n_layer == 2
    shards[-1].unlink()
    with pytest.raises(ConfigError, match="shard"):
        inspect_hf(tmp_path / "sharded")


def _truncate(path: Path) -> None:
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])


def _pickle_only(path: Path) -> None:
    (path / WEIGHTS).unlink()
    torch.save({"x": torch.zeros(1)}, path / "pytorch_model.bin")


def _set_config(path: Path, key: str, value) -> None:
    settings = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**settings, key: value}))


def _hidden_33(path: Path) -> None:
    _set_config(path, "hidden_size", 33)


@pytest.mark.parametrize("damage, words", [
    (lambda p: (p / WEIGHTS).unlink(), ["has no weights", WEIGHTS]),
    (lambda p: (p / "config.json").write_text("{not json"), ["config.json", "not valid JSON"]),
    (lambda p: (p / "config.json").write_text("[1, 2]"), ["config.json", "JSON object"]),
    (lambda p: (p / "config.json").write_bytes(b"\xff\xfe{}"), ["config.json", "not UTF-8"]),
    (_hidden_33, ["config.json", "hidden size (33)", "attention heads (4)"]),
    (lambda p: _set_config(p, "architectures", 5), ["architectures=5", "LlamaForCausalLM"]),
    (lambda p: _set_config(p, "architectures", {"a": 1}), ["architectures={'a': 1}"]),
    (lambda p: _set_config(p, "architectures", []), ["architectures=[]"]),
    (_truncate, ["truncated", WEIGHTS]),
    (lambda p: (p / WEIGHTS).write_bytes(b"\xff" * 64), ["truncated or not safetensors"]),
    (_pickle_only, ["pytorch_model.bin", "never loads", "save_pretrained", "safe_serialization=True"]),
])
def test_a_malformed_directory_gets_one_line(damage, words, dirs, tmp_path, capsys):
    src = damaged(dirs, tmp_path)
    damage(src)
    assert_refused(grow_cli(capsys, src, tmp_path / "out"), *words)
    assert_refused(tgrow(capsys, "hf", "check", src), *words)
    assert not (tmp_path / "out").exists()


class _Marker:
    """Unpickling this writes a file: proof that a loader ran pickle code."""

    path = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_a_pickle_is_never_unpickled(dirs, tmp_path, capsys):
    src = damaged(dirs, tmp_path)
    (src / WEIGHTS).unlink()
    marker = _Marker()
    marker.path = str(tmp_path / "ran")
    torch.save({"x": marker}, src / "pytorch_model.bin")
    assert_refused(grow_cli(capsys, src, tmp_path / "out"), "pytorch_model.bin")
    assert not (tmp_path / "ran").exists()


def test_our_loader_asks_for_safetensors(dirs, monkeypatch):
    seen = {}
    real = T.LlamaForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(T.LlamaForCausalLM, "from_pretrained", spy)
    load_hf(dirs / "llama")
    assert seen["use_safetensors"] is True and seen["local_files_only"] is True


@pytest.mark.parametrize("to", ["1T", "huge.json"])
def test_a_target_that_cannot_fit_is_refused_before_loading(to, dirs, tmp_path, capsys, monkeypatch):
    (tmp_path / "huge.json").write_text(json.dumps({"model": {"n_layer": 4096, "d_model": 32768, "n_head": 256}}))
    monkeypatch.chdir(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(hf_load, "load_hf", never)
    err = assert_refused(tgrow(capsys, "grow", "--hf", dirs / "llama", "--to", to, "--out", tmp_path / "out"))
    assert "needs at least an estimated" in err and "choose a smaller --to" in err, err


def test_a_non_finite_certificate_is_never_a_certificate():
    report = GrowthReport("depth=insert_zero", "exact", max_abs_dlogits=float("nan"), dloss=float("nan"),
                          loss_old=1.0, loss_new=float("nan"))
    for tol in (None, 1e-4):
        with pytest.raises(GrowthCertificateError, match="not finite"):
            certify(report, tol)


def test_hf_check_reports_a_non_finite_growth_as_failed(monkeypatch, capsys, dirs):
    import transformer_grow.hf.grow as hf_grow

    def nan_export(gpt, info):
        out = to_hf(gpt, info)
        with torch.no_grad():
            out.model.norm.weight.fill_(float("nan"))
        return out

    monkeypatch.setattr(hf_grow, "to_hf", nan_export)
    checks = check_operators(trained_hf("llama")[0])
    assert all(c.failed and c.kind is None for c in checks if not c.refused), [c.line() for c in checks]
    assert "FAILED" in checks[0].line()
    rc, out, err = tgrow(capsys, "hf", "check", dirs / "llama")
    assert rc == 1 and "measured nothing finite" in err and " exact " not in out


def test_a_source_whose_logits_overflow_is_refused():
    model = T.AutoModelForCausalLM.from_config(CONFIGS["llama"]())
    with torch.no_grad():
        model.lm_head.weight.fill_(3e38)  # finite weights, infinite logits
    with pytest.raises(ConfigError, match="logits on the probe are not finite"):
        grow_hf(model, {"n_layer": 3}, depth="insert_zero")
    with pytest.raises(ConfigError, match="logits on the probe are not finite"):
        check_operators(model)


def test_from_hf_refuses_non_finite_weights():
    model = T.AutoModelForCausalLM.from_config(CONFIGS["gpt2"]())
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[3] = float("-inf")
    with pytest.raises(ConfigError, match=r"transformer\.h\.0\.mlp\.c_fc\.bias holds 1 NaN or inf"):
        from_hf(model)


def test_grown_directory_is_written_whole_and_its_certificate_is_finite(dirs, tmp_path, capsys):
    (tmp_path / "t.json").write_text(json.dumps({"model": {"n_layer": 3}}))
    out = tmp_path / "grown"
    rc, _, err = tgrow(capsys, "grow", "--hf", dirs / "llama", "--to", tmp_path / "t.json", "--depth", "insert_zero",
                       "--out", out)
    assert rc == 0, err
    record = json.loads((out / "growth_record.json").read_text())
    assert math.isfinite(record["preservation"]["max_abs_dlogits"]) and record["reload_max_abs_dlogits"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown", "t.json"]  # no temporary directory left
    inspect_hf(out)  # our own output passes our own checks


def test_operator_choices_are_refused_before_the_weights_are_read(dirs, tmp_path, capsys, monkeypatch):
    (tmp_path / "t.json").write_text(json.dumps({"model": {"n_layer": 3}}))

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(hf_load, "load_hf", never)
    assert_refused(tgrow(capsys, "grow", "--hf", dirs / "llama", "--to", tmp_path / "t.json", "--depth", "bogus",
                         "--out", tmp_path / "out"), "bogus")


def test_a_save_that_does_not_reload_to_the_measured_model_is_refused(tmp_path, monkeypatch):
    import transformer_grow.hf.grow as hf_grow
    from transformer_grow.hf import save_grown

    growth = grow_hf(trained_hf("llama")[0], {"n_layer": 3}, depth="insert_zero")

    class Corrupting:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            model = T.AutoModelForCausalLM.from_pretrained(*args, **kwargs)
            with torch.no_grad():
                model.model.norm.weight.mul_(1.5)
            return model

    monkeypatch.setattr(hf_grow, "loader_class", lambda *args: Corrupting)
    with pytest.raises(GrowthCertificateError, match="does not reload to the measured model"):
        save_grown(growth, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither out nor a temporary directory


def test_hf_check_refuses_what_cannot_fit_before_loading(dirs, capsys, monkeypatch):
    import transformer_grow.train.memory as memory

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(hf_load, "load_hf", never)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: (2**20, "a 1 MiB test machine"))
    err = assert_refused(tgrow(capsys, "hf", "check", dirs / "llama"), "checking every operator",
                         "a 1 MiB test machine")
    assert "needs at least an estimated" in err

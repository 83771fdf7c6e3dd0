"""Growing Hugging Face models: every operator the math allows per family, measured HF against HF;
save_pretrained + growth_record.json reloaded with AutoModelForCausalLM; MoE export; target sizes; CLI."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)
from test_hf_convert import FAMILIES, SEQ, VOCAB, tokens, trained_hf

from transformer_grow.cli.main import main
from transformer_grow.errors import ConfigError
from transformer_grow.hf import from_hf, grow_hf, hf_logits, save_grown, target_for_size, to_hf
from transformer_grow.hf.check import check_operators
from transformer_grow.model import GPT
from transformer_grow.model.sizing import count_params, parse_size
from transformer_grow.operators.report import EXACT_TOL, GrowthCertificateError

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

ROPE_EXACT = {"depth=insert_zero", "width=clone", "width=zero_pad", "heads=zero", "ffn=zero", "ffn=split", "seq=rope"}
EXACT = {
    "gpt2": {"depth=insert_zero", "width=clone", "ffn=zero", "ffn=split", "seq=copy", "seq=tile"},
    "llama": ROPE_EXACT | {"experts=upcycle"},
    "llama_tied": ROPE_EXACT,  # biases: Mixtral has none, so upcycling cannot be exported
    "qwen2": ROPE_EXACT | {"experts=upcycle"},
    "mistral": ROPE_EXACT | {"experts=upcycle"},
    "mixtral": ROPE_EXACT,
    "qwen2_moe": ROPE_EXACT,
}
MOE_CLASS = {"llama": "MixtralForCausalLM", "mistral": "MixtralForCausalLM", "qwen2": "Qwen2MoeForCausalLM"}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_exact_operator_preserves_the_hf_model(name):
    model, _ = trained_hf(name)
    checks = {c.operator: c for c in check_operators(model)}
    exact = {op for op, c in checks.items() if c.kind == "exact"}
    assert exact == EXACT[name], {op: (c.kind, c.refused) for op, c in checks.items()}
    for op in exact:
        assert checks[op].max_abs_dlogits <= EXACT_TOL, (op, checks[op].max_abs_dlogits)
    # The measurement is real: a block copied on top of another changes the function.
    assert checks["depth=stack"].kind == "none" and checks["depth=stack"].max_abs_dlogits > 1e-2
    if name in MOE_CLASS:
        assert checks["experts=upcycle"].grown_class == MOE_CLASS[name]
    if name == "llama_tied":
        assert "Mixtral" in checks["experts=upcycle"].refused
    if name == "gpt2":
        assert "GPT-2" in checks["heads=zero"].refused and "no mixture-of-experts" in checks["experts=upcycle"].refused
    if name in ("mixtral", "qwen2_moe"):
        assert checks["experts=add"].kind == "approximate" and checks["experts=add"].grown_class == type(model).__name__


@pytest.mark.parametrize("name, target, choices", [
    ("gpt2", {"n_layer": 4, "d_model": 64}, {"depth": "insert_zero", "width": "clone"}),
    ("llama", {"n_layer": 3, "n_expert": 4, "moe_top_k": 2}, {"depth": "insert_zero"}),
    ("qwen2", {"d_ff": 128, "n_expert": 2, "moe_top_k": 1}, {"ffn": "split"}),
    ("mistral", {"n_head": 8, "n_kv_head": 4, "seq_len": 2 * SEQ}, {}),
])
def test_save_pretrained_reloads_with_auto_class(name, target, choices, tmp_path):
    model, _ = trained_hf(name)
    growth = grow_hf(model, target, source=f"tiny {name}", **choices)
    record = save_grown(growth, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == record["grown_class"] == type(growth.model).__name__
    x = tokens()
    got, original = hf_logits(reloaded, x), hf_logits(model, x)
    assert (got - hf_logits(growth.model, x)).abs().max() <= 1e-5  # the logits we measured
    assert (got - original).abs().max() <= EXACT_TOL  # and those of the source model
    on_disk = json.loads((tmp_path / "growth_record.json").read_text())
    assert on_disk["source"] == f"tiny {name}" and on_disk["operators"] == growth.result.report.method
    p = on_disk["preservation"]
    assert p["kind"] == "exact" and p["max_abs_dlogits"] <= EXACT_TOL and p["probe"]["full_length"]
    assert on_disk["reload_max_abs_dlogits"] <= 1e-5
    assert set(p) >= {"conversion_max_abs_dlogits", "growth_max_abs_dlogits", "export_max_abs_dlogits", "dloss"}


def test_mixtral_export_reads_back_as_the_same_moe():
    model, _ = trained_hf("llama")
    growth = grow_hf(model, {"n_expert": 4, "moe_top_k": 2}, router_init="random")
    gpt, info = from_hf(growth.model)
    assert (info.family, gpt.config.n_expert, gpt.config.moe_top_k) == ("mixtral", 4, 2)
    x = tokens()
    with torch.no_grad():
        assert (gpt.eval()(x).logits - hf_logits(growth.model, x)).abs().max() <= 1e-5


def test_declared_exact_that_is_not_exact_raises(monkeypatch):
    """The end-to-end certificate: a broken export of an exact growth is caught, not recorded as exact."""
    import transformer_grow.hf.grow as hf_grow

    def broken_to_hf(gpt: GPT, info):
        out = to_hf(gpt, info)
        with torch.no_grad():
            out.model.norm.weight.mul_(1.5)
        return out

    monkeypatch.setattr(hf_grow, "to_hf", broken_to_hf)
    with pytest.raises(GrowthCertificateError, match="exported function changed"):
        grow_hf(trained_hf("llama")[0], {"n_layer": 3}, depth="insert_zero")


def test_target_size_keeps_the_shape():
    assert parse_size("7B") == 7 * 10**9 and parse_size("350m") == 350 * 10**6 and parse_size("1.5K") == 1500
    with pytest.raises(ConfigError, match="'7 billion'"):
        parse_size("7 billion")
    source, _ = from_hf(trained_hf("llama")[0])
    cfg = source.config
    target = target_for_size(cfg, "20M")
    assert abs(count_params(target) - 2e7) / 2e7 < 0.1
    assert count_params(target) == GPT(target).num_params(non_embedding=False)
    assert target.head_dim == cfg.head_dim and target.n_head // target.n_kv_head == cfg.n_head // cfg.n_kv_head
    assert abs(target.d_model / target.n_layer - cfg.d_model / cfg.n_layer) / (cfg.d_model / cfg.n_layer) < 0.25
    with pytest.raises(ConfigError, match="not larger"):
        target_for_size(cfg, "1K")
    growth = grow_hf(trained_hf("llama")[0], target_for_size(cfg, "200K"), depth="insert_zero", width="clone")
    assert growth.record["preservation"]["max_abs_dlogits"] <= EXACT_TOL


def test_cli_hf_check_and_grow(tmp_path, capsys):
    model, _ = trained_hf("llama")
    src = tmp_path / "src"
    model.save_pretrained(src)
    assert main(["hf", "check", str(src), "--json", str(tmp_path / "check.json")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "depth=insert_zero" in x)
    assert "exact" in line and "max|dlogits|=" in line
    table = json.loads((tmp_path / "check.json").read_text())
    assert {c["operator"] for c in table["operators"]} >= EXACT["llama"]
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model": {"n_layer": 4}}))
    out_dir = tmp_path / "grown"
    assert main(["grow", "--hf", str(src), "--to", str(target), "--depth", "insert_zero", "--out", str(out_dir)]) == 0
    record = json.loads((out_dir / "growth_record.json").read_text())
    assert record["source"] == str(src) and record["preservation"]["max_abs_dlogits"] <= EXACT_TOL
    grown = T.AutoModelForCausalLM.from_pretrained(out_dir)
    assert grown.config.num_hidden_layers == 4
    x = tokens()
    assert (hf_logits(grown, x) - hf_logits(model, x)).abs().max() <= EXACT_TOL


def test_cli_refusals_are_one_line(tmp_path, capsys):
    bert = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64, vocab_size=VOCAB))  # no MLM head: refused
    bert.save_pretrained(tmp_path / "bert")
    capsys.readouterr()
    assert main(["hf", "check", str(tmp_path / "bert")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "BertModel is not supported" in err and "LlamaForCausalLM" in err
    assert main(["grow", "--hf", str(tmp_path / "nowhere"), "--to", "1B", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err

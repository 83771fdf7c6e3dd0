"""Hugging Face <-> GPT conversion: exact round trips per family, optimizer state through the key map,
and one-line refusals of what we do not reproduce. Tiny random models built from configs (no downloads),
briefly trained so that exactness is not an artefact of the init. Also imported by test_hf_grow.py."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as T
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)

from transformer_grow.errors import ConfigError
from transformer_grow.hf import (
    FamilyInfo,
    from_hf,
    grow_hf,
    hf_logits,
    load_hf,
    state_from_hf,
    state_to_hf,
    to_hf,
)
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import optimizer_state_by_name

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # Qwen2-MoE's empty shared expert

VOCAB, SEQ = 128, 32
_LLAMA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=SEQ, bos_token_id=0, eos_token_id=1)
CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                 bos_token_id=0, eos_token_id=0),
    "llama": lambda: T.LlamaConfig(**_LLAMA),
    # tied head, biases everywhere, linear RoPE scaling, another base
    "llama_tied": lambda: T.LlamaConfig(**_LLAMA, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}),
    "qwen2": lambda: T.Qwen2Config(**_LLAMA),
    "mistral": lambda: T.MistralConfig(**_LLAMA, sliding_window=SEQ),
    "mixtral": lambda: T.MixtralConfig(**_LLAMA, num_local_experts=3, num_experts_per_tok=2),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(**_LLAMA, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=48,
                                          shared_expert_intermediate_size=0, norm_topk_prob=True),
}
FAMILIES = list(CONFIGS)
TRAIN_STEPS = 4


@functools.cache
def _trained(name: str):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[name]())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(TRAIN_STEPS):  # a few steps on random tokens: weights move off the init
        x = torch.randint(0, VOCAB, (4, SEQ), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, optimizer_state_by_name(model, opt)


def trained_hf(name: str):
    """A briefly trained tiny HF model of family ``name`` (cached; do not modify it) and its AdamW state."""
    return _trained(name)


def tokens(batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_round_trip_is_exact_both_ways(name):
    model, _ = trained_hf(name)
    x = tokens()
    gpt, info = from_hf(model)
    assert info.seq_len == SEQ
    reference = hf_logits(model, x)
    with torch.no_grad():
        ours = gpt.eval()(x).logits
    assert (ours - reference).abs().max() <= 1e-5
    back = to_hf(gpt, info)
    assert type(back) is type(model)
    assert (hf_logits(back, x) - reference).abs().max() <= 1e-5
    theirs, returned = dict(model.named_parameters()), dict(back.named_parameters())
    assert theirs.keys() == returned.keys()
    # Every tensor moved, none altered; Qwen2-MoE's gate of its empty shared expert scales a zero output and
    # is exported as zero (we have no shared expert).
    assert all(torch.equal(theirs[k], returned[k]) for k in theirs if not k.endswith("shared_expert_gate.weight"))


def test_conversion_reads_the_math_settings():
    gpt, _ = from_hf(trained_hf("llama_tied")[0])
    cfg = gpt.config
    assert (cfg.tie_embeddings, cfg.bias, cfg.rope_base, cfg.rope_scale) == (True, True, 500.0, 2.0)
    gpt, _ = from_hf(trained_hf("qwen2")[0])
    assert (gpt.config.bias, gpt.config.qkv_bias, gpt.config.n_kv_head) == (False, True, 2)
    assert gpt.blocks["0"].attn.q_proj.bias is not None and gpt.blocks["0"].attn.o_proj.bias is None
    gpt, _ = from_hf(trained_hf("gpt2")[0])
    assert (gpt.config.norm, gpt.config.pos, gpt.config.mlp, gpt.config.bias) == ("layernorm", "learned", "gelu", True)


@pytest.mark.parametrize("name", FAMILIES)
def test_optimizer_state_round_trips_through_the_key_map(name):
    model, state = trained_hf(name)
    gpt, info = from_hf(model)
    ours = state_from_hf(state, gpt, info)
    assert ours.keys() == dict(gpt.named_parameters()).keys()
    assert all(ours[n]["exp_avg"].shape == p.shape for n, p in gpt.named_parameters())
    back = state_to_hf(ours, gpt, info)
    state = {k: v for k, v in state.items() if "shared_expert" not in k}  # Qwen2-MoE: no counterpart in ours
    assert back.keys() == state.keys()
    for key, entry in state.items():
        for moment in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(back[key][moment], entry[moment]), (key, moment)


@pytest.mark.parametrize("name, old, new", [
    ("llama", "model.layers.1.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight"),
    ("gpt2", "transformer.h.1.attn.c_attn.weight", "transformer.h.2.attn.c_attn.weight"),
    ("mixtral", "model.layers.1.mlp.experts.gate_up_proj", "model.layers.2.mlp.experts.gate_up_proj"),
])
def test_optimizer_state_follows_growth(name, old, new):
    """Depth growth by insert_zero after block 0: old block 1 is HF layer 2 now and keeps its moments;
    the new block's residual writer starts with zero moments."""
    model, state = trained_hf(name)
    growth = grow_hf(model, {"n_layer": 3}, depth="insert_zero", insert_positions=[0], optimizer_state=state)
    grown_names = dict(growth.model.named_parameters()).keys()
    assert growth.optimizer_state.keys() == grown_names
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(growth.optimizer_state[new][moment], state[old][moment])
    writer = "transformer.h.1.attn.c_proj.weight" if name == "gpt2" else "model.layers.1.self_attn.o_proj.weight"
    assert not growth.optimizer_state[writer]["exp_avg"].any()
    assert growth.optimizer_state[writer]["exp_avg"].shape == dict(growth.model.named_parameters())[writer].shape


def test_width_clone_moments_follow_the_values():
    """Width clone tiles a read-side weight divided by k: its exp_avg is divided by k, exp_avg_sq by k^2."""
    model, state = trained_hf("llama")
    growth = grow_hf(model, {"d_model": 64}, width="clone", optimizer_state=state)
    name = "model.layers.0.mlp.down_proj.weight"  # writes the model axis (tiled), reads ffn (tiled, / 2)
    old, new = state[name], growth.optimizer_state[name]
    assert new["exp_avg"].shape == (64, 128)
    assert torch.allclose(new["exp_avg"][:32, :64], old["exp_avg"] / 2)
    assert torch.allclose(new["exp_avg_sq"][32:, 64:], old["exp_avg_sq"] / 4)


def _refusal(fn) -> str:
    with pytest.raises(ConfigError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unsupported_families_are_refused_in_one_line(tmp_path):
    bert = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64, vocab_size=VOCAB))  # BERT without its MLM head
    message = _refusal(lambda: from_hf(bert))
    assert "BertModel" in message and "no language-model head" in message
    assert "LlamaForCausalLM" in message and "GPT2LMHeadModel" in message and "BertForMaskedLM" in message
    bert.save_pretrained(tmp_path)  # a directory: refused from its config, before its weights are read
    assert "BertModel" in _refusal(lambda: load_hf(tmp_path))
    assert "config.json" in _refusal(lambda: load_hf(tmp_path / "missing"))


@pytest.mark.parametrize("make, words", [
    (lambda: T.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                          activation_function="gelu"), ["activation_function='gelu'", "gelu_new"]),
    (lambda: T.MistralConfig(**_LLAMA, sliding_window=SEQ // 2), ["sliding_window=16", "seq_len=32"]),
    (lambda: T.LlamaConfig(**{**_LLAMA, "max_position_embeddings": 64},
                           rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
     ["rope_type", "'dynamic'", "'linear'"]),
    (lambda: T.LlamaConfig(**_LLAMA, attention_bias=True), ["attention_bias=True", "mlp_bias=False"]),
    (lambda: T.Qwen2MoeConfig(**_LLAMA, num_experts=3, num_experts_per_tok=2, shared_expert_intermediate_size=16,
                              norm_topk_prob=True), ["shared_expert_intermediate_size=16"]),
])
def test_math_we_do_not_reproduce_is_refused(make, words):
    model = T.AutoModelForCausalLM.from_config(make())
    message = _refusal(lambda: from_hf(model, seq_len=SEQ))
    assert all(w in message for w in words), message


def test_sliding_window_caps_the_default_context():
    model = T.AutoModelForCausalLM.from_config(T.MistralConfig(**{**_LLAMA, "max_position_embeddings": 4096},
                                                               sliding_window=SEQ))
    gpt, info = from_hf(model)
    assert gpt.config.seq_len == SEQ and "sliding_window" in info.notes[0]


def test_heads_growth_cannot_be_exported_to_gpt2():
    model, _ = trained_hf("gpt2")
    message = _refusal(lambda: grow_hf(model, {"n_head": 8}, heads="zero"))
    assert "GPT-2" in message and "width=clone" in message


@pytest.mark.parametrize("family, settings", [
    ("llama", dict(n_kv_head=2)),
    ("qwen2", dict(qkv_bias=True, tie_embeddings=False)),
    ("gpt2", dict(norm="layernorm", pos="learned", mlp="gelu", bias=True)),
    ("mixtral", dict(n_expert=3, moe_top_k=2)),
])
def test_a_gpt_trained_here_exports_exactly(family, settings):
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=VOCAB, seq_len=SEQ, **settings)).eval()
    model = to_hf(gpt, FamilyInfo.new(family, gpt.config))
    x = tokens()
    with torch.no_grad():
        assert (hf_logits(model, x) - gpt(x).logits).abs().max() <= 1e-5
    # and reads back as the same config (HF inits every linear with one std: scale_residual_init is GPT-2's)
    assert from_hf(model)[0].config.to_dict() == {**gpt.config.to_dict(), "scale_residual_init": family == "gpt2"}


def test_an_architecture_the_family_lacks_is_refused():
    gpt = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, vocab_size=VOCAB, seq_len=SEQ, norm="layernorm"))
    assert "norm='rmsnorm'" in _refusal(lambda: to_hf(gpt, FamilyInfo.new("llama", gpt.config)))
    assert "'bert'" in _refusal(lambda: FamilyInfo.new("t5", gpt.config))  # the message lists the families
    assert "BertForMaskedLM needs" in _refusal(lambda: to_hf(gpt, FamilyInfo.new("bert", gpt.config)))

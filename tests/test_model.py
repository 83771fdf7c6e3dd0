"""The GPT model: shapes, causality, parameter/FLOP counts by hand, generation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig

# Three position/attention variants for the causality test.
CAUSAL_CONFIGS = {
    "rope-mha": ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=50, seq_len=16, pos="rope"),
    "learned": ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=50, seq_len=16, pos="learned",
                           norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False),
    "rope-gqa": ModelConfig(n_layer=2, d_model=32, n_head=4, n_kv_head=2, vocab_size=50, seq_len=16, pos="rope"),
}


def build(config: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def test_forward_shapes_and_loss():
    config = CAUSAL_CONFIGS["rope-mha"]
    model = build(config)
    x = torch.randint(0, config.vocab_size, (3, 10))
    out = model(x)
    assert out.logits.shape == (3, 10, config.vocab_size)
    assert out.loss is None
    assert out.aux_loss.shape == () and float(out.aux_loss) == 0.0
    out = model(x, torch.randint(0, config.vocab_size, (3, 10)))
    assert out.loss.shape == () and torch.isfinite(out.loss)
    # A fresh model predicts close to uniform: loss near ln(vocab).
    assert abs(out.loss.item() - math.log(50)) < 0.5


@pytest.mark.parametrize("name", sorted(CAUSAL_CONFIGS))
def test_future_tokens_do_not_change_past_logits(name):
    config = CAUSAL_CONFIGS[name]
    model = build(config)
    torch.manual_seed(1)
    x = torch.randint(0, config.vocab_size, (2, config.seq_len))
    t = 7
    changed = x.clone()
    changed[:, t:] = (changed[:, t:] + 1 + torch.randint(0, config.vocab_size - 1, changed[:, t:].shape)) \
        % config.vocab_size
    assert (changed[:, t:] != x[:, t:]).all()
    with torch.no_grad():
        a, b = model(x).logits, model(changed).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:])  # the future positions do see their own inputs


def test_param_and_flop_count_gelu_layernorm_bias_untied_learned():
    L, d, V, T, H = 2, 32, 50, 16, 4
    config = ModelConfig(n_layer=L, d_model=d, n_head=H, vocab_size=V, seq_len=T, norm="layernorm", pos="learned",
                         mlp="gelu", bias=True, tie_embeddings=False)
    model = GPT(config)
    d_ff = 4 * d
    attention = 4 * (d * d + d)  # q, k, v, o: weight + bias each
    mlp = (d * d_ff + d_ff) + (d_ff * d + d)  # up + down, with biases
    norms = 2 * (2 * d)  # two LayerNorms per block, weight + bias
    non_embedding = L * (attention + mlp + norms) + 2 * d  # + final LayerNorm
    embeddings = V * d + T * d + V * d  # token, learned positions, untied head (no bias)
    assert non_embedding == 2 * (12 * d * d + 13 * d) + 2 * d == 25472
    assert model.num_params() == non_embedding
    assert model.num_params(non_embedding=False) == non_embedding + embeddings == 29184
    # Kaplan et al. 2020 (x3 for forward + backward): 6N + 6 d V (head) + 6 L T d_attn (attention).
    assert model.flops_per_token() == 6 * non_embedding + 6 * d * V + 6 * L * T * d


def test_param_and_flop_count_swiglu_rmsnorm_tied_gqa():
    L, d, V, T, H, KV, hd = 3, 48, 64, 32, 6, 2, 8
    config = ModelConfig(n_layer=L, d_model=d, n_head=H, n_kv_head=KV, head_dim=hd, vocab_size=V, seq_len=T,
                         norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=True)
    model = GPT(config)
    d_ff = 64 * -(-8 * d // (3 * 64))  # 8/3 d rounded up to a multiple of 64 = 128
    assert d_ff == config.d_ff == 128
    attention = d * (H * hd) + 2 * d * (KV * hd) + (H * hd) * d  # q, k and v (kv heads only), o; no biases
    mlp = 3 * d * d_ff  # gate, up, down
    norms = 2 * d  # two RMSNorm weights per block
    non_embedding = L * (attention + mlp + norms) + d
    assert non_embedding == 74064
    assert model.num_params() == non_embedding
    assert model.num_params(non_embedding=False) == non_embedding + V * d  # tied: one embedding matrix
    assert model.flops_per_token() == 6 * non_embedding + 6 * d * V + 6 * L * T * (H * hd)
    assert model.flops_per_token(seq_len=8) == 6 * non_embedding + 6 * d * V + 6 * L * 8 * (H * hd)


def test_generate_shapes_and_greedy_determinism():
    config = CAUSAL_CONFIGS["rope-gqa"]
    model = build(config)
    prompt = torch.randint(0, config.vocab_size, (2, 5))
    out = model.generate(prompt, max_new_tokens=13, temperature=0.0)  # runs past seq_len=16: context is cropped
    assert out.shape == (2, 18)
    assert torch.equal(out[:, :5], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=13, temperature=0.0))
    # Greedy picks the argmax of the model's own next-token logits.
    assert torch.equal(out[:, 5], model(prompt).logits[:, -1].argmax(-1))
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 13) and torch.equal(a, b)
    assert ((a >= 0) & (a < config.vocab_size)).all()


# ----------------------------------------------------------------- replace() and the growth check
def test_replace_re_derives_fields_that_were_derived():
    base = ModelConfig(d_model=256, n_head=4, mlp="swiglu")
    wider = base.replace(d_model=512)
    assert (wider.head_dim, wider.d_attn, wider.d_ff) == (128, 512, ModelConfig(d_model=512, n_head=4).d_ff)
    assert wider == ModelConfig(d_model=512, n_head=4)  # the same as building it afresh
    assert base.replace(n_head=8).n_kv_head == 8  # multi-head attention stays multi-head
    assert base.replace(mlp="gelu").d_ff == 4 * 256
    # Unrelated changes keep every derived value.
    assert base.replace(n_layer=9, seq_len=1024).to_dict() == {**base.to_dict(), "n_layer": 9, "seq_len": 1024}


def test_replace_keeps_explicit_fields_and_passed_values_win():
    custom = ModelConfig(d_model=256, n_head=4, head_dim=32, n_kv_head=2, d_ff=1000)
    wider = custom.replace(d_model=512, n_head=8)
    assert (wider.head_dim, wider.n_kv_head, wider.d_ff) == (32, 2, 1000)
    base = ModelConfig(d_model=256, n_head=4)
    assert base.replace(d_model=512, head_dim=64, d_ff=768).d_attn == 256  # explicit in replace: kept
    with pytest.raises(ConfigError, match="d_model=250 is not divisible by n_head=4.*set head_dim"):
        base.replace(d_model=250)  # a derived head size that cannot be derived any more: one clear line


def test_replace_behaves_the_same_after_a_dict_round_trip():
    for config in (ModelConfig(d_model=256, n_head=4), ModelConfig(d_model=96, n_head=4, head_dim=16, d_ff=200)):
        loaded = ModelConfig.from_dict(config.to_dict())
        assert loaded == config and loaded.to_dict() == config.to_dict()
        assert loaded.replace(d_model=192) == config.replace(d_model=192)


def test_one_list_of_fixed_and_growable_fields():
    from transformer_grow.model.config import FIXED_FIELDS, GROWABLE_FIELDS
    from transformer_grow.plans import plan as growth_plan

    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(FIXED_FIELDS) <= names and set(GROWABLE_FIELDS) <= names
    assert not set(FIXED_FIELDS) & set(GROWABLE_FIELDS)
    assert "head_dim" in FIXED_FIELDS  # no operator changes the head size
    assert not hasattr(growth_plan, "FIXED_FIELDS") and not hasattr(growth_plan, "GROWABLE_FIELDS")


def test_growth_check_is_shared_by_plans_and_grow(monkeypatch):
    from transformer_grow.model import config as model_config
    from transformer_grow.operators import steps
    from transformer_grow.plans.plan import GrowthEvent, GrowthPlan, Stage
    from transformer_grow.plans import plan as growth_plan

    old = ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=64, seq_len=16)
    calls = []

    def recording_check(a, b):
        calls.append((a, b))
        model_config.check_growth(a, b)

    monkeypatch.setattr(growth_plan, "check_growth", recording_check)
    monkeypatch.setattr(steps, "check_growth", recording_check)
    new = old.replace(n_layer=4)
    GrowthPlan("p", [Stage(old, tokens=100), Stage(new, growth=GrowthEvent())], budget_tokens=4000).validate()
    steps.plan(old, new, "stack")
    assert calls == [(old, new), (old, new)]
    with pytest.raises(ConfigError, match="head_dim cannot change by growth \\(8 -> 16\\)"):
        model_config.check_growth(old, old.replace(n_layer=4, head_dim=16))
    with pytest.raises(ConfigError, match="nothing to grow"):
        model_config.check_growth(old, old.replace(dropout=0.1))
    model_config.check_growth(old, old.replace(rope_scale=2.0))  # RoPE interpolation alone is a seq growth


def test_growth_operator_configs_keep_the_head_size():
    from transformer_grow.operators import heads_ffn, width

    base = ModelConfig(d_model=32, n_head=4, vocab_size=64, seq_len=16)  # head_dim 8, derived
    padded = width.padded_config(base, 48, "zero_pad")
    assert (padded.head_dim, padded.n_head, padded.d_ff) == (8, 4, base.d_ff)
    cloned = width.clone_config(base, 2, heads=False, ffn=False)
    assert (cloned.d_model, cloned.head_dim, cloned.n_head, cloned.d_ff) == (64, 8, 4, base.d_ff)
    assert heads_ffn.heads_config(base, 8).head_dim == 8


SIZED_VARIANTS = [
    {}, {"bias": True, "norm": "layernorm", "mlp": "gelu", "pos": "learned"}, {"n_expert": 4},
    {"n_expert": 4, "moe_router": "topany"}, {"n_expert": 4, "moe_router": "topany", "moe_layer_experts": [4, 2]},
    {"causal": False, "norm_placement": "post", "type_vocab_size": 2, "emb_norm": True, "head": "mlm", "bias": True,
     "norm": "layernorm", "mlp": "gelu_erf", "pos": "learned"},
    {"causal": False, "norm_placement": "post", "head": "mlm", "tie_embeddings": False, "norm": "layernorm"},
    {"share": "cycle", "share_groups": 1},
]


@pytest.mark.parametrize("variant", SIZED_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "base")
def test_count_params_without_building_equals_the_built_model(variant):
    from transformer_grow.model.sizing import count_params

    config = ModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=64, seq_len=16, **variant)
    assert count_params(config) == GPT(config).num_params(non_embedding=False)

"""The GPT model: shapes, causality, parameter/FLOP counts by hand, generation."""

from __future__ import annotations

import math

import pytest
import torch

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

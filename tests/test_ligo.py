"""LiGO, the learned growth operator (operators/ligo.py): its initial value is the fixed operator, its
gradients flow, its FLOPs are counted by hand and by torch's FLOP counter, and it refuses what it
cannot express."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators import grow
from transformer_grow.operators.ligo import LiGO, ligo, ligo_layout, operator_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ = 16
CONFIGS = {
    "rms_swiglu_rope_tied": dict(n_layer=2, d_model=16, n_head=2, vocab_size=64, seq_len=SEQ),
    "ln_gelu_learned_untied_bias_gqa": dict(n_layer=2, d_model=16, n_head=4, n_kv_head=2, vocab_size=64, seq_len=SEQ,
                                            norm="layernorm", mlp="gelu", pos="learned", tie_embeddings=False,
                                            bias=True),
}
TARGETS = {"stack": {"n_layer": 4}, "clone": {"d_model": 32}, "stack+clone": {"n_layer": 4, "d_model": 32}}


def small_model(name: str, seed: int = 0) -> GPT:
    """A model with asymmetric, O(1) weights (an init's small symmetric weights could hide a wrong map)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**CONFIGS[name]))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.1, 0.3)
    return model


def batch(seed: int = 1, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 64, (size, SEQ + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("method", sorted(TARGETS))
def test_untrained_ligo_equals_the_fixed_operator(config, method):
    model = small_model(config)
    fixed = grow(model, TARGETS[method], method, measure=False).model
    operator = LiGO(model, TARGETS[method])
    x, _ = batch()
    with torch.no_grad():
        weights = operator.weights()
        for name, p in fixed.named_parameters():
            assert torch.allclose(weights[name], p, atol=1e-5, rtol=0), name
        expected = fixed(x).logits
        assert (operator(x).logits - expected).abs().max() < 1e-5  # the functional forward, full length
        result = operator.materialise(probe=x[:, :SEQ].clone(), exact_tol=None)
        assert (result.model(x).logits - expected).abs().max() < 1e-5
    assert result.model.block_keys == fixed.block_keys
    assert result.report.kind == ("exact" if method == "clone" else "none")  # the fixed operator's kind
    assert set(result.param_map) == {n for n, _ in fixed.named_parameters()}
    assert sum(p.numel() for p in operator.parameters()) == operator.layout.operator_params()


def test_operator_is_tied_across_layers():
    """One depth matrix per parameter type and one width matrix per (axis, side), whatever the depth."""
    operator = LiGO(small_model("rms_swiglu_rope_tied"), TARGETS["stack+clone"])
    assert set(operator.width) == {"model_out", "model_in", "q_out", "q_in", "kv_out", "ffn_out", "ffn_in"}
    assert operator.width["model_out"].shape == (32, 16)
    assert operator.depth["attn__q_proj__weight"].shape == (4, 2)  # [L2, L1]
    # stack: G_stack's layout (the whole model twice, Du et al. 2024): one-hot rows [0, 1, 0, 1]
    assert torch.equal(operator.depth["attn__q_proj__weight"], torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))
    # clone: written coordinates copied, read ones halved (Net2Net's 1/copies)
    assert torch.equal(operator.width["model_in"], operator.width["model_out"] / 2)
    assert len(operator.depth) == 9  # two norms, four attention projections, three SwiGLU projections


@pytest.mark.parametrize("method,least_drop", [("stack", 5e-3), ("clone", 5e-2), ("stack+clone", 5e-2)])
def test_one_step_lowers_the_grown_models_loss(method, least_drop):
    model = small_model("rms_swiglu_rope_tied")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    operator = LiGO(model, TARGETS[method])
    optimizer = torch.optim.AdamW(operator.parameters(), lr=1e-2, weight_decay=0.0)
    x, y = batch()
    with torch.no_grad():
        loss0 = float(operator(x, y).loss)
    loss = operator(x, y).loss
    loss.backward()
    for name, p in operator.named_parameters():  # every part of the operator receives a gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer.zero_grad()
    assert operator_step(operator, optimizer, x, y) == pytest.approx(loss0, abs=1e-6)
    with torch.no_grad():
        loss1 = float(operator(x, y).loss)
    assert loss1 < loss0 - least_drop, (loss0, loss1)
    for name, p in model.named_parameters():  # the small model is frozen
        assert torch.equal(p, before[name]) and p.grad is None, name
    result = operator.materialise(probe=(x, y), exact_tol=1e-4)  # trained: declared 'none', not checked as exact
    assert result.report.kind == "none" and result.report.options["ligo_steps"] == 1
    assert result.report.loss_new == pytest.approx(loss1, abs=1e-4)


def test_ligo_function_trains_on_batches_and_refuses_running_out():
    model = small_model("rms_swiglu_rope_tied")
    x, y = batch()
    untrained = ligo(model, {"n_layer": 4}, probe=(x, y))
    result = ligo(model, {"n_layer": 4}, [(x, y)] * 3, steps=3, lr=1e-2, probe=(x, y))
    assert result.report.options["ligo_steps"] == 3
    assert result.report.loss_new < untrained.report.loss_new - 1e-2  # better than stacking on its batch
    with pytest.raises(ConfigError, match="ran out after 1 of 2"):
        ligo(model, {"n_layer": 4}, [(x, y)], steps=2)


# ------------------------------------------------------------------------------------ FLOPs
HAND = dict(n_layer=1, d_model=4, n_head=1, d_ff=8, vocab_size=8, seq_len=4, mlp="gelu", norm="layernorm")


def test_depth_flops_by_hand():
    """1 -> 2 layers: per block type with T elements the product [2, 1] @ [1, T] costs 2*2*T forward and
    as much for dw (the small weights need no gradient; nothing to recompute: one product per type)."""
    layout = ligo_layout(GPT(ModelConfig(**HAND)), {"n_layer": 2})
    block = 4 + 4 * 16 + 4 + 2 * 32  # two LayerNorm weights, q/k/v/o [4, 4], up [8, 4], down [4, 8]
    assert layout.flops(training=False) == 4 * block == 544
    assert layout.flops(training=True) == 8 * block == 1088
    assert layout.operator_params() == 8 * 2  # eight parameter types, a [2, 1] matrix each


def test_width_flops_by_hand():
    """d_model 4 -> 8 (heads and FFN cloned too), q_proj [4, 4]: rows by q_out [8, 4] (2*8*16 = 256,
    no gradient into the frozen weight, recomputed: x3), then columns by model_in [8, 4] on the [8, 4]
    result (2*8*32 = 512; gradients into both operands: x3)."""
    layout = ligo_layout(GPT(ModelConfig(**HAND)), {"d_model": 8})
    q = next(g for g in layout.groups if g.names == ["blocks.0.attn.q_proj.weight"])
    assert q.matmul_costs(layout.width_sizes) == [(256, False), (512, True)]
    norm = next(g for g in layout.groups if g.names == ["blocks.0.attn_norm.weight"])
    assert norm.matmul_costs(layout.width_sizes) == [(2 * 8 * 4, False)]  # one product: x2 (fwd, dA)
    attention = 4 * (3 * 256 + 3 * 512)  # q, k, v, o alike
    up = 3 * (2 * 16 * 32) + 3 * (2 * 8 * 64)  # rows by ffn_out [16, 8], then columns by model_in [8, 4]
    down = 3 * (2 * 8 * 32) + 3 * (2 * 16 * 64)  # rows by model_out [8, 4], then columns by ffn_in [16, 8]
    vectors = 3 * 2 * (2 * 8 * 4)  # attn_norm, mlp_norm, norm_f weights [4] -> [8]: x2 (fwd, dA)
    embedding = 2 * (2 * 8 * 32)  # tok_emb [8 vocab, 4] -> [8, 8]: one product, gradient into A only
    assert attention + up + down + vectors + embedding == 24448
    assert layout.flops(training=True) == 24448


@pytest.mark.parametrize("method", sorted(TARGETS))
def test_flop_formula_matches_torch_flop_counter(method):
    """The formula counts exactly the matrix products autograd runs: forward, the checkpoint's
    recomputation and the backward of one step (and the forward alone for materialisation)."""
    operator = LiGO(small_model("ln_gelu_learned_untied_bias_gqa"), TARGETS[method])
    with FlopCounterMode(display=False) as counter:
        weights = operator.weights()
        sum((w * torch.randn_like(w)).sum() for w in weights.values()).backward()
    assert counter.get_total_flops() == operator.flops(training=True)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        operator.weights()
    assert counter.get_total_flops() == operator.flops(training=False)


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("target,kwargs,message", [
    ({"n_head": 4}, {}, "also needs heads=zero"),
    ({"d_model": 24}, {"width": "zero_pad"}, "width init 'zero_pad' is not allowed"),
    ({"n_layer": 3}, {"depth": "insert_random"}, "depth init 'insert_random' is not allowed"),
    ({"n_layer": 4}, {"depth": "interleave"}, "depth init 'interleave' is not allowed"),
])
def test_refuses_what_a_linear_copy_cannot_express(target, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LiGO(small_model("rms_swiglu_rope_tied"), target, **kwargs)


def test_refuses_mixture_of_experts():
    with pytest.raises(ConfigError, match="mixture of experts"):
        LiGO(GPT(ModelConfig(**CONFIGS["rms_swiglu_rope_tied"], n_expert=2)), {"n_layer": 4})


def test_zero_initialised_blocks_are_zero_rows_of_the_depth_operator():
    """insert_zero (LLaMA-Pro): the new block's residual writers start at zero, its other weights copy
    the block before; exact before training."""
    model = small_model("rms_swiglu_rope_tied")
    operator = LiGO(model, {"n_layer": 3}, depth="insert_zero")
    assert torch.equal(operator.depth["attn__o_proj__weight"], torch.tensor([[1.0, 0], [0, 1], [0, 0]]))
    assert torch.equal(operator.depth["attn__q_proj__weight"], torch.tensor([[1.0, 0], [0, 1], [0, 1]]))
    x, _ = batch()
    result = operator.materialise(probe=x, exact_tol=1e-5)
    assert result.report.kind == "exact" and result.report.max_abs_dlogits < 1e-5

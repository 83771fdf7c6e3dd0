"""The top-k routed MoE layer: shapes, load-balancing loss, routing, upcycling property, training."""

import pytest
import torch
import torch.nn.functional as F
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)

from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.moe import MoE, load_balancing_loss


def moe_config(**kw) -> ModelConfig:
    base = {
        "n_layer": 2,
        "d_model": 16,
        "n_head": 2,
        "vocab_size": 50,
        "seq_len": 16,
        "n_expert": 4,
        "moe_top_k": 2,
    }
    return ModelConfig(**{**base, **kw})


def reference_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Dense reference: every expert on every token, combined with top-k renormalised weights."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = F.softmax(layer.router(tokens).float(), dim=-1)
    top_p, top_i = probs.topk(layer.top_k, dim=-1)
    weights = torch.zeros_like(probs).scatter(1, top_i, top_p / top_p.sum(-1, keepdim=True))
    outs = torch.stack([e(tokens) for e in layer.experts], dim=1)  # [N, E, d]
    return (weights[:, :, None] * outs).sum(1).reshape(x.shape)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_forward_matches_dense_reference(mlp, top_k):
    torch.manual_seed(0)
    layer = MoE(moe_config(mlp=mlp, moe_top_k=top_k))
    x = torch.randn(3, 5, 16)
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference_moe(layer, x), rtol=1e-5, atol=1e-6)
    assert layer.aux_loss.shape == ()
    assert int(layer.expert_load.sum()) == 15 * top_k


def test_each_expert_sees_only_its_tokens():
    torch.manual_seed(0)
    layer = MoE(moe_config(moe_top_k=1))
    seen = {i: 0 for i in range(4)}
    for i, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, seen[i] + inp[0].shape[0]))
    layer(torch.randn(2, 8, 16))
    assert seen == {i: int(n) for i, n in enumerate(layer.expert_load)}
    assert sum(seen.values()) == 16  # sparse dispatch: 16 tokens, one expert each, no dense compute


def test_load_balancing_loss_hand_example():
    # Switch Transformer eq. 4: n_expert * sum_i f_i * P_i.
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    balanced = load_balancing_loss(probs, torch.tensor([[0], [1]]), 2)  # f = (.5, .5), P = (.55, .45)
    assert float(balanced) == pytest.approx(2 * (0.5 * 0.55 + 0.5 * 0.45))
    skewed = load_balancing_loss(probs, torch.tensor([[0], [0]]), 2)  # f = (1, 0)
    assert float(skewed) == pytest.approx(2 * 0.55)
    # top-2 of 4 experts: f counts assignments (N*k), so uniform routing gives exactly 1.
    probs4 = torch.full((2, 4), 0.25)
    assert float(load_balancing_loss(probs4, torch.tensor([[0, 1], [2, 3]]), 4)) == pytest.approx(1.0)


def test_aux_loss_gradient_reaches_router_only_through_probabilities():
    torch.manual_seed(0)
    layer = MoE(moe_config())
    layer(torch.randn(2, 6, 16))
    layer.aux_loss.backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())


@pytest.mark.parametrize("router", ["random", "zero"])
def test_copies_of_one_ffn_return_its_output(router):
    torch.manual_seed(0)
    layer = MoE(moe_config(mlp="swiglu"))
    with torch.no_grad():
        for expert in layer.experts[1:]:
            expert.load_state_dict(layer.experts[0].state_dict())
        if router == "zero":
            layer.router.weight.zero_()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), layer.experts[0](x), rtol=0, atol=1e-6)


def test_gpt_with_moe_sums_aux_loss_counts_active_params_and_trains():
    torch.manual_seed(0)
    config = moe_config()
    model = GPT(config)
    x = torch.randint(0, 50, (4, 16))
    out = model(x, x)
    assert out.aux_loss > 0
    assert out.aux_loss.item() == pytest.approx(sum(b.mlp.aux_loss.item() for b in model.blocks.values()))
    expert = sum(p.numel() for p in model.blocks["0"].mlp.experts[0].parameters())
    assert model.num_params() - model.num_params(active=True) == 2 * (4 - 2) * expert
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        out = model(x, x)
        loss = out.loss + config.moe_aux_loss_coef * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5

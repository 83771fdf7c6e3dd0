"""The top-k routed MoE layer: shapes, load-balancing loss, routing, upcycling property, training, and
routing that learns after upcycling (router gradient from the LM loss, experts that diverge)."""

import pytest
import torch
import torch.nn.functional as F
from grow_fixtures import corpus, single_thread  # noqa: F401  (autouse: one intra-op thread)

from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.moe import MoE, load_balancing_loss
from transformer_grow.operators import upcycle
from transformer_grow.operators.moe import ZERO_ROUTER_JITTER


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


# ---------------------------------------------------------------- routing that learns after upcycling


def text_windows(n: int, length: int, seed: int) -> torch.Tensor:
    """``[n, length + 1]`` windows of real text (bytes of stdlib sources, as in the growth fixtures)."""
    data = corpus()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - length - 1, (n,), generator=g)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])


def trained_dense(seq_len: int = 48) -> GPT:
    """A small dense model (MQA, dropout), briefly trained on real text, aux loss coefficient 0."""
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2,
        d_model=32,
        n_head=4,
        n_kv_head=1,
        vocab_size=256,
        seq_len=seq_len,
        dropout=0.1,
        moe_aux_loss_coef=0.0,
    )
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        w = text_windows(8, seq_len, seed=step)
        loss = model(w[:, :-1], w[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("router_init", ["random", "zero"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycling_is_exact_at_growth_on_full_length_text(router_init, top_k):
    old = trained_dense()
    probe = text_windows(4, old.config.seq_len, seed=999)
    result = upcycle(old, 4, top_k, router_init=router_init, probe=probe)
    assert result.report.kind == "exact" and result.report.probe["shape"] == [4, old.config.seq_len]
    old.eval()
    new = result.model.eval()
    with torch.no_grad():
        dlogits = (new(probe[:, :-1]).logits - old(probe[:, :-1]).logits).abs().max()
    assert float(dlogits) <= 1e-4 and result.report.max_abs_dlogits <= 1e-4
    router = new.blocks["0"].mlp.router.weight.detach()
    assert float(router.abs().max()) > 0  # never an exactly zero router: all logits would tie
    if router_init == "zero":  # near zero: routing starts almost uniform
        assert float(router.abs().max()) < 10 * ZERO_ROUTER_JITTER * old.config.init_std


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_learns_from_the_lm_loss_right_after_upcycling(top_k):
    new = upcycle(trained_dense(), 4, top_k, measure=False).model.train()
    w = text_windows(8, new.config.seq_len, seed=5)
    new(w[:, :-1], w[:, 1:]).loss.backward()  # LM loss alone (moe_aux_loss_coef = 0, aux not added)
    layer = new.blocks["0"].mlp
    router_grad = float(layer.router.weight.grad.norm())
    expert_grad = float(layer.experts[0].up_proj.weight.grad.norm())
    assert router_grad > 1e-2 * expert_grad
    # The plain renormalised combine (p_j / sum_chosen p, the dense reference) gives the router nothing:
    # all experts are one FFN, so the output is the FFN's whatever the router says (top-1: weight 1).
    x, upstream = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    grads = []
    for forward in (reference_moe, MoE.forward):
        layer.router.weight.grad = None
        (forward(layer, x) * upstream).sum().backward()
        grads.append(float(layer.router.weight.grad.norm()))
    renormalised, stop_gradient = grads
    assert renormalised < 1e-6 and stop_gradient > 1e-3


@pytest.mark.parametrize("router_init", ["random", "zero"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_experts_and_router_rows_diverge_with_training(router_init, top_k):
    model = upcycle(trained_dense(), 4, top_k, router_init=router_init, measure=False).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(50):
        w = text_windows(8, model.config.seq_len, seed=1000 + step)
        loss = model(w[:, :-1], w[:, 1:]).loss  # aux coefficient 0: only the LM loss trains the router
        opt.zero_grad()
        loss.backward()
        opt.step()
    for block in model.blocks.values():
        experts, router = block.mlp.experts, block.mlp.router.weight.detach()
        for i in range(4):
            for j in range(i + 1, 4):
                up_i, up_j = experts[i].up_proj.weight.detach(), experts[j].up_proj.weight.detach()
                assert float((up_i - up_j).abs().max()) > 1e-3, (i, j)
                assert float((router[i] - router[j]).abs().max()) > 1e-3, (i, j)

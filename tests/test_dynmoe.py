"""DynMoE top-any gating: forward against a hand computation, the straight-through gradient, no dropped
token, auxiliary losses on hand-built inputs, exact expert addition, removal, optimizer state, FLOPs."""

import math

import pytest
import torch

from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.dynmoe import balance_loss, diversity_loss
from transformer_grow.model.moe import MoE
from transformer_grow.operators import add_experts, grow_optimizer_state, upcycle
from transformer_grow.operators.moe import NewExpert, adapt_experts, exact_threshold
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T = 0.1  # moe_temperature


def config(**kw) -> ModelConfig:
    base = dict(n_layer=2, d_model=4, n_head=2, vocab_size=64, seq_len=16, n_expert=3, moe_top_k=1,
                moe_router="topany", moe_temperature=T, mlp="gelu", d_ff=8)
    return ModelConfig(**{**base, **kw})


def hand_layer() -> MoE:
    """Routing vectors e0, e1, e2 of R^4 and thresholds (0.5, 0.5, 0.9)."""
    torch.manual_seed(0)
    layer = MoE(config())
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4)[:3])
        layer.router.threshold.copy_(torch.tensor([0.5, 0.5, 0.9]))
    return layer


TOKENS = torch.tensor([
    [1.0, 1.0, 0.0, 0.0],  # cos 0.707 with e0 and e1: both fire, weights 1/2
    [0.0, 0.0, 1.0, 0.0],  # cos 1 with e2 > 0.9: only e2
    [0.0, 0.0, 0.0, 1.0],  # cos 0 everywhere: nothing fires; margins -0.5, -0.5, -0.9 -> expert 0
    [0.2, 1.0, 0.0, 0.0],  # cos 0.98 with e1 only
])


def test_top_any_forward_matches_hand_routing_and_drops_no_token():
    layer = hand_layer()
    out = layer(TOKENS[None])[0]
    e = [layer.experts[i](TOKENS) for i in range(3)]
    expected = torch.stack([(e[0][0] + e[1][0]) / 2, e[2][1], e[0][2], e[1][3]])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert layer.expert_load.tolist() == [2, 2, 1]  # token 2 reached expert 0 by the fallback
    counts = layer.counts
    assert (int(counts.tokens), int(counts.assignments), int(counts.fallback_tokens)) == (4, 5, 1)
    torch.testing.assert_close(counts.fallback_sum, torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_straight_through_gradient_of_thresholds_and_routing_vectors():
    # d out / d a_e = E_e(x) / k for a fired expert (the step passes the gradient as relu would), and
    # a_e = sigmoid(s_e / t) - sigmoid(G_e / t): d a_e / d G_e = -sigmoid'(G_e / t) / t.
    layer = hand_layer()
    layer.router.diversity_weight = layer.router.sparsity_weight = 0.0
    out = layer(TOKENS[None])[0]
    out.sum().backward()
    e = [layer.experts[i](TOKENS).detach().sum(-1) for i in range(3)]
    d_sig = lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))  # noqa: E731
    g = layer.router.threshold.detach()
    fired = {0: [(0, 2)], 1: [(0, 2), (3, 1)], 2: [(1, 1)]}  # expert: (token, k)
    expected = torch.stack([-sum(e[x][n] / k for n, k in fired[x]) * d_sig(g[x] / T) / T for x in range(3)])
    torch.testing.assert_close(layer.router.threshold.grad, expected, rtol=1e-4, atol=1e-7)
    # the fallback token (3rd) passes no gradient: the routing vector e0 gets only token 0's
    w_grad = layer.router.weight.grad
    assert w_grad[0].abs().sum() > 0 and w_grad[:, 3].abs().max() < 1e-7  # token 2 is along e3 only
    assert all(p.grad is not None for p in layer.experts.parameters())


def test_auxiliary_losses_on_hand_built_inputs():
    assert float(diversity_loss(torch.eye(3, 4))) == pytest.approx(0.0, abs=1e-7)
    # two equal unit vectors: W W^T - I = [[0, 1], [1, 0]], Frobenius norm sqrt(2) (scale-free)
    assert float(diversity_loss(torch.tensor([[2.0, 0.0], [1.0, 0.0]]))) == pytest.approx(math.sqrt(2))
    uniform = torch.full((4, 2), 0.5)
    assert float(balance_loss(uniform, torch.tensor([0, 1, 0, 1]), 2)) == pytest.approx(1.0)
    # all assignments on expert 0 with P = (0.7, 0.3): 2 * 0.7
    skew = torch.tensor([[0.7, 0.3]] * 3)
    assert float(balance_loss(skew, torch.tensor([0, 0, 0]), 2)) == pytest.approx(1.4)
    layer = hand_layer()
    layer(TOKENS[None])
    terms = layer.aux_terms
    assert float(terms["sparsity"]) == pytest.approx((2 + 1 + 0 + 1) / 4 / 3)  # mean fired experts / E
    assert float(terms["diversity"]) == pytest.approx(0.0, abs=1e-6)
    margins = TOKENS / TOKENS.norm(dim=-1, keepdim=True) @ torch.eye(4)[:3].T - torch.tensor([0.5, 0.5, 0.9])
    probs = torch.softmax(margins / T, dim=-1).mean(0)
    f = torch.tensor([2, 2, 1]) / 5
    assert float(terms["balance"]) == pytest.approx(float(3 * (f * probs).sum()), rel=1e-5)
    total = terms["balance"] + terms["diversity"] + terms["sparsity"]  # weights 1
    assert float(layer.aux_loss.detach()) == pytest.approx(float(total), rel=1e-6)


def trained_topany(steps: int = 30, **kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(config(d_model=16, n_head=2, d_ff=32, n_expert=4, moe_top_k=2, **kw))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        x = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(step))
        out = model(x[:, :-1], x[:, 1:])
        (out.loss + 0.01 * out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
    return model


PROBE = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(99))  # full seq_len windows


def test_adding_unreachable_experts_is_exact_and_they_receive_no_token():
    model = trained_topany()
    thresholds = model.blocks["0"].mlp.router.threshold.detach()
    assert exact_threshold(thresholds) > max(1.0, 2 + float(thresholds.min()))
    result = adapt_experts(model, add={"0": [NewExpert(copy_of=1, noise_std=0.01)], "1": [NewExpert(), NewExpert()]},
                           probe=PROBE)
    assert result.report.kind == "exact" and result.report.max_abs_dlogits == 0.0  # measured, full length
    assert result.model.config.moe_layer_experts == [5, 6]
    result.model.eval()
    result.model(PROBE[:, :-1])
    assert int(result.model.blocks["0"].mlp.expert_load[4]) == 0
    assert int(result.model.blocks["1"].mlp.expert_load[4:].sum()) == 0
    # the uniform operator behind a top-any router is exact too
    grown = add_experts(model, 6, probe=PROBE)
    assert grown.report.kind == "exact" and grown.report.max_abs_dlogits == 0.0


def test_adding_firing_experts_changes_the_function_and_is_declared_approximate():
    model = trained_topany()
    vector = model.blocks["0"].mlp.router.weight.detach()[0]
    result = adapt_experts(model, add={"0": [NewExpert(copy_of=0, routing=vector, threshold=-1.0)]}, probe=PROBE)
    assert result.report.kind == "approximate" and result.report.max_abs_dlogits > 1e-4


def test_removing_unused_experts_keeps_the_function_and_removing_used_ones_does_not():
    model = trained_topany()
    with torch.no_grad():  # expert 3 of block 1 can never be reached
        model.blocks["1"].mlp.router.threshold[3] = exact_threshold(model.blocks["1"].mlp.router.threshold[:3])
    result = adapt_experts(model, remove={"1": [3]}, probe=PROBE)
    assert result.report.kind == "approximate"  # declared: exact only where the removed experts were unused
    assert result.report.max_abs_dlogits == 0.0
    assert result.model.config.moe_layer_experts == [4, 3]
    used = adapt_experts(model, remove={"0": [0]}, probe=PROBE)
    assert used.report.max_abs_dlogits > 1e-4
    with pytest.raises(Exception, match="no expert left"):
        adapt_experts(model, remove={"0": [0, 1, 2, 3]})


def test_optimizer_state_follows_kept_experts_and_new_ones_start_at_zero():
    model = trained_topany()
    state = {n: {"exp_avg": torch.full_like(p, float(i)), "exp_avg_sq": torch.full_like(p, float(i) ** 2),
                 "step": torch.tensor(7.0)} for i, (n, p) in enumerate(model.named_parameters())}
    result = adapt_experts(model, remove={"0": [1]}, add={"0": [NewExpert(copy_of=2), NewExpert()]}, measure=False)
    grown = grow_optimizer_state(state, result.param_map)
    names = set(grown)
    assert names == {n for n, _ in result.model.named_parameters()}
    old = "blocks.0.mlp.experts.{}.up_proj.weight"
    # kept experts 0, 2, 3 become 0, 1, 2 with their own moments; the removed expert 1's are gone
    for new_j, old_e in ((0, 0), (1, 2), (2, 3)):
        torch.testing.assert_close(grown[old.format(new_j)]["exp_avg"], state[old.format(old_e)]["exp_avg"])
        torch.testing.assert_close(grown[old.format(new_j)]["exp_avg_sq"], state[old.format(old_e)]["exp_avg_sq"])
    assert not any(torch.equal(grown[n]["exp_avg"], state[old.format(1)]["exp_avg"]) for n in names
                   if n.startswith("blocks.0.mlp.experts"))
    # a copied expert carries its source's moments (as every copy in the parameter map), a fresh one zeros
    torch.testing.assert_close(grown[old.format(3)]["exp_avg"], state[old.format(2)]["exp_avg"])
    assert float(grown[old.format(4)]["exp_avg"].abs().sum()) == 0.0
    rows = grown["blocks.0.mlp.router.threshold"]["exp_avg"]  # new rows are new values: zero moments
    t = state["blocks.0.mlp.router.threshold"]["exp_avg"][0]
    torch.testing.assert_close(rows, torch.stack([t, t, t, torch.tensor(0.0), torch.tensor(0.0)]))
    assert float(grown[old.format(0)]["step"]) == 7.0


def test_upcycling_to_top_any_is_exact():
    torch.manual_seed(0)
    dense = GPT(config(d_model=16, d_ff=32, n_expert=0))
    result = upcycle(dense, 4, probe=PROBE)
    assert result.report.kind == "exact" and result.report.max_abs_dlogits < 1e-5
    layer = result.model.blocks["0"].mlp
    assert layer.top_any and torch.equal(layer.router.threshold.detach(), torch.zeros(4))


class Tokens:
    """Minimal token data for a Trainer: random batches, fixed validation windows."""

    vocab_size, fingerprint = 64, "test"

    def batch(self, step, batch_size, seq_len, seed):
        x = torch.randint(0, 64, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(step + seed))
        return x[:, :-1], x[:, 1:]

    def val_windows(self, seq_len, n):
        return torch.randint(0, 64, (n, seq_len + 1), generator=torch.Generator().manual_seed(1))

    def check_seq_len(self, seq_len):
        pass


def per_expert(model: GPT) -> int:
    return sum(p.numel() for p in model.blocks["0"].mlp.experts[0].parameters())


def test_flops_count_the_experts_the_router_chose():
    torch.manual_seed(0)
    model = GPT(config(d_model=16, d_ff=32, n_expert=4, moe_top_k=2))
    planned = model.flops_per_token()
    model(PROBE[:, :-1])
    n_tokens = PROBE[:, :-1].numel()
    active = [int(b.mlp.expert_load.sum()) / n_tokens for b in model.blocks.values()]
    expected = planned + 6 * sum(a - 2 for a in active) * per_expert(model)
    assert model.routed_flops_per_token() == pytest.approx(expected)
    assert model.routed_flops_per_token() is None  # nothing routed since the last reading
    model.eval()
    model(PROBE[:, :-1])  # evaluation forwards are not training compute
    assert model.routed_flops_per_token() is None
    # the trainer adds the measured FLOPs of each step; a top-k (fixed) model keeps its planned count
    trainer = Trainer(None, TrainConfig(batch_size=2, max_steps=1, device="cpu"), Tokens(), model=model)
    marks = [b.mlp.counts.snapshot() for b in trainer.model.blocks.values()]
    trainer.train_steps(1)
    step = [b.mlp.counts.since(m) for b, m in zip(trainer.model.blocks.values(), marks)]
    active = [int(c["assignments"]) / int(c["tokens"]) for c in step]
    step_tokens = 2 * 16
    measured = planned + 6 * sum(a - 2 for a in active) * per_expert(model)
    assert trainer.flops == round(measured) * step_tokens
    fixed = GPT(config(d_model=16, d_ff=32, n_expert=4, moe_top_k=2, moe_router="softmax_topk"))
    trainer = Trainer(None, TrainConfig(batch_size=2, max_steps=1, device="cpu"), Tokens(), model=fixed)
    trainer.train_steps(1)
    assert trainer.flops == fixed.flops_per_token() * step_tokens


def test_per_layer_expert_counts_config_and_active_params():
    cfg = config(d_model=16, d_ff=32, n_expert=5, moe_layer_experts=[2, 5], moe_top_k=2)
    model = GPT(cfg)
    assert [b.mlp.n_expert for b in model.blocks.values()] == [2, 5]
    total = model.num_params(active=False)
    assert model.num_params(active=True) == total - (0 + 3) * per_expert(model)
    with pytest.raises(Exception, match="largest"):
        config(n_expert=4, moe_layer_experts=[2, 3])
    with pytest.raises(Exception, match="moe_layer_experts"):
        config(n_expert=3, moe_layer_experts=[3])

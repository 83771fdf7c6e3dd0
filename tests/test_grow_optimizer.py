"""Adam moments follow the parameter map on every operator."""

import pytest
import torch
from grow_fixtures import batch, single_thread, trained  # noqa: F401
from test_grow_ops import DENSE, OPERATORS

from transformer_grow import operators as G

MOE_OPERATORS = {
    "insert_zero": OPERATORS["insert_zero"],
    "clone": lambda m, **kw: G.clone(m, 2, **kw),
    "ffn_split": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 16, "split", **kw),
    "add_experts": lambda m, **kw: G.add_experts(m, 6, **kw),
}


def fake_state(model, step=7.0):
    """exp_avg := values, exp_avg_sq := values**2: grown moments must equal grown values (squared)."""
    return {
        n: {"exp_avg": p.detach().clone(), "exp_avg_sq": p.detach() ** 2, "step": torch.tensor(step)}
        for n, p in model.named_parameters()
    }


def check_moments_follow_values(old, result):
    grown = G.grow_optimizer_state(fake_state(old), result.param_map)
    params = dict(result.model.named_parameters())
    assert set(grown) == set(params)
    for name, entry in result.param_map.items():
        value = params[name].detach()
        expected = torch.where(entry.new_mask(), torch.zeros(()), value)  # copied/scaled: values; new: 0
        torch.testing.assert_close(grown[name]["exp_avg"], expected, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(grown[name]["exp_avg_sq"], expected**2, rtol=1e-5, atol=1e-9, msg=name)
        assert float(grown[name]["step"]) == 7.0


# Noise is value-only (moments follow the map): measure the mapping without noise.
NOISELESS = {k: v for k, v in OPERATORS.items() if k not in ("interleave", "clone", "net2net", "ffn_split")}
NOISELESS.update(
    {
        "clone": lambda m, **kw: G.clone(m, 3, **kw),
        "net2net": lambda m, **kw: G.net2net(m, 40, **kw),
        "ffn_split": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 16, "split", **kw),
        "interleave": lambda m, **kw: G.interleave(m, 2, noise="none", **kw),
        "seq_tile": lambda m, **kw: G.grow_seq(m, 80, "tile", **kw),
    }
)


@pytest.mark.parametrize("op", sorted(NOISELESS))
def test_moments_land_where_values_came_from(op):
    old = trained("ln_gelu_learned_tied_bias")  # learned positions, biases, LayerNorm
    check_moments_follow_values(old, NOISELESS[op](old, measure=False))


@pytest.mark.parametrize("op", sorted(MOE_OPERATORS))
def test_moments_follow_values_on_moe(op):
    old = trained("moe")
    check_moments_follow_values(old, MOE_OPERATORS[op](old, measure=False))


def test_moments_scale_by_s_and_s_squared_under_clone():
    old = trained(DENSE)
    result = G.clone(old, 2, measure=False)
    state = {
        n: {"exp_avg": torch.ones_like(p), "exp_avg_sq": torch.ones_like(p), "step": torch.tensor(3.0)}
        for n, p in old.named_parameters()
    }
    grown = G.grow_optimizer_state(state, result.param_map)
    q = grown["blocks.0.attn.q_proj.weight"]  # read side divided by 2
    assert torch.all(q["exp_avg"] == 0.5) and torch.all(q["exp_avg_sq"] == 0.25)
    emb = grown["tok_emb.weight"]  # written side copied
    assert torch.all(emb["exp_avg"] == 1) and torch.all(emb["exp_avg_sq"] == 1)


def test_interpolated_rows_sum_weighted_moments():
    old = trained("ln_gelu_learned_tied_bias")
    result = G.grow_seq(old, 63, "interpolate", measure=False)  # 32 -> 63: new row 1 sits at old position 0.5
    grown = G.grow_optimizer_state(fake_state(old), result.param_map)["pos_emb.weight"]
    rows = old.pos_emb.weight.detach()
    torch.testing.assert_close(grown["exp_avg"][1], 0.5 * rows[0] + 0.5 * rows[1])
    torch.testing.assert_close(grown["exp_avg_sq"][1], 0.25 * rows[0] ** 2 + 0.25 * rows[1] ** 2)
    torch.testing.assert_close(result.model.pos_emb.weight[1], 0.5 * rows[0] + 0.5 * rows[1])


def test_composite_map_grows_state_in_one_go():
    old = trained(DENSE)
    result = G.grow(
        old,
        old.config.replace(n_layer=8, d_model=64, n_head=10, n_kv_head=5, d_ff=300, head_dim=old.config.head_dim),
        depth="insert_zero",
        measure=False,
    )
    check_moments_follow_values(old, result)

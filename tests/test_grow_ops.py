"""Operator behaviour beyond preservation: input untouched, determinism, block keys, training after
growth, new units not dead, symmetry breaking, refusals."""

import copy

import pytest
import torch
from grow_fixtures import batch, single_thread, trained  # noqa: F401

from transformer_grow import operators as G
from transformer_grow.errors import ConfigError
from transformer_grow.operators.adapter import GPTAdapter

DENSE = "rms_swiglu_rope_untied_gqa"
LEARNED = "ln_gelu_learned_tied_bias"

OPERATORS = {
    "stack": lambda m, **kw: G.stack(m, 2, **kw),
    "duplicate": lambda m, **kw: G.duplicate(m, 2, **kw),
    "interleave": lambda m, **kw: G.interleave(m, 2, **kw),
    "layer_map": lambda m, **kw: G.layer_map(m, [0, 1, 2, 3, 2, 3], **kw),
    "insert_zero": lambda m, **kw: G.insert_zero(m, n_new=2, **kw),
    "insert_random": lambda m, **kw: G.insert_random(m, [1], **kw),
    "clone": lambda m, **kw: G.clone(m, 2, noise="cancel", **kw),
    "net2net": lambda m, **kw: G.net2net(m, 40, noise="cancel", **kw),
    "zero_pad": lambda m, **kw: G.zero_pad(m, 40, **kw),
    "random_pad": lambda m, **kw: G.random_pad(m, 40, **kw),
    "heads": lambda m, **kw: G.add_heads(m, m.config.n_head + 2, **kw),  # GQA 4/2 -> 6/3, MHA 4 -> 6
    "ffn_zero": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 16, "zero", **kw),
    "ffn_split": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 16, "split", noise="cancel", **kw),
    "seq": lambda m, **kw: G.grow_seq(m, 64, **kw),
    "upcycle": lambda m, **kw: G.upcycle(m, 4, **kw),
    "grow": lambda m, **kw: G.grow(
        m, m.config.replace(n_layer=8, d_model=64, n_head=8, n_kv_head=4, d_ff=2 * m.config.d_ff), **kw
    ),
}


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.block_keys, model.training


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_input_model_is_untouched_and_result_is_new(op):
    model = trained(DENSE)
    state, keys, training = snapshot(model)
    result = OPERATORS[op](model, seed=3)
    assert result.model is not model
    after, keys_after, training_after = snapshot(model)
    assert keys_after == keys and training_after == training
    assert all(torch.equal(state[k], after[k]) for k in state)
    new_storage = {p.data_ptr() for p in result.model.parameters()}
    assert not new_storage & {p.data_ptr() for p in model.parameters()}  # no shared storage
    assert set(result.param_map) == {n for n, _ in result.model.named_parameters()}
    assert result.report.to_dict()["method"] == result.report.method


@pytest.mark.parametrize(
    "op", ["interleave", "insert_random", "clone", "net2net", "heads", "ffn_split", "upcycle"]
)
def test_deterministic_for_a_seed(op):
    model = trained(DENSE)
    a, b, c = (OPERATORS[op](model, seed=s, measure=False).model for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_depth_keys_keep_old_names():
    model = trained(DENSE)
    assert G.stack(model, 2).model.block_keys == ["0", "1", "2", "3", "0_1", "1_1", "2_1", "3_1"]
    assert G.duplicate(model, 2).model.block_keys == ["0", "0_1", "1", "1_1", "2", "2_1", "3", "3_1"]
    result = G.layer_map(model, [0, 1, 2, 1, 2, 3])
    assert result.model.block_keys == ["0", "1", "2", "1_1", "2_1", "3"]
    assert result.param_map["blocks.1_1.attn.q_proj.weight"].source == "blocks.1.attn.q_proj.weight"
    zero = G.insert_zero(model, [-1, 1])
    assert zero.model.block_keys == ["start_1", "0", "1", "1_1", "2", "3"]
    assert zero.param_map["blocks.1_1.attn.q_proj.weight"].source == "blocks.1.attn.q_proj.weight"
    assert zero.param_map["blocks.1_1.attn.o_proj.weight"].kind == "new"
    assert torch.count_nonzero(zero.model.blocks["1_1"].mlp.down_proj.weight) == 0
    grown_twice = G.stack(G.stack(model, 2).model, 2).model  # keys stay unique across growths
    assert len(set(grown_twice.block_keys)) == 16


def test_interleave_copies_carry_noise_and_originals_do_not():
    model = trained(DENSE)
    result = G.interleave(model, 2, noise_std=1e-2)
    new = result.model.blocks
    assert torch.equal(new["1"].attn.q_proj.weight, model.blocks["1"].attn.q_proj.weight)
    diff = new["1_1"].attn.q_proj.weight - model.blocks["1"].attn.q_proj.weight
    assert 0.005 < diff.std().item() < 0.02
    assert torch.equal(new["1_1"].attn_norm.weight, model.blocks["1"].attn_norm.weight)  # 1-D: no noise


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_grown_model_trains(op):
    model = OPERATORS[op](trained(DENSE), measure=False).model
    x, y = batch(7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "op,part",
    [
        ("zero_pad", lambda m: (m.blocks["0"].attn.o_proj.weight, (slice(32, None),))),
        ("zero_pad", lambda m: (m.tok_emb.weight, (slice(None), slice(32, None)))),
        ("heads", lambda m: (m.blocks["0"].attn.o_proj.weight, (slice(None), slice(32, None)))),
        ("ffn_zero", lambda m: (m.blocks["0"].mlp.down_proj.weight, (slice(None), slice(-16, None)))),
        ("insert_zero", lambda m: (m.blocks["1_1"].attn.o_proj.weight, ())),
        ("insert_zero", lambda m: (m.blocks["1_1"].mlp.down_proj.weight, ())),
    ],
)
def test_zero_initialised_parts_start_at_zero_and_get_gradient(op, part):
    model = OPERATORS[op](trained(DENSE), measure=False).model
    model(*batch(8)).loss.backward()
    param, index = part(model)
    assert float(param.detach()[index].abs().max()) == 0.0
    assert float(param.grad[index].abs().sum()) > 0  # not dead: the new part learns


def test_cancelling_noise_breaks_symmetry_but_keeps_function():
    model = trained(DENSE)
    plain = G.clone(model, 2, measure=False).model
    noisy = G.clone(model, 2, noise="cancel", noise_std=1e-2)
    w = noisy.model.blocks["0"].attn.q_proj.weight
    assert not torch.equal(w, plain.blocks["0"].attn.q_proj.weight)
    old = model.blocks["0"].attn.q_proj.weight
    for rows in (slice(0, 32), slice(32, 64)):  # cloned heads; columns of the two copies sum to the old ones
        torch.testing.assert_close(w[rows, :32] + w[rows, 32:], old, rtol=0, atol=1e-6)
    assert noisy.report.kind == "exact" and noisy.report.max_abs_dlogits <= 1e-4
    # Copies of a residual coordinate are written by rows i and i+32 of o_proj: without noise they get the
    # same gradient forever; with cancelling noise on the readers they do not.
    for grown, symmetric in ((plain, True), (noisy.model, False)):
        grown(*batch(9)).loss.backward()
        for proj in (grown.blocks["0"].attn.o_proj, grown.blocks["0"].attn.q_proj):
            g = proj.weight.grad
            assert torch.allclose(g[:32], g[32:], rtol=1e-4, atol=1e-7) == symmetric


def test_clone_scales_final_norm_for_tied_head():
    model = trained("rms_swiglu_learned_tied_bias")
    new = G.clone(model, 2).model
    torch.testing.assert_close(new.norm_f.weight, model.norm_f.weight.repeat(2) / 2)
    torch.testing.assert_close(new.tok_emb.weight, model.tok_emb.weight.repeat(1, 2))
    assert new.config.n_head == 8 and new.config.n_kv_head == 8 and new.config.head_dim == 8


def test_net2net_reports_norm_statistics_note():
    result = G.net2net(trained(DENSE), 40)
    assert result.report.kind == "approximate"
    assert any("statistics" in n for n in result.report.notes)


REFUSALS = [
    (lambda m: G.stack(m, 1), "stack factor"),
    (lambda m: G.clone(m, 1), "clone factor"),
    (lambda m: G.clone(m, 1.5), "clone factor"),
    (lambda m: G.net2net(m, 32), "larger than the current 32"),
    (lambda m: G.zero_pad(m, 16), "larger than the current 32"),
    (lambda m: G.layer_map(m, [0, 1, 2, 2, 2]), r"drops old block\(s\) \[3\]"),
    (lambda m: G.layer_map(m, [0, 1, 2, 3]), "more than n_layer"),
    (lambda m: G.layer_map(m, [0, 1, 2, 3, 9]), "old block index"),
    (lambda m: G.insert_zero(m, [5]), "insert position 5"),
    (lambda m: G.insert_zero(m, [1], init="magic"), "block_init='magic'"),
    (lambda m: G.stack(m, 2, noise="cancel"), "noise='cancel' is not available"),
    (lambda m: G.clone(m, 2, noise="loud"), "noise='loud'"),
    (lambda m: G.add_heads(m, 5, 5), "group size would shrink"),
    (lambda m: G.add_heads(m, 4, 2), "must grow"),
    (lambda m: G.add_heads(m, 5), "not a multiple of the kv group size"),
    (lambda m: G.grow_ffn(m, 10), "larger than the current"),
    (lambda m: G.grow_ffn(m, 200, "double"), "ffn='double'"),
    (lambda m: G.grow_ffn(m, 200, "zero", noise="cancel"), "not available"),
    (lambda m: G.grow_seq(m, 16), "seq_len=16"),
    (lambda m: G.grow_seq(m, 32), "nothing to grow"),
    (lambda m: G.upcycle(m, 1), "n_expert=1"),
    (lambda m: G.upcycle(m, 4, noise="cancel"), "not available"),
    (lambda m: G.add_experts(m, 6), "needs an MoE model"),
    (
        lambda m: G.insert_zero(m, n_new=1, probe=(torch.zeros(1, 99, dtype=torch.long),) * 2),
        "exceeds the old model",
    ),
    (lambda m: G.insert_zero(m, n_new=1, probe=(torch.full((1, 4), 999),) * 2), "token ids"),
]


@pytest.mark.parametrize("case", range(len(REFUSALS)))
def test_refusals_before_anything_is_built(case, monkeypatch):
    fn, match = REFUSALS[case]
    monkeypatch.setattr(GPTAdapter, "build", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(ConfigError, match=match):
        fn(trained(DENSE))


def test_learned_position_refusals_and_moe_refusals():
    with pytest.raises(ConfigError, match="pos='rope' only"):
        G.grow_seq(trained(LEARNED), 64, rope_scale=2.0)
    with pytest.raises(ConfigError, match="already has n_expert=4"):
        G.upcycle(trained("moe"), 8)
    with pytest.raises(ConfigError, match="keeps moe_top_k"):
        G.grow(trained("moe"), trained("moe").config.replace(n_expert=6, moe_top_k=3))
    with pytest.raises(ConfigError, match="no growth adapter"):
        G.stack(torch.nn.Linear(2, 2), 2)


def test_report_round_trips_to_json():
    import json

    report = G.clone(trained(DENSE), 2).report
    d = json.loads(json.dumps(report.to_dict()))
    assert d["kind"] == "exact" and d["max_abs_dlogits"] <= 1e-4 and d["new_config"]["d_model"] == 64
    assert d["map_summary"]["mapped"] > 0 and "clone" in report.summary()


def test_deepcopy_of_grown_model_works():
    copy.deepcopy(G.insert_zero(trained(DENSE), n_new=1).model)


def test_fresh_values_do_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    G.insert_random(trained(DENSE), [0], seed=3, measure=False)
    assert torch.equal(torch.rand(3), expected)

"""Preservation, measured on trained models of every architecture option.

Exact operators: max |dlogits| <= 1e-4 in fp32 on held-out text, recomputed here independently of the
report. Non-exact operators: the report's numbers match a recomputation and are > 0.
"""

import pytest
import torch
from grow_fixtures import DENSE_NAMES, LEARNED_NAMES, RMS_NAMES, probe, single_thread, trained  # noqa: F401

from transformer_grow import operators as G

TOL = 1e-4


def heads_more_groups(model, **kw):
    c = model.config
    return G.add_heads(model, c.n_head + c.n_head // c.n_kv_head, c.n_kv_head + 1, **kw)


def heads_bigger_groups(model, **kw):
    c = model.config
    return G.add_heads(model, 2 * c.n_head, c.n_kv_head, **kw)


EXACT = {
    "insert_zero_copy": lambda m, **kw: G.insert_zero(m, n_new=2, **kw),
    "insert_zero_random_ends": lambda m, **kw: G.insert_zero(m, [-1, 3], init="random", **kw),
    "clone_x2": lambda m, **kw: G.clone(m, 2, **kw),
    "clone_x3_cancel_noise": lambda m, **kw: G.clone(m, 3, noise="cancel", noise_std=1e-2, **kw),
    "clone_x2_keep_heads_ffn": lambda m, **kw: G.clone(m, 2, heads=False, ffn=False, **kw),
    "net2net_uniform_x2": lambda m, **kw: G.net2net(m, 64, noise="cancel", **kw),
    "heads_more_groups": heads_more_groups,
    "heads_bigger_groups": heads_bigger_groups,
    "ffn_zero": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 24, "zero", **kw),
    "ffn_split": lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 24, "split", **kw),
    "ffn_split_x3_cancel": lambda m, **kw: G.grow_ffn(
        m, 3 * m.config.d_ff, "split", noise="cancel", noise_std=1e-2, **kw
    ),
    "seq_copy": lambda m, **kw: G.grow_seq(m, 64, "copy", **kw),
    "seq_tile": lambda m, **kw: G.grow_seq(m, 80, "tile", **kw),
    "upcycle_random_router": lambda m, **kw: G.upcycle(m, 4, 2, **kw),
    "upcycle_zero_router_top1": lambda m, **kw: G.upcycle(m, 3, 1, router_init="zero", **kw),
    "compound": lambda m, **kw: (
        G.grow(
            m,
            m.config.replace(
                n_layer=6,
                d_model=64,
                n_head=10,
                head_dim=m.config.head_dim,  # heads grow at a fixed head size (replace() would re-derive it)
                n_kv_head=5 * (m.config.n_kv_head // 2),
                d_ff=2 * m.config.d_ff + 8,
                seq_len=48,
                n_expert=2,
            ),
            depth="insert_zero",
            ffn="split",
            noise="cancel",
            **kw,
        )
        if m.config.n_kv_head == 2
        else G.grow(
            m,
            m.config.replace(
                n_layer=6,
                d_model=64,
                n_head=10,
                head_dim=m.config.head_dim,
                n_kv_head=10,
                d_ff=2 * m.config.d_ff + 8,
                seq_len=48,
                n_expert=2,
            ),
            depth="insert_zero",
            ffn="split",
            noise="cancel",
            **kw,
        )
    ),
}
MOE_EXACT = (
    "insert_zero_copy",
    "clone_x2",
    "heads_more_groups",
    "ffn_split",
    "ffn_zero",
    "net2net_uniform_x2",
)


def max_dlogits(old, new, batch) -> float:
    old.eval()
    new.eval()
    with torch.no_grad():
        return float((new(batch[0]).logits - old(batch[0]).logits).abs().max())


def check_exact(result, old):
    batch = probe()
    assert result.report.kind == "exact"
    assert result.report.max_abs_dlogits <= TOL
    assert abs(result.report.dloss) <= TOL
    assert max_dlogits(old, result.model, batch) <= TOL  # independent recomputation
    assert result.report.new_params > result.report.old_params or "seq" in result.report.method


@pytest.mark.parametrize("name", DENSE_NAMES)
@pytest.mark.parametrize("op", sorted(EXACT))
def test_exact_operators_preserve_trained_models(op, name):
    old = trained(name)
    check_exact(EXACT[op](old, probe=probe()), old)


@pytest.mark.parametrize("op", MOE_EXACT)
def test_exact_operators_on_a_trained_moe_model(op):
    old = trained("moe")
    check_exact(EXACT[op](old, probe=probe()), old)


@pytest.mark.parametrize("name", RMS_NAMES)
def test_zero_pad_is_exact_for_rmsnorm(name):
    old = trained(name)
    check_exact(G.zero_pad(old, 48, probe=probe()), old)


def test_zero_pad_without_eps_rescaling_is_declared_approximate():
    old = trained(RMS_NAMES[0])
    result = G.zero_pad(old, 48, rescale_eps=False, probe=probe())
    assert result.report.kind == "approximate"
    assert result.model.config.norm_eps == old.config.norm_eps


@pytest.mark.parametrize("name", DENSE_NAMES)
def test_rope_models_grow_context_with_no_change(name):
    old = trained(name)
    result = G.grow_seq(old, 128, probe=probe())
    check_exact(result, old)
    if old.config.pos == "rope":  # longer inputs than before also agree: RoPE has no table
        x = probe()[0].repeat(1, 3)[:, :96]
        assert max_dlogits(old, result.model, (x,)) <= TOL


NON_EXACT = {
    "stack": ("none", lambda m, **kw: G.stack(m, 2, **kw)),
    "duplicate": ("none", lambda m, **kw: G.duplicate(m, 2, **kw)),
    "interleave": ("none", lambda m, **kw: G.interleave(m, 2, noise_std=1e-2, **kw)),
    "layer_map_solar": ("none", lambda m, **kw: G.layer_map(m, [0, 1, 2, 1, 2, 3], **kw)),
    "insert_random": ("none", lambda m, **kw: G.insert_random(m, n_new=2, **kw)),
    "net2net_1.5": ("approximate", lambda m, **kw: G.net2net(m, 48, **kw)),
    "random_pad": ("none", lambda m, **kw: G.random_pad(m, 48, **kw)),
    "clone_plain_noise": ("approximate", lambda m, **kw: G.clone(m, 2, noise="plain", noise_std=1e-2, **kw)),
    "ffn_split_plain_noise": (
        "approximate",
        lambda m, **kw: G.grow_ffn(m, m.config.d_ff + 36, "split", noise="plain", noise_std=1e-2, **kw),
    ),
    "upcycle_plain_noise": (
        "approximate",
        lambda m, **kw: G.upcycle(m, 4, noise="plain", noise_std=1e-2, **kw),
    ),
}


def check_measured(result, old, kind):
    batch = probe()
    report = result.report
    assert report.kind == kind
    recomputed = max_dlogits(old, result.model, batch)
    assert report.max_abs_dlogits == pytest.approx(recomputed, rel=1e-5, abs=1e-7)
    assert report.max_abs_dlogits > 1e-4
    with torch.no_grad():
        loss_old, loss_new = float(old(*batch).loss), float(result.model(*batch).loss)
    assert report.dloss == pytest.approx(loss_new - loss_old, abs=1e-5)
    assert report.loss_old == pytest.approx(loss_old, abs=1e-6)


@pytest.mark.parametrize("name", [DENSE_NAMES[0], DENSE_NAMES[1]])
@pytest.mark.parametrize("op", sorted(NON_EXACT))
def test_non_exact_operators_report_measured_gap(op, name):
    kind, fn = NON_EXACT[op]
    old = trained(name)
    check_measured(fn(old, probe=probe()), old, kind)


def test_zero_pad_layernorm_is_approximate_and_measured():
    old = trained(DENSE_NAMES[0])
    assert old.config.norm == "layernorm"
    check_measured(G.zero_pad(old, 48, probe=probe()), old, "approximate")


@pytest.mark.parametrize("name", LEARNED_NAMES[:1])
def test_interpolated_positions_are_approximate(name):
    old = trained(name)
    check_measured(G.grow_seq(old, 64, "interpolate", probe=probe()), old, "approximate")


def test_rope_scaling_is_approximate():
    old = trained("rms_swiglu_rope_untied_gqa")
    check_measured(G.grow_seq(old, 64, rope_scale=2.0, probe=probe()), old, "approximate")
    check_measured(G.grow_seq(old, 64, rope_base=40000.0, probe=probe()), old, "approximate")


@pytest.mark.parametrize("router_init", ["zero", "random"])
def test_adding_experts_reports_gap_and_new_expert_share(router_init):
    old = trained("moe")
    result = G.add_experts(old, 6, router_init=router_init, probe=probe())
    share = result.report.options["new_expert_share"]
    assert 0 <= share <= 1
    if share == 0:  # never selected: exact
        assert result.report.max_abs_dlogits <= TOL
    else:
        check_measured(result, old, "approximate")

"""CompoundGrow (`grow`), the composable parameter map, and the adapter interface."""

import pytest
import torch
from grow_fixtures import DENSE_NAMES, probe, single_thread, trained  # noqa: F401

from transformer_grow import operators as G
from transformer_grow.errors import ConfigError
from transformer_grow.operators.adapter import GPTAdapter
from transformer_grow.operators.map import DimMap, ParamSource
from transformer_grow.operators.noise import noise_pairs

DENSE = "rms_swiglu_rope_untied_gqa"


def test_dim_map_apply_scale_power_and_new_rows():
    x = torch.arange(12.0).reshape(3, 4)
    d = DimMap.gather(torch.tensor([2, -1, 0, 0]), torch.tensor([1.0, 1.0, 0.5, 2.0]))
    y = d.apply(x, dim=1)
    torch.testing.assert_close(y, torch.stack([x[:, 2], torch.zeros(3), 0.5 * x[:, 0], 2 * x[:, 0]], dim=1))
    torch.testing.assert_close(
        d.apply(x, dim=1, power=2)[:, 2:], torch.stack([0.25 * x[:, 0], 4 * x[:, 0]], 1)
    )
    assert d.new_rows.tolist() == [False, True, False, False]


def test_dim_map_composition_equals_sequential_application():
    x = torch.randn(5, 3)
    inner = DimMap(
        torch.tensor([[0, 1], [4, -1], [2, 3], [-1, -1]]),
        torch.tensor([[0.3, 0.7], [2.0, 1.0], [1.0, -1.0], [1.0, 1.0]]),
    )
    outer = DimMap.gather(torch.tensor([3, 0, 1, 1, -1, 2]), torch.tensor([1.0, 0.5, 1.0, -2.0, 1.0, 3.0]))
    composed = outer.compose(inner)
    for power in (1, 2):
        torch.testing.assert_close(
            composed.apply(x, 0, power), outer.apply(inner.apply(x, 0, power), 0, power)
        )
    assert composed.new_rows.tolist() == [True, False, False, False, True, False]


def test_param_source_new_mask_is_union_over_dims():
    e = ParamSource(
        (3, 2), "w", (DimMap.gather(torch.tensor([0, -1, 1])), DimMap.gather(torch.tensor([-1, 0])))
    )
    assert e.kind == "partial"
    assert e.new_mask().expand(3, 2).tolist() == [[True, False], [True, True], [True, False]]


def test_noise_pairs_join_copies_of_one_row():
    rows = torch.tensor([0, 1, 2, 0, 1, 0])  # row 0 copied three times, row 1 twice, row 2 once
    a, b = noise_pairs(rows)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 3), (1, 4)]  # the odd copy (5) and row 2 stay unpaired
    assert torch.equal(rows[a], rows[b])


@pytest.mark.parametrize("name", DENSE_NAMES[:3])
def test_composite_map_rebuilds_the_grown_values(name):
    old = trained(name)
    result = G.grow(
        old,
        old.config.replace(
            n_layer=8,
            d_model=64,
            n_head=10,
            head_dim=old.config.head_dim,  # growth keeps the head size (64 / 10 derives none)
            n_kv_head=10 // (4 // old.config.n_kv_head),
            d_ff=2 * old.config.d_ff + 8,
            seq_len=40,
        ),
        depth="stack",
        ffn="split",
        probe=probe(),
    )
    rebuilt = result.param_map.apply(dict(old.named_parameters()))
    for n, p in result.model.named_parameters():
        mask = result.param_map[n].new_mask()
        torch.testing.assert_close(
            torch.where(mask, 0.0, rebuilt[n]), torch.where(mask, 0.0, p.detach()), msg=n
        )
    steps = [s.method for s in result.report.steps]
    assert steps == [
        "clone",
        "heads=zero",
        "ffn=split",
        "stack",
        f"seq={'copy' if old.config.pos == 'learned' else 'rope'}",
    ]
    assert result.report.kind == "none"  # stacking is not function-preserving
    assert result.report.max_abs_dlogits > 0 and result.model.config.d_model == 64


def test_preset_target_and_method_shorthand():
    old = trained(DENSE)
    small = old.config.replace(n_layer=8, d_model=64, n_head=8, n_kv_head=4, d_ff=None)
    result = G.grow(old, small.to_dict(), method="insert_zero+clone", probe=probe())
    assert result.model.config == small
    assert result.report.kind == "exact" and result.report.max_abs_dlogits <= 1e-4
    assert result.report.method == "width=clone,ffn=zero,depth=insert_zero"
    target = G.target_config(old.config, "tiny")  # sizes from the preset, the rest from the model
    assert (target.d_model, target.n_head, target.n_kv_head, target.norm, target.vocab_size) == (
        256,
        4,
        2,
        "rmsnorm",
        256,
    )


def test_layer_map_option_and_router_option():
    old = trained(DENSE)
    result = G.grow(
        old,
        old.config.replace(n_layer=6, n_expert=4),
        depth="layer_map",
        layer_sources=[0, 1, 2, 1, 2, 3],
        router_init="zero",
        measure=False,
    )
    assert result.model.block_keys == ["0", "1", "2", "1_1", "2_1", "3"]
    assert 0 < result.model.blocks["0"].mlp.router.weight.abs().max().item() < 1e-3  # near zero, ties broken


def test_follow_source_settings_are_noted():
    old = trained(DENSE)
    result = G.grow(old, old.config.replace(n_layer=8, dropout=0.1), measure=False)
    assert result.model.config.dropout == 0.0
    assert any("dropout" in n for n in result.report.notes)


COMPOSITE_REFUSALS = [
    ({"n_layer": 2}, "smaller than the model's 4"),
    ({"d_model": 48, "head_dim": 8}, "integer factor"),
    ({"norm": "layernorm"}, "norm cannot change"),
    ({"pos": "learned"}, "pos cannot change"),
    ({"mlp": "gelu"}, "mlp cannot change"),
    ({"vocab_size": 300}, "vocab_size cannot change"),
    ({"tie_embeddings": True}, "tie_embeddings cannot change"),
    ({"head_dim": 16}, "head_dim cannot change"),
    ({"n_layer": 6}, "whole number of times"),
    ({}, "nothing to grow"),
    ({"n_head": 5, "n_kv_head": 5, "head_dim": 8}, "group size would shrink"),
]


@pytest.mark.parametrize("case", range(len(COMPOSITE_REFUSALS)))
def test_composite_refusals_before_anything_is_built(case, monkeypatch):
    changes, match = COMPOSITE_REFUSALS[case]
    old = trained(DENSE)
    monkeypatch.setattr(GPTAdapter, "build", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(ConfigError, match=match):
        G.grow(old, old.config.replace(**changes))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "wider"}, "method='wider'"),
        ({"method": "stack", "depth": "duplicate"}, "conflicts"),
        ({"depth": "repeat"}, "is no longer a method name; use depth=stack"),
        ({"method": "repeat"}, "is no longer a method name; use depth=stack"),
        ({"width": "clone"}, "no width growth"),
        ({"colour": "red"}, "unknown growth option 'colour'"),
        ({"layer_sources": [0, 1]}, "applies to depth='layer_map', not depth='stack'"),
        ({"depth": "layer_map"}, "needs option layer_sources"),
        ({"depth": "layer_map", "layer_sources": [0, 1, 2, 3, 3]}, "target has n_layer=8"),
        ({"rescale_eps": False}, "width does not grow"),
    ],
)
def test_composite_option_refusals(kwargs, match, monkeypatch):
    old = trained(DENSE)
    monkeypatch.setattr(GPTAdapter, "build", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(ConfigError, match=match):
        G.grow(old, old.config.replace(n_layer=8), **kwargs)


def test_zero_pad_then_growth_again_composes():
    old = trained(DENSE)
    first = G.grow(old, old.config.replace(d_model=48, head_dim=8), width="zero_pad", probe=probe())
    assert first.report.kind == "exact" and first.report.max_abs_dlogits <= 1e-4
    second = G.grow(first.model, first.model.config.replace(n_layer=5), depth="insert_zero", probe=probe())
    composed = second.param_map.compose(first.param_map)
    rebuilt = composed.apply(dict(old.named_parameters()))
    for n, p in second.model.named_parameters():
        mask = composed[n].new_mask()
        torch.testing.assert_close(
            torch.where(mask, 0.0, rebuilt[n]), torch.where(mask, 0.0, p.detach()), msg=n
        )


class RenamedAdapter(GPTAdapter):
    """A stand-in for another family: same model, but only through the adapter interface."""

    calls = 0

    def config(self, model):
        RenamedAdapter.calls += 1
        return super().config(model)


def test_operators_go_through_the_adapter():
    RenamedAdapter.calls = 0
    result = G.clone(trained(DENSE), 2, adapter=RenamedAdapter())
    assert RenamedAdapter.calls > 0 and result.report.kind == "exact"

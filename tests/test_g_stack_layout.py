"""G_stack's layout follows the authors' code (Du et al. 2024, repository ``prts``:
``prts_lit/scaling/stackingpt.py`` with ``prts_configs/stacking_6L_24L.json``): the whole small model is
stacked on top of itself. The in-place layout our ``stack`` had before is ``duplicate``; the renamed
``repeat`` is refused with one line. Plans: ``g_stack`` uses the authors' layout, ``g_stack_duplicate``
the in-place one, ``midas`` copies the middle block (Saunshi et al. 2024)."""

from __future__ import annotations

import pytest
import torch

from transformer_grow import operators as G
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators.depth import duplicate_layout, stack_layout
from transformer_grow.plans.builders import PlanOptions, build_plan, midas_layout

# stacking_6L_24L.json's "stacking_list" (6 -> 24 layers), as published with the paper.
AUTHORS_6_TO_24 = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]


def test_stack_layout_is_the_authors_stacking_list():
    assert stack_layout(6, 4) == AUTHORS_6_TO_24
    assert duplicate_layout(3, 2) == [0, 0, 1, 1, 2, 2]


def test_grown_blocks_follow_the_authors_order():
    torch.manual_seed(0)
    small = GPT(ModelConfig(n_layer=6, d_model=16, n_head=2, seq_len=8, vocab_size=32))
    grown = G.stack(small, 4, measure=False).model
    assert grown.config.n_layer == 24
    keys = small.block_keys
    for position, source in enumerate(AUTHORS_6_TO_24):
        assert torch.equal(grown.blocks[grown.block_keys[position]].attn.q_proj.weight,
                           small.blocks[keys[source]].attn.q_proj.weight)
    # embeddings, final norm and head are copied as the authors' code copies them
    assert torch.equal(grown.tok_emb.weight, small.tok_emb.weight)
    assert torch.equal(grown.norm_f.weight, small.norm_f.weight)


def test_grow_to_a_depth_target_uses_the_authors_layout():
    torch.manual_seed(0)
    small = GPT(ModelConfig(n_layer=3, d_model=16, n_head=2, seq_len=8, vocab_size=32))
    result = G.grow(small, {"n_layer": 12}, measure=False)
    sources = [result.param_map[f"blocks.{key}.mlp.down_proj.weight"].source for key in result.model.block_keys]
    assert [int(s.split(".")[1]) for s in sources] == [0, 1, 2] * 4
    inplace = G.grow(small, {"n_layer": 12}, depth="duplicate", measure=False)
    sources = [inplace.param_map[f"blocks.{key}.mlp.down_proj.weight"].source for key in inplace.model.block_keys]
    assert [int(s.split(".")[1]) for s in sources] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_repeat_is_refused_with_its_new_name():
    small = GPT(ModelConfig(n_layer=2, d_model=16, n_head=2, seq_len=8, vocab_size=32))
    with pytest.raises(ConfigError, match="depth='repeat' is no longer a method name; use depth=stack"):
        G.grow(small, {"n_layer": 4}, depth="repeat")


TARGET = ModelConfig(n_layer=4, d_model=32, n_head=2, seq_len=64, vocab_size=256)


def test_g_stack_plans_grow_by_their_layouts():
    options = PlanOptions(growth_factor=2, growth_fraction=0.5)
    assert build_plan("g_stack", TARGET, 100_000, options).stages[1].growth.method == "stack"
    plan = build_plan("g_stack_duplicate", TARGET, 100_000, options)
    assert plan.name == "g_stack_duplicate" and plan.stages[1].growth.method == "duplicate"
    assert [s.model.n_layer for s in plan.stages] == [2, 4]


def test_midas_copies_the_middle_block_with_prop1_stage_shares():
    assert midas_layout(1, 1) == [0, 0]
    assert midas_layout(3, 1) == [0, 1, 1, 2]
    assert midas_layout(3, 2) == [0, 1, 2, 3, 2, 3, 4, 5]
    plan = build_plan("midas", TARGET, 100_000, PlanOptions())
    assert [s.model.n_layer for s in plan.stages] == [1, 2, 3, 4]
    assert [s.tokens for s in plan.stages[:3]] == [10_000, 20_000, 30_000]  # PROP-1: 1 : 2 : 3 (of 1+2+3+4)
    assert [s.growth.options["layer_sources"] for s in plan.stages[1:]] == [[0, 0], [0, 0, 1], [0, 1, 1, 2]]
    with pytest.raises(ConfigError, match="midas_stages=3 must divide the target's n_layer=4"):
        build_plan("midas", TARGET, 100_000, PlanOptions(midas_stages=3))

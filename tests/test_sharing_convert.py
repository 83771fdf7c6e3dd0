"""Conversion of a trained model to a shared one (operators/share.py) and `tgrow share`: group choice against
brute force, the budget, exactness at full LoRA rank, error falling with the rank."""

from __future__ import annotations

import copy
import functools
import itertools
import json

import pytest
import torch
from grow_fixtures import batch, probe, single_thread, train  # noqa: F401  (single_thread: autouse fixture)
from reliability_helpers import tgrow

from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators.report import default_probe
from transformer_grow.operators.share import choose_groups, convert, group_cost, layer_similarity, stored_params
from transformer_grow.train.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint

CONFIG = dict(n_layer=4, d_model=32, n_head=4, vocab_size=256, seq_len=32)


@functools.cache
def _trained(bias: bool) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIG, bias=bias, norm="layernorm" if bias else "rmsnorm"))
    train(model, 60)
    return model


def trained(bias: bool = False) -> GPT:
    return _trained(bias)


@pytest.mark.parametrize("parts", ["block", "attn", "ffn"])
@pytest.mark.parametrize("bias", [False, True])
def test_full_rank_conversion_is_exact(parts, bias):
    model = trained(bias)
    result = convert(model, n_groups=2, parts=parts, lora_rank=32, probe=probe())  # 32 = min(in, out) of all
    assert result.report.max_abs_dlogits <= 1e-4
    assert max(result.model.config.share_layers) == 1
    x = probe()[0]
    with torch.no_grad():
        assert (model(x).logits - result.model.eval()(x).logits).abs().max() <= 1e-4


def test_error_falls_as_the_rank_grows():
    model = trained()
    weight_errors, logit_errors = [], []
    for rank in (0, 2, 4, 8, 16, 32):
        shared = convert(model, n_groups=1, lora_rank=rank, probe=probe())
        q = [shared.model.blocks[k].attn.q_proj for k in model.block_keys]
        with torch.no_grad():
            effective = [m.weight + (m.lora_B @ m.lora_A if rank else 0) for m in q]
            weight_errors.append(sum(float((e - model.blocks[k].attn.q_proj.weight).norm() ** 2)
                                     for e, k in zip(effective, model.block_keys)))
        logit_errors.append(shared.report.max_abs_dlogits)
    assert all(a > b for a, b in zip(weight_errors, weight_errors[1:]))  # Eckart-Young: strictly better
    assert weight_errors[-1] < 1e-10
    assert logit_errors[-1] <= 1e-4 < logit_errors[2] < logit_errors[0]


def test_budget_takes_the_most_blocks_that_fit():
    model = trained()
    result = convert(model, 0.5, probe=probe())
    report = result.report
    matrices = sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2)  # what the budget counts
    assert report.blocks_before == model.num_params() - 32  # all but the final norm
    assert stored_params(result.model.config) <= 0.5 * matrices
    m = max(report.groups) + 1
    assert m == 2  # half the layers' parameters: half the blocks
    sim = layer_similarity(model)
    more = choose_groups(sim, m + 1)
    bigger = result.model.config.replace(share_layers=more, share_groups=m + 1)
    assert stored_params(bigger) > 0.5 * matrices  # one more block would not fit
    assert report.loss_before is not None and report.dloss == pytest.approx(report.loss_after - report.loss_before)
    with pytest.raises(ConfigError, match="the fewest with parts=block"):
        convert(model, 0.05)


def test_greedy_groups_the_similar_layers():
    # layers 0, 2 alike and 1, 3 alike: a cycle pattern
    sim = torch.tensor([[1, .1, .9, .2], [.1, 1, .2, .8], [.9, .2, 1, .1], [.2, .8, .1, 1]], dtype=torch.float64)
    assert choose_groups(sim, 2, "greedy") == [0, 1, 0, 1]
    assert choose_groups(sim, 4, "greedy") == [0, 1, 2, 3]
    assert group_cost(sim, [0, 2]) == pytest.approx(2 - (1 + 1 + 2 * .9) / 2)


def test_contiguous_groups_are_optimal():
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    sim = vectors @ vectors.T
    for m in (2, 3):
        chosen = choose_groups(sim, m, "contiguous")
        best = min(
            (sum(group_cost(sim, list(range(a, b))) for a, b in zip((0, *cuts), (*cuts, 6))), cuts)
            for cuts in itertools.combinations(range(1, 6), m - 1)
        )
        cost = sum(group_cost(sim, [i for i in range(6) if chosen[i] == k]) for k in range(m))
        assert cost == pytest.approx(best[0])
        assert chosen == sorted(chosen)  # runs of consecutive layers


@pytest.mark.parametrize("method", ["weights", "outputs"])
def test_a_copied_layer_is_found_and_grouped(method):
    model = copy.deepcopy(trained())
    model.blocks["2"].load_state_dict(model.blocks["0"].state_dict())  # layer 2 = layer 0
    sim = layer_similarity(model, "block", method, probe())
    assert torch.allclose(sim, sim.T) and torch.allclose(sim.diagonal(), torch.ones(4, dtype=torch.float64))
    assert sim[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert sim[0, 1] < 0.999 and sim[1, 3] < 0.999
    result = convert(model, n_groups=3, similarity=method, probe=probe())
    assert result.report.groups == [0, 1, 0, 2]
    assert result.report.max_abs_dlogits <= 1e-4  # the shared block is the average of two equal ones


def test_cli_share_writes_a_checkpoint_that_stores_shared_tensors_once(tmp_path, capsys):
    model = trained()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "src", Checkpoint(model.config, model.block_keys, state, None, {"step": 60}))
    rc, out, err = tgrow(capsys, "share", tmp_path / "src", "--params", "0.5", "--lora-rank", "2",
                         "--out", tmp_path / "out")
    assert rc == 0, err
    assert "saved" in out and "before retraining" in out
    report = json.loads((tmp_path / "out" / "share_report.json").read_text())
    assert report["blocks_after"] <= 0.5 * report["blocks_before"] and report["saved"] >= 0.5
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.model_config.share == "custom" and ckpt.optimizer_state is None and ckpt.train_state["step"] == 60
    shared = model_from_checkpoint(ckpt)
    assert set(ckpt.model_state) >= {n for n, _ in shared.named_parameters()}
    header = json.loads((tmp_path / "out" / "checkpoint" / "manifest.json").read_text())
    assert len(header["files"]["model.safetensors"]["tensors"]) == len(list(shared.named_parameters()))
    with torch.no_grad():
        loss = float(shared.eval()(*default_probe(256, 32)).loss)
    assert loss == pytest.approx(report["loss_after"], abs=1e-5)  # the seeded probe (no data config)
    rc, _, err = tgrow(capsys, "share", tmp_path / "src", "--params", "0.5", "--out", tmp_path / "out")
    assert rc == 2 and "already holds a checkpoint" in err
    (tmp_path / "unshared.yaml").write_text("share: none\n")
    rc, out, err = tgrow(capsys, "grow", tmp_path / "out", "--to", tmp_path / "unshared.yaml", "--method", "unshare",
                         "--out", tmp_path / "grown")
    assert rc == 0, err
    grown = json.loads((tmp_path / "grown" / "growth_report.json").read_text())
    assert grown["kind"] == "exact" and grown["max_abs_dlogits"] <= 1e-4
    assert load_checkpoint(tmp_path / "grown").model_config == model.config  # the original architecture again


def test_cli_grow_of_a_shared_checkpoint_unshares_it(tmp_path, capsys):
    model = GPT(ModelConfig(**CONFIG, share="cycle", share_groups=2))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "src", Checkpoint(model.config, model.block_keys, state, None, {"step": 0}))
    rc, _, err = tgrow(capsys, "grow", tmp_path / "src", "--method", "unshare", "--out", tmp_path / "un")
    assert rc == 0, err  # no --to: the same model, unshared
    assert load_checkpoint(tmp_path / "un").model_config == model.config.replace(share="none")
    (tmp_path / "deeper.yaml").write_text("n_layer: 8\n")
    rc, _, err = tgrow(capsys, "grow", tmp_path / "src", "--to", tmp_path / "deeper.yaml", "--method", "unshare+stack",
                       "--out", tmp_path / "deep")
    assert rc == 0, err  # a target given: unshared (a shared model grows only by unsharing first), then stacked
    grown = load_checkpoint(tmp_path / "deep").model_config
    assert (grown.share, grown.n_layer) == ("none", 8)
    rc, _, err = tgrow(capsys, "grow", tmp_path / "un", "--method", "unshare", "--out", tmp_path / "again")
    assert rc == 2 and "has no cross-layer sharing" in err
    rc, _, err = tgrow(capsys, "grow", tmp_path / "src", "--out", tmp_path / "none")
    assert rc == 2 and "--to is required" in err

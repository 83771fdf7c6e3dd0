"""Cross-layer sharing in the model (model/sharing.py), unsharing (operators/unshare.py), checkpoints and the
share_unshare plan: counts by hand, gradients summed over uses, exactness, optimizer moments."""

from __future__ import annotations

import json

import pytest
import torch
from grow_fixtures import batch, single_thread, train  # noqa: F401  (single_thread: autouse fixture)

from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.sharing import LoRALinear, strategy_groups, unshared_config
from transformer_grow.operators import grow, grow_optimizer_state, unshare
from transformer_grow.optim_state import optimizer_state_by_name
from transformer_grow.plans.accounting import flops_per_token
from transformer_grow.plans.builders import PlanOptions, build_plan
from transformer_grow.run.event import check_growth_events
from transformer_grow.train.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint

# d=16, d_ff=64 (swiglu: 64 * ceil(8 * 16 / 3 / 64)), RMSNorm, no biases: per layer attention 4*16*16 = 1024,
# FFN 3*16*64 = 3072, two norms of 16; the final norm 16.
TINY = dict(n_layer=4, d_model=16, n_head=2, vocab_size=256, seq_len=32)  # byte vocabulary of grow_fixtures
LORA_PER_LAYER_R2 = 4 * 2 * (16 + 16) + 3 * 2 * (16 + 64)  # q,k,v,o: r*(in+out); up, gate, down: 2*(16+64)


def shared(**share) -> ModelConfig:
    return ModelConfig(**TINY, **share)


def test_assignments_follow_takase_and_kiyono():
    assert strategy_groups("sequence", 6, 3) == [0, 0, 1, 1, 2, 2]  # floor(i / (N/M))
    assert strategy_groups("sequence", 6, 2) == [0, 0, 0, 1, 1, 1]
    assert strategy_groups("cycle", 6, 3) == [0, 1, 2, 0, 1, 2]  # i mod M
    assert strategy_groups("cycle_rev", 6, 3) == [0, 1, 2, 2, 1, 0]
    assert strategy_groups("cycle_rev", 6, 2) == [0, 1, 0, 1, 1, 0]
    assert strategy_groups("all", 5, 1) == [0] * 5
    assert strategy_groups("middle_all", 5, 3) == [0, 1, 1, 1, 2]  # Subformer's sandwich
    assert strategy_groups("middle_cycle", 6, 4) == [0, 1, 2, 1, 2, 3]
    assert strategy_groups("middle_sequence", 6, 4) == [0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("share, expected", [
    ({}, 4 * (1024 + 3072 + 32) + 16),
    (dict(share="all"), 1 * (1024 + 3072 + 32) + 16),
    (dict(share="cycle", share_groups=2), 2 * (1024 + 3072 + 32) + 16),
    (dict(share="sequence", share_groups=2, share_parts="attn"), 2 * (1024 + 16) + 4 * (3072 + 16) + 16),
    (dict(share="cycle", share_groups=2, share_parts="ffn", share_norms=False), 2 * 3072 + 4 * 16 + 4 * 1040 + 16),
    (dict(share="middle_all"), 3 * (1024 + 3072 + 32) + 16),
    (dict(share="custom", share_layers=[0, 1, 1, 0]), 2 * (1024 + 3072 + 32) + 16),
    (dict(share="all", share_norms=False, share_lora_rank=2), 4096 + 4 * 32 + 4 * LORA_PER_LAYER_R2 + 16),
    # layers 1 and 2 share (and carry LoRA); layers 0 and 3 are alone: no delta
    (dict(share="middle_all", share_norms=False, share_lora_rank=2), 3 * 4096 + 4 * 32 + 2 * LORA_PER_LAYER_R2 + 16),
])
def test_stored_parameters_by_hand_and_compute_unchanged(share, expected):
    model = GPT(shared(**share))
    assert model.num_params(non_embedding=True) == expected
    assert model.num_params(non_embedding=False) == expected + 256 * 16  # tied embedding counted once
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    full = GPT(ModelConfig(**TINY))
    assert model.flops_per_token() == full.flops_per_token() + 6 * lora  # the compute of the unshared model
    assert flops_per_token(model.config) == model.flops_per_token()  # accounting builds it on the meta device


def test_shared_gradient_is_the_sum_over_uses():
    torch.manual_seed(0)
    model = GPT(shared(share="cycle", share_groups=2, share_norms=False, share_lora_rank=2))
    train(model, 5)  # B != 0: the LoRA deltas take part
    full = unshare(model, probe=batch(7, size=2)).model
    x, y = batch(3, size=4)
    for m in (model, full):
        m.zero_grad()
        m(x, y).loss.backward()
    grads = dict(full.named_parameters())
    for layer_keys, name in ((("0", "2"), "attn.q_proj.weight"), (("1", "3"), "mlp.down_proj.weight")):
        summed = sum(grads[f"blocks.{k}.{name}"].grad for k in layer_keys)
        torch.testing.assert_close(model.get_parameter(f"blocks.{layer_keys[0]}.{name}").grad, summed,
                                   rtol=1e-4, atol=1e-7)
    assert model.blocks["0"].attn.q_proj.weight is model.blocks["2"].attn.q_proj.weight
    assert model.blocks["0"].attn_norm.weight is not model.blocks["2"].attn_norm.weight  # per-layer norms


def test_unshare_is_exact_moves_moments_and_trains_on():
    torch.manual_seed(1)
    model = GPT(shared(share="all", share_norms=False, share_lora_rank=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(8):
        x, y = batch(step)
        opt.zero_grad()
        model(x, y).loss.backward()
        opt.step()
    state = optimizer_state_by_name(model, opt)
    probe = batch(99, size=4, split="val")
    result = grow(model, {"share": "none"}, method="unshare", probe=probe)
    assert result.report.kind == "exact" and result.report.max_abs_dlogits <= 1e-4
    full = result.model
    assert full.config == unshared_config(model.config) and full.config.share == "none"
    assert not any(isinstance(m, LoRALinear) for m in full.modules())
    with torch.no_grad():
        model.eval(), full.eval()
        assert (model(probe[0]).logits - full(probe[0]).logits).abs().max() <= 1e-4
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert full.flops_per_token() == model.flops_per_token() - 6 * lora
    grown = grow_optimizer_state(state, result.param_map)
    assert set(grown) == {n for n, _ in full.named_parameters()}
    for key in full.block_keys:  # every layer's copy starts with the shared tensor's moments
        torch.testing.assert_close(grown[f"blocks.{key}.mlp.up_proj.weight"]["exp_avg"],
                                   state["blocks.0.mlp.up_proj.weight"]["exp_avg"])
    with torch.no_grad():
        before = float(full(*batch(500, split="val")).loss)
    train(full, 30)
    with torch.no_grad():
        assert float(full(*batch(500, split="val")).loss) < before


def test_checkpoint_stores_each_shared_tensor_once(tmp_path):
    torch.manual_seed(2)
    model = GPT(shared(share="cycle_rev", share_groups=2, share_lora_rank=2, share_norms=False))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert set(state) == {n for n, _ in model.named_parameters()}  # first names only
    assert "blocks.2.attn.q_proj.weight" not in state and "blocks.2.attn.q_proj.lora_A" in state
    save_checkpoint(tmp_path / "ckpt", Checkpoint(model.config, model.block_keys, state, None, {"step": 0}))
    header = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())["files"]["model.safetensors"]["tensors"]
    assert set(header) == set(state)
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "ckpt"))
    assert loaded.blocks["1"].mlp.up_proj.weight is loaded.blocks["2"].mlp.up_proj.weight  # [0, 1, 1, 0]
    x = batch(5, size=2)[0][:, :16]
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, loaded.eval()(x).logits)


def test_meta_and_dtype_moves_keep_the_ties():
    with torch.device("meta"):
        model = GPT(shared(share="all"))
    model = model.to_empty(device="cpu").to(torch.float64)
    assert model.blocks["0"].mlp.up_proj.weight is model.blocks["3"].mlp.up_proj.weight


@pytest.mark.parametrize("settings, fragment", [
    (dict(share="cycle"), "needs share_groups"),
    (dict(share_groups=2), "applies only to a shared model"),
    (dict(share="cycle", share_groups=5), "from 1 to 4"),
    (dict(share="all", share_groups=2), "stores 1 block"),
    (dict(share="custom", share_layers=[1, 1, 0, 0]), "order of first use: [0, 0, 1, 1]"),
    (dict(share="custom", share_layers=[0, 1]), "each of the 4 layers"),
    (dict(share="all", n_expert=4), "mixture-of-experts"),
    (dict(share="all", share_parts="norms"), "share_parts='norms'"),
    (dict(share="all", share_lora_rank=-1), "share_lora_rank=-1"),
])
def test_bad_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{**TINY, **settings})
    assert fragment in str(info.value)


def test_growth_of_a_shared_model_goes_through_unsharing():
    model = GPT(shared(share="cycle", share_groups=2))
    with pytest.raises(ConfigError, match="grows only by unsharing"):
        grow(model, {"n_layer": 8})
    with pytest.raises(ConfigError, match="is not growth"):
        grow(GPT(ModelConfig(**TINY)), model.config)
    result = grow(model, {"share": "none", "n_layer": 8}, method="unshare+stack", probe=batch(1, size=2))
    assert [s.method for s in result.report.steps] == ["unshare", "stack"]
    assert result.model.config.n_layer == 8 and result.model.config.share == "none"
    assert result.report.steps[0].kind == "exact"


def test_share_unshare_plan_accounts_compute_flops():
    target = ModelConfig(**TINY)
    plan = build_plan("share_unshare", target, 100_000, PlanOptions(share_strategy="cycle_rev"))
    first, last = plan.stages
    assert first.model.share == "cycle_rev" and first.model.share_groups == 2  # n_layer / growth_factor
    assert last.model == target and last.growth.method == "unshare"
    assert flops_per_token(first.model) == flops_per_token(target)  # same compute, half the blocks stored
    assert first.tokens == 25_000  # max_fraction / 2 of the budget
    check_growth_events(plan)
    with pytest.raises(ConfigError, match="share_strategy"):
        build_plan("share_unshare", target, 100_000, PlanOptions(share_strategy="custom"))


def test_growth_manager_trains_shared_then_unshared(tmp_path):
    import numpy as np

    from transformer_grow.data import TokenData
    from transformer_grow.run.manager import GrowthManager
    from transformer_grow.train.config import TrainConfig

    rng = np.random.default_rng(0)
    tokens = (np.cumsum(rng.integers(1, 3, size=8_000)) % 64).astype(np.int64)  # mostly i+1 after i
    data = TokenData(train=tokens[:7_000], val=tokens[7_000:], vocab_size=64)
    target = ModelConfig(n_layer=4, d_model=16, n_head=2, vocab_size=64, seq_len=16)
    budget = 40 * 4 * 16
    manager = GrowthManager(target, "share_unshare", budget_tokens=budget,
                            train_config=TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu"),
                            plan_options=PlanOptions(growth_fraction=0.5), n_evals=4, eval_windows=4,
                            out_dir=tmp_path / "run", log=None)
    result = manager.run(data)
    (event,) = result.record.events
    assert event["operator"] == "share=unshare" and event["kind"] == "exact"
    assert event["val_loss_after"] == pytest.approx(event["val_loss_before"], abs=1e-5)
    assert result.model.config == target
    assert result.record.total_tokens == budget
    assert result.record.total_flops == flops_per_token(target) * budget  # shared stage: the same FLOPs/token
    assert result.record.final_val_loss < event["val_loss_before"]


def test_replace_share_none_unshares_the_config():
    config = shared(share="custom", share_layers=[0, 1, 1, 0], share_lora_rank=2, share_norms=False)
    assert config.share_groups == 2  # derived from share_layers
    assert config.replace(share="none") == unshared_config(config) == ModelConfig(**TINY)


def test_a_shared_model_is_not_exported_to_hugging_face():
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformer_grow.errors import ConfigError
    from transformer_grow.hf.convert import from_hf, to_hf

    hf = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      intermediate_size=64, vocab_size=64, max_position_embeddings=32))
    gpt, info = from_hf(hf)
    with pytest.raises(ConfigError, match="share='all': .* unshare the model first"):
        to_hf(GPT(gpt.config.replace(share="all")), info)

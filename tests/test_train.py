"""The Trainer: learning, accounting, gradient accumulation, divergence, exact resume, model replacement."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

from transformer_grow.model import GPT
from transformer_grow.train import (
    Trainer,
    TrainingDiverged,
    optimizer_state_by_name,
    read_metrics,
)


@pytest.fixture(scope="module")
def data_and_config(tmp_path_factory):
    return prepare_bytes_data(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def data(data_and_config):
    return data_and_config[0]


def test_loss_falls_and_counters_add_up(data, tmp_path):
    config = fast_train_config(max_steps=40, lr=5e-3, eval_interval=20, log_interval=10)
    trainer = Trainer(micro_model(), config, data, out_dir=tmp_path)
    initial = trainer.evaluate()
    assert abs(initial - math.log(256)) < 0.5  # a fresh model is near uniform over bytes
    summary = trainer.fit()
    assert summary.step == 40 and summary.val_loss < 3.0 < initial - 2.0
    tokens_per_step = 8 * 64
    assert trainer.tokens == 40 * tokens_per_step
    assert trainer.flops == trainer.model.flops_per_token() * trainer.tokens
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == trainer.history
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    assert records[-1]["val_loss"] == summary.val_loss
    for r in records:
        assert r["tokens"] == r["step"] * tokens_per_step and r["tokens_per_s"] > 0 and r["lr"] > 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    walls = [r["wall_seconds"] for r in records]
    assert walls == sorted(walls)
    assert (tmp_path / "checkpoint" / "state.json").is_file()


def test_gradient_accumulation_matches_one_big_batch(data):
    grads, losses = [], []
    for accum in (1, 2):  # batch 8 in one pass == 2 micro-batches of 4
        trainer = Trainer(micro_model(), fast_train_config(batch_size=8, grad_accum=accum), data)
        x, y = data.batch(0, 8, 64, seed=0)
        ce, objective = trainer.forward_backward(x, y)
        assert objective == ce  # dense model: no auxiliary loss
        losses.append(ce)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_non_finite_loss_is_reported_and_not_trained_through(data):
    trainer = Trainer(micro_model(), fast_train_config(), data)
    trainer.train_steps(1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with torch.no_grad():
        trainer.model.norm_f.weight[0] = float("nan")  # poison: every logit becomes nan
    with pytest.raises(TrainingDiverged, match=r"non-finite loss nan at step 2\b"):
        trainer.train_steps(1)
    assert trainer.step == 1
    for name, param in trainer.model.named_parameters():  # no update was applied
        if name != "norm_f.weight":
            assert torch.equal(param, before[name]), name
    assert all(p.grad is None for p in trainer.model.parameters())


def test_non_finite_gradient_is_reported_and_not_applied(data):
    trainer = Trainer(micro_model(), fast_train_config(), data)
    weight = trainer.model.blocks["0"].mlp.up_proj.weight
    before = weight.detach().clone()
    weight.register_hook(lambda grad: grad * float("inf"))  # finite loss, infinite gradient
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm (inf|nan) at step 1\b"):
        trainer.train_steps(1)
    assert trainer.step == 0 and torch.equal(weight, before) and not trainer.optimizer.state


def test_resume_from_checkpoint_is_bitwise_exact(data_and_config, tmp_path):
    data, data_config = data_and_config
    model = micro_model(dropout=0.1)  # dropout draws from torch's RNG: its state must be restored too
    config = fast_train_config(max_steps=8, ckpt_interval=3, eval_interval=4, log_interval=2)
    full = Trainer(model, config, data, out_dir=tmp_path / "full", data_config=data_config)
    full.fit()

    part = Trainer(model, config, data, out_dir=tmp_path / "part", data_config=data_config)
    part.train_steps(5)  # checkpoint at step 3, then two more steps whose metrics a crash would orphan
    torch.manual_seed(1234)  # disturb the global RNG, as a fresh process would
    resumed = Trainer.resume(tmp_path / "part", data)
    assert resumed.step == 3 and resumed.tokens == 3 * 8 * 64
    assert resumed.data_config == data_config
    resumed.fit()
    assert resumed.step == full.step == 8
    assert resumed.flops == full.flops
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.last_val_loss == full.last_val_loss
    steps = [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")]
    assert steps == [r["step"] for r in full.history] == sorted(set(steps))  # no orphaned or duplicate records


def grow_one_block(model: GPT) -> GPT:
    """A function-preserving depth growth for the test: append a block whose output projections are zero."""
    config = model.config.replace(n_layer=model.config.n_layer + 1)
    grown = GPT(config, block_keys=[*model.block_keys, "new"])
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("blocks.new.") for k in missing)
    with torch.no_grad():
        grown.blocks["new"].attn.o_proj.weight.zero_()
        grown.blocks["new"].mlp.down_proj.weight.zero_()
    return grown


def test_replace_model_keeps_state_by_name_and_rewarms(data, tmp_path):
    trainer = Trainer(micro_model(), fast_train_config(max_steps=40, warmup_steps=2), data, out_dir=tmp_path)
    trainer.train_steps(6)
    old_state = optimizer_state_by_name(trainer.model, trainer.optimizer)
    x, y = data.batch(100, 4, 64, seed=0)
    with torch.no_grad():
        loss_before = float(trainer.model(x, y).loss)
    grown = grow_one_block(trainer.model)
    flops_before, old_fpt = trainer.flops, trainer.model.flops_per_token()
    trainer.replace_model(grown, optimizer_state=old_state, rewarmup_steps=4)
    assert trainer.model is grown and trainer.model_config.n_layer == 3
    with torch.no_grad():
        assert float(trainer.model(x, y).loss) == pytest.approx(loss_before, abs=1e-5)
    carried = optimizer_state_by_name(trainer.model, trainer.optimizer)
    assert set(carried) == set(old_state)  # new block: no state yet (zero moments at its first step)
    for name, entry in old_state.items():
        for key, value in entry.items():
            assert torch.equal(carried[name][key], value), (name, key)
    for k in range(4):  # the global cosine schedule continues, scaled by k/4 over 4 steps
        assert trainer.lr == pytest.approx(trainer.schedule(6 + k) * (k + 1) / 4)
        trainer.train_steps(1)
        assert math.isfinite(trainer.last_train_loss)
    assert trainer.lr == pytest.approx(trainer.schedule(10))
    assert trainer.flops == flops_before + 4 * 8 * 64 * grown.flops_per_token() > flops_before + 4 * 8 * 64 * old_fpt
    after = optimizer_state_by_name(trainer.model, trainer.optimizer)
    assert float(after["blocks.0.attn.q_proj.weight"]["step"]) == 10
    assert float(after["blocks.new.attn.q_proj.weight"]["step"]) == 4

    # A checkpoint of the grown run resumes with the grown model and the re-warmup state.
    trainer.save()
    resumed = Trainer.resume(tmp_path, data)
    assert resumed.model.block_keys == ["0", "1", "new"]
    assert resumed.rewarmup == trainer.rewarmup and resumed.lr == trainer.lr and resumed.flops == trainer.flops


def test_fit_callback_can_replace_the_model_mid_run(data, tmp_path):
    trainer = Trainer(micro_model(), fast_train_config(max_steps=8), data, out_dir=tmp_path)

    def grow_at_step_4(t: Trainer) -> None:
        if t.step == 4:
            state = optimizer_state_by_name(t.model, t.optimizer)
            t.replace_model(grow_one_block(t.model), optimizer_state=state, rewarmup_steps=2)

    summary = trainer.fit(on_step=grow_at_step_4)
    assert summary.step == 8 and math.isfinite(summary.val_loss)
    assert Trainer.resume(tmp_path, data).model.block_keys == ["0", "1", "new"]

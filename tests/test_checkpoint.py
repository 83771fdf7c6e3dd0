"""Checkpoints: bitwise round trip, safetensors + JSON only (no pickle), atomic replacement, clear errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

from transformer_grow.errors import ConfigError
from transformer_grow.train import (
    Trainer,
    load_checkpoint,
    load_optimizer_state_by_name,
    model_from_checkpoint,
    optimizer_state_by_name,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from transformer_grow.train.optim import build_optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro model after 3 AdamW steps (so every parameter has optimizer state)."""
    data, data_config = prepare_bytes_data(tmp_path_factory.mktemp("ckpt-data"))
    trainer = Trainer(micro_model(tie_embeddings=False, n_kv_head=2), fast_train_config(), data,
                      data_config=data_config)
    trainer.train_steps(3)
    return trainer


def forbid_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_round_trip_is_bitwise(trained, tmp_path, monkeypatch):
    ckpt = trained.checkpoint()
    save_checkpoint(tmp_path / "ck", ckpt)
    assert sorted(os.listdir(tmp_path / "ck")) == ["manifest.json", "model.safetensors", "optimizer.safetensors",
                                                   "state.json"]
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary directories left behind
    forbid_unpickling(monkeypatch)
    loaded = load_checkpoint(tmp_path / "ck")

    assert loaded.model_config == ckpt.model_config and loaded.block_keys == ckpt.block_keys == ["0", "1"]
    assert loaded.model_state.keys() == ckpt.model_state.keys()
    for name, tensor in ckpt.model_state.items():
        assert loaded.model_state[name].dtype == tensor.dtype and torch.equal(loaded.model_state[name], tensor), name
    names = {n for n, _ in trained.model.named_parameters()}
    assert set(loaded.optimizer_state) == set(ckpt.optimizer_state) == names
    for name, entry in ckpt.optimizer_state.items():
        assert set(loaded.optimizer_state[name]) == {"exp_avg", "exp_avg_sq", "step"}
        for key, value in entry.items():
            assert torch.equal(loaded.optimizer_state[name][key], value), (name, key)
    assert float(loaded.optimizer_state["blocks.1.attn.k_proj.weight"]["step"]) == 3
    assert loaded.train_state == json.loads(json.dumps(ckpt.train_state))
    assert loaded.train_state["step"] == 3 and loaded.train_state["data_fingerprint"] == trained.data.fingerprint

    model = model_from_checkpoint(loaded)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, trained.model.eval()(x).logits)
    trained.model.train()

    # Optimizer state keyed by name goes back into a fresh AdamW exactly.
    optimizer = build_optimizer(model, trained.config, torch.device("cpu"))
    load_optimizer_state_by_name(model, optimizer, loaded.optimizer_state)
    again = optimizer_state_by_name(model, optimizer)
    for name, entry in ckpt.optimizer_state.items():
        for key, value in entry.items():
            assert torch.equal(again[name][key], value), (name, key)


def test_optimizer_file_is_keyed_by_parameter_name(trained, tmp_path):
    from safetensors import safe_open

    save_checkpoint(tmp_path / "ck", trained.checkpoint())
    with safe_open(tmp_path / "ck" / "optimizer.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert {"blocks.1.attn.q_proj.weight.exp_avg", "blocks.1.attn.q_proj.weight.exp_avg_sq",
            "blocks.1.attn.q_proj.weight.step", "lm_head.weight.exp_avg"} <= keys


def test_overwrite_is_atomic_and_survives_an_interrupted_swap(trained, tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, trained.checkpoint())
    (tmp_path / ".ck.tmp-99999999-crashed").mkdir()  # what a writer (process 99999999, now dead) left behind
    newer = trained.checkpoint()
    newer.train_state["step"] = 4
    save_checkpoint(target, newer)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert load_checkpoint(target).train_state["step"] == 4
    # A crash between the two renames of the swap leaves only ".ck.old": it is still found.
    os.replace(target, tmp_path / ".ck.old")
    assert resolve_checkpoint_dir(target) == tmp_path / ".ck.old"
    assert load_checkpoint(target).train_state["step"] == 4


def test_run_directory_resolves_to_its_checkpoint(trained, tmp_path):
    trained.save(tmp_path / "run" / "checkpoint")
    assert resolve_checkpoint_dir(tmp_path / "run") == tmp_path / "run" / "checkpoint"


def test_missing_or_foreign_paths_raise_config_error_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint '.*nowhere' does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"'.*empty' is not a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "state.json").write_text('{"hello": 1}')
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'.*other' is not a transformer_grow checkpoint"):
        load_checkpoint(tmp_path / "other")


def test_load_optimizer_state_refuses_mismatched_names_and_shapes(trained):
    state = optimizer_state_by_name(trained.model, trained.optimizer)
    optimizer = build_optimizer(trained.model, trained.config, torch.device("cpu"))
    with pytest.raises(ValueError, match="'blocks.9.attn.q_proj.weight', which is not a parameter"):
        load_optimizer_state_by_name(trained.model, optimizer, {"blocks.9.attn.q_proj.weight": state["norm_f.weight"]})
    with pytest.raises(ValueError, match=r"norm_f.weight.exp_avg has shape \(64, 64\)"):
        load_optimizer_state_by_name(trained.model, optimizer,
                                     {"norm_f.weight": state["blocks.0.attn.q_proj.weight"]})


def test_json_results_are_strict_json_with_null_for_non_finite_floats(tmp_path):
    import json

    import numpy as np

    from transformer_grow.io import atomic_write_json

    path = atomic_write_json(tmp_path / "r.json", {"loss": float("nan"), "ci": [1.0, float("inf")],
                                                   "n": np.float64("-inf"), "ok": (2.5, np.float32(1.5))})

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"loss": None, "ci": [1.0, None], "n": None,
                                                                  "ok": [2.5, 1.5]}

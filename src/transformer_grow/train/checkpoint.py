"""Checkpoints: a directory of safetensors + JSON, written atomically, read without unpickling.

Layout of a checkpoint directory::

    model.safetensors      model state dict (fp32 parameters and persistent buffers)
    optimizer.safetensors  AdamW state keyed by parameter name: "<param>.exp_avg", "<param>.exp_avg_sq",
                           "<param>.step" (absent for a model-only checkpoint)
    state.json             format tag, model config, block keys, and the JSON-able train state
                           (step, tokens, flops, wall_seconds, train/data config, data fingerprint,
                           LR re-warmup state, RNG states, ...)

A training run directory holds its latest checkpoint in ``<run>/checkpoint`` next to
``metrics.jsonl``; :func:`load_checkpoint` accepts either the checkpoint directory or the run directory.

Writing: every file goes into a fresh temporary directory next to the target (each file fsynced),
which is then swapped in with :func:`transformer_grow.io.atomic_replace_dir`. A crash at any moment
leaves the previous checkpoint readable: either at the target path or, in the instant between the two
renames of the swap, at ``.<name>.old`` next to it, where :func:`resolve_checkpoint_dir` finds it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from transformer_grow.errors import ConfigError
from transformer_grow.io import atomic_replace_dir, atomic_save_safetensors, atomic_write_json, read_json
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import STATE_KEYS, load_optimizer_state_by_name, optimizer_state_by_name

__all__ = [
    "CHECKPOINT_DIRNAME", "Checkpoint", "load_checkpoint", "load_optimizer_state_by_name", "model_from_checkpoint",
    "optimizer_state_by_name", "read_checkpoint_meta", "resolve_checkpoint_dir", "save_checkpoint",
]

FORMAT = "transformer_grow.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIRNAME = "checkpoint"  # name of the checkpoint directory inside a run directory
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model and continue its training."""

    model_config: ModelConfig
    block_keys: list[str]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None  # param name -> {"exp_avg", "exp_avg_sq", "step"}
    train_state: dict[str, Any] = field(default_factory=dict)  # JSON-able


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flatten_optimizer_state(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    flat = {}
    for name, entry in state.items():
        for key in STATE_KEYS:
            flat[f"{name}.{key}"] = torch.as_tensor(entry[key])
    return flat


def _unflatten_optimizer_state(flat: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for full_name, tensor in flat.items():
        name, _, key = full_name.rpartition(".")
        if key not in STATE_KEYS or not name:
            raise ConfigError(f"{path} holds an unexpected optimizer entry {full_name!r}")
        state.setdefault(name, {})[key] = tensor
    for name, entry in state.items():
        if set(entry) != set(STATE_KEYS):
            raise ConfigError(f"{path}: optimizer state of {name!r} is incomplete ({sorted(entry)})")
    return state


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to directory ``path`` atomically (replacing an existing checkpoint there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left behind by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        atomic_save_safetensors(tmp / MODEL_FILE, ckpt.model_state, metadata={"format": "pt"})
        if ckpt.optimizer_state is not None:
            atomic_save_safetensors(tmp / OPTIMIZER_FILE, _flatten_optimizer_state(ckpt.optimizer_state),
                                    metadata={"format": "pt"})
        atomic_write_json(tmp / STATE_FILE, {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_config": ckpt.model_config.to_dict(),
            "block_keys": list(ckpt.block_keys),
            "train_state": ckpt.train_state,
        })
        _fsync_dir(tmp)
        atomic_replace_dir(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / MODEL_FILE).is_file()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory for ``path``: the path itself, or ``<path>/checkpoint`` of a run directory.

    Falls back to ``.<name>.old`` when a crash interrupted an atomic swap between its two renames.
    Raises :class:`ConfigError` naming ``path`` when there is no checkpoint.
    """
    path = Path(path)
    if not path.exists() and not path.with_name(f".{path.name}.old").exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    for candidate in (path, path / CHECKPOINT_DIRNAME):
        if _is_checkpoint_dir(candidate):
            return candidate
        old = candidate.with_name(f".{candidate.name}.old")
        if not candidate.exists() and _is_checkpoint_dir(old):
            return old
    raise ConfigError(f"{str(path)!r} is not a checkpoint: expected a directory holding {STATE_FILE} and "
                      f"{MODEL_FILE} (or a run directory holding {CHECKPOINT_DIRNAME}/)")


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the JSON part of a checkpoint (cheap): ``format``, ``model_config``, ``block_keys``, ``train_state``."""
    ckpt_dir = resolve_checkpoint_dir(path)
    try:
        meta = read_json(ckpt_dir / STATE_FILE)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{str(ckpt_dir / STATE_FILE)!r} is not a readable checkpoint state file: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{str(ckpt_dir)!r} is not a transformer_grow checkpoint "
                          f"(state.json has no format tag {FORMAT!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{str(ckpt_dir)!r} has checkpoint format version {meta['version']}; this library reads "
                          f"versions up to {FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors + JSON only; nothing is unpickled)."""
    ckpt_dir = resolve_checkpoint_dir(path)
    meta = read_checkpoint_meta(ckpt_dir)
    device = str(device)
    model_state = load_file(ckpt_dir / MODEL_FILE, device=device)
    optimizer_state = None
    if (ckpt_dir / OPTIMIZER_FILE).is_file():
        optimizer_state = _unflatten_optimizer_state(load_file(ckpt_dir / OPTIMIZER_FILE, device=device), ckpt_dir)
    return Checkpoint(
        model_config=ModelConfig.from_dict(meta["model_config"]),
        block_keys=[str(k) for k in meta["block_keys"]],
        model_state=model_state,
        optimizer_state=optimizer_state,
        train_state=meta.get("train_state", {}),
    )


def model_from_checkpoint(ckpt: Checkpoint) -> GPT:
    """Build the :class:`GPT` of ``ckpt`` with its weights (strict: every tensor must match)."""
    model = GPT(ckpt.model_config, block_keys=ckpt.block_keys)
    model.load_state_dict(ckpt.model_state, strict=True)
    return model

"""Checkpoints: a directory of safetensors + JSON, written atomically, read without unpickling.

Layout of a checkpoint directory::

    model.safetensors      model state dict (fp32 parameters and persistent buffers)
    optimizer.safetensors  AdamW state keyed by parameter name: "<param>.exp_avg", "<param>.exp_avg_sq",
                           "<param>.step" (absent for a model-only checkpoint)
    lr_multipliers.safetensors  per-element LR multipliers left by dynamics-preserving growth, keyed by
                           parameter name; metadata ``relax`` and ``steps_taken`` (absent when none)
    state.json             format tag, model config, block keys, and the JSON-able train state
                           (step, tokens, flops, wall_seconds, train/data config, data fingerprint,
                           LR re-warmup state, RNG states, ...)
    manifest.json          format version, model config, step, and every other file's size, content
                           hash and tensors (names, dtypes, shapes); verified before any load
                           (:mod:`transformer_grow.train.manifest`)

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from transformer_grow.errors import ConfigError
from transformer_grow.io import (
    DIR_MODE,
    atomic_replace_dir,
    atomic_write_bytes,
    atomic_write_json,
    holds_run_lock,
    json_text,
    process_alive,
    safetensors_bytes,
)
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import STATE_KEYS, load_optimizer_state_by_name, optimizer_state_by_name
from transformer_grow.train.manifest import MANIFEST_FILE, ManifestWriter, verify_checkpoint
from transformer_grow.train.optim import LRMultipliers

__all__ = [
    "CHECKPOINT_DIRNAME", "Checkpoint", "load_checkpoint", "load_optimizer_state_by_name", "model_from_checkpoint",
    "optimizer_state_by_name", "read_checkpoint_meta", "resolve_checkpoint_dir", "save_checkpoint",
]

FORMAT = "transformer_grow.checkpoint"
FORMAT_VERSION = 2  # 2: manifest.json with content hashes (version 1 is still read, without hashes)
CHECKPOINT_DIRNAME = "checkpoint"  # name of the checkpoint directory inside a run directory
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
MULTIPLIERS_FILE = "lr_multipliers.safetensors"


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model and continue its training."""

    model_config: ModelConfig
    block_keys: list[str]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None  # param name -> {"exp_avg", "exp_avg_sq", "step"}
    train_state: dict[str, Any] = field(default_factory=dict)  # JSON-able
    lr_multipliers: LRMultipliers | None = None  # after dynamics-preserving growth (train/optim.py)


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


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary checkpoint directories left by killed writers: all of them when this process
    holds the run directory's lock (no other writer can be at work), else only those of dead processes."""
    locked = holds_run_lock(path.parent)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name[len(f".{path.name}.tmp-"):].split("-")[0]
        if locked or (pid.isdigit() and not process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to directory ``path`` atomically (replacing an existing checkpoint there).

    Every file's size and content hash go into ``manifest.json``, written last (see
    :mod:`transformer_grow.train.manifest`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        os.chmod(tmp, DIR_MODE)  # mkdtemp creates 0700; a checkpoint gets the permissions of other outputs
        written = ManifestWriter()
        atomic_write_bytes(tmp / MODEL_FILE, written.add(MODEL_FILE, safetensors_bytes(
            ckpt.model_state, metadata={"format": "pt"})))
        if ckpt.optimizer_state is not None:
            atomic_write_bytes(tmp / OPTIMIZER_FILE, written.add(OPTIMIZER_FILE, safetensors_bytes(
                _flatten_optimizer_state(ckpt.optimizer_state), metadata={"format": "pt"})))
        if ckpt.lr_multipliers is not None:
            m = ckpt.lr_multipliers
            atomic_write_bytes(tmp / MULTIPLIERS_FILE, written.add(MULTIPLIERS_FILE, safetensors_bytes(
                m.multipliers, metadata={"format": "pt", "relax": str(m.relax), "steps_taken": str(m.steps_taken)})))
        state = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_config": ckpt.model_config.to_dict(),
            "block_keys": list(ckpt.block_keys),
            "train_state": ckpt.train_state,
        }
        state_text = json_text(state, indent=2) + "\n"
        atomic_write_bytes(tmp / STATE_FILE, written.add(STATE_FILE, state_text.encode("utf-8")))
        state = json.loads(state_text)  # as it will be read back (the manifest repeats its config and step)
        atomic_write_json(tmp / MANIFEST_FILE, written.manifest(tmp, FORMAT_VERSION, state["model_config"],
                                                                state["train_state"].get("step")))
        _fsync_dir(tmp)
        atomic_replace_dir(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_checkpoint_dir(path: Path) -> bool:
    # Either file marks a checkpoint; a damaged one (a file missing) is then refused by verification.
    return (path / STATE_FILE).is_file() or (path / MANIFEST_FILE).is_file()


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
    """The JSON part of a checkpoint: ``format``, ``model_config``, ``block_keys``, ``train_state``.

    The whole checkpoint is verified first (:func:`~transformer_grow.train.manifest.verify_checkpoint`:
    every file present, of its recorded size and content hash, the tensors fitting the model), so a
    damaged checkpoint is refused with one line before any work starts."""
    return verify_checkpoint(resolve_checkpoint_dir(path), FORMAT, FORMAT_VERSION)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors + JSON only; nothing is unpickled),
    after verifying it (see :func:`read_checkpoint_meta`). The one loader of eval, sample, grow and resume."""
    ckpt_dir = resolve_checkpoint_dir(path)
    meta = read_checkpoint_meta(ckpt_dir)
    device = str(device)
    try:
        model_state = load_file(ckpt_dir / MODEL_FILE, device=device)
        optimizer_state = None
        if (ckpt_dir / OPTIMIZER_FILE).is_file():
            optimizer_state = _unflatten_optimizer_state(load_file(ckpt_dir / OPTIMIZER_FILE, device=device),
                                                         ckpt_dir)
        lr_multipliers = None
        if (ckpt_dir / MULTIPLIERS_FILE).is_file():
            with safe_open(ckpt_dir / MULTIPLIERS_FILE, framework="pt") as f:
                info = f.metadata() or {}
            lr_multipliers = LRMultipliers(load_file(ckpt_dir / MULTIPLIERS_FILE), info.get("relax", "never"),
                                           int(info.get("steps_taken", 0)))
    except (SafetensorError, ValueError, OSError) as e:  # a checkpoint of format 1 (no hashes) can get here
        raise ConfigError(f"checkpoint {str(ckpt_dir)!r} could not be read ({' '.join(str(e).split())}); it is "
                          "damaged") from None
    return Checkpoint(
        model_config=ModelConfig.from_dict(meta["model_config"]),
        block_keys=[str(k) for k in meta["block_keys"]],
        model_state=model_state,
        optimizer_state=optimizer_state,
        train_state=meta.get("train_state", {}),
        lr_multipliers=lr_multipliers,
    )


def model_from_checkpoint(ckpt: Checkpoint) -> GPT:
    """Build the :class:`GPT` of ``ckpt`` with its weights (strict: every tensor must match)."""
    model = GPT(ckpt.model_config, block_keys=ckpt.block_keys)
    model.load_state_dict(ckpt.model_state, strict=True)
    return model

"""Checkpoint manifests: what a checkpoint directory must hold, checked before anything is loaded.

Every checkpoint written by :func:`~transformer_grow.train.checkpoint.save_checkpoint` ends with
``manifest.json``: the format version, the model config, the step, and for every other file its size
and BLAKE2b-256 content hash (computed from the bytes as they are written) plus, for safetensors
files, the name, dtype and shape of every tensor. :func:`verify_checkpoint` checks all of it, then
that the tensors fit the model the config describes, and refuses any mismatch, missing or extra
file or failed hash with one :class:`ConfigError` line naming the file and the problem: a truncated,
edited or bit-flipped checkpoint is never half-loaded, trained on or evaluated.

Checkpoints of format version 1 (written before manifests existed) are still read; they get the
structural checks (readable files, complete state, tensors that fit the model) but no hashes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformer_grow.errors import ConfigError, require
from transformer_grow.io import content_digest
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.optim_state import STATE_KEYS

MANIFEST_FILE = "manifest.json"
STATE_KEYS_REQUIRED = ("format", "version", "model_config", "block_keys", "train_state")
TRAIN_STATE_COUNTERS = ("step", "tokens", "flops")
_verified: dict[str, tuple] = {}  # checkpoint dir -> file stats when it was last verified (skip re-hashing)


def safetensors_header(data_or_path: bytes | Path, name: str) -> dict[str, dict[str, Any]]:
    """``{tensor: {"dtype", "shape"}}`` from a safetensors file's JSON header (nothing else is read)."""
    try:
        if isinstance(data_or_path, bytes):
            size = struct.unpack("<Q", data_or_path[:8])[0]
            header = data_or_path[8:8 + size]
        else:
            with open(data_or_path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                require(size <= os.fstat(f.fileno()).st_size, "header size beyond the end of the file")
                header = f.read(size)
        entries = json.loads(header.decode("utf-8"))
        return {key: {"dtype": str(value["dtype"]), "shape": [int(n) for n in value["shape"]]}
                for key, value in entries.items() if key != "__metadata__"}
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            AttributeError, ConfigError) as e:
        raise ConfigError(f"{name} is not a readable safetensors file ({e}); the checkpoint is corrupted") from None


@dataclass
class ManifestWriter:
    """Collects the manifest entry of each file as it is written."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> bytes:
        entry: dict[str, Any] = {"bytes": len(data), "blake2b": content_digest(data)}
        if name.endswith(".safetensors"):
            entry["tensors"] = safetensors_header(data, name)
        self.files[name] = entry
        return data

    def manifest(self, directory: Path, version: int, model_config: dict, step: Any) -> dict[str, Any]:
        """The manifest; any file in ``directory`` not added while writing is hashed now (read back)."""
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name not in self.files and path.name != MANIFEST_FILE:
                self.add(path.name, path.read_bytes())
        return {"format_version": version, "model_config": model_config, "step": step, "files": self.files}


def _fail(ckpt_dir: Path, name: str, problem: str) -> ConfigError:
    return ConfigError(f"checkpoint {str(ckpt_dir)!r}: {name} {problem}; the checkpoint is damaged and was not "
                       "loaded (resume from another checkpoint, or start the run again)")


def _read_json(ckpt_dir: Path, name: str) -> Any:
    try:
        data = (ckpt_dir / name).read_bytes()
    except FileNotFoundError:
        raise _fail(ckpt_dir, name, "is missing") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(ckpt_dir, name, f"is not valid JSON ({e})") from None


def _stats(ckpt_dir: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt_dir.iterdir() if p.is_file()))


def _check_files(ckpt_dir: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _fail(ckpt_dir, MANIFEST_FILE, "lists no files")
    for name in ("state.json", "model.safetensors"):
        if name not in files:
            raise _fail(ckpt_dir, MANIFEST_FILE, f"does not list {name}")
    present = {p.name for p in ckpt_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    for name in sorted(present - set(files) - {MANIFEST_FILE}):
        raise _fail(ckpt_dir, name, "is not listed in the manifest (a file from elsewhere?)")
    for name, entry in sorted(files.items()):
        if not isinstance(entry, dict) or Path(str(name)).name != name:
            raise _fail(ckpt_dir, MANIFEST_FILE, f"has a malformed entry for {name!r}")
        path = ckpt_dir / name
        if not path.is_file():
            raise _fail(ckpt_dir, name, "is missing (the manifest lists it)")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise _fail(ckpt_dir, name, f"has {size:,} bytes, the manifest records {entry.get('bytes')!r} "
                                        "(truncated or replaced)")
        if content_digest(path.read_bytes()) != entry.get("blake2b"):
            raise _fail(ckpt_dir, name, "fails its content hash (corrupted or edited)")
        if name.endswith(".safetensors") and safetensors_header(path, name) != entry.get("tensors"):
            raise _fail(ckpt_dir, name, "holds other tensors than the manifest lists")


def _check_state(ckpt_dir: Path, meta: Any, format_tag: str, max_version: int) -> None:
    if not isinstance(meta, dict) or meta.get("format") != format_tag:
        raise ConfigError(f"{str(ckpt_dir)!r} is not a transformer_grow checkpoint (state.json has no format tag "
                          f"{format_tag!r})")
    missing = [key for key in STATE_KEYS_REQUIRED if key not in meta]
    if missing:
        raise _fail(ckpt_dir, "state.json", f"lacks {', '.join(missing)}")
    version = meta["version"]
    if not isinstance(version, int) or version > max_version:
        raise ConfigError(f"{str(ckpt_dir)!r} has checkpoint format version {version!r}; this library reads "
                          f"versions up to {max_version}")
    state = meta["train_state"]
    if not isinstance(meta["model_config"], dict) or not isinstance(state, dict):
        raise _fail(ckpt_dir, "state.json", "has a malformed model_config or train_state")
    keys = meta["block_keys"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _fail(ckpt_dir, "state.json", "has malformed block_keys")
    for name in TRAIN_STATE_COUNTERS:
        value = state.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(ckpt_dir, "state.json", f"records {name}={value!r}; it must be an integer >= 0")
    wall = state.get("wall_seconds", 0.0)
    if not isinstance(wall, (int, float)) or not math.isfinite(wall) or wall < 0:
        raise _fail(ckpt_dir, "state.json", f"records wall_seconds={wall!r}")
    rng = state.get("rng")
    if rng and not (isinstance(rng, dict) and isinstance(rng.get("torch_cpu"), str)):
        raise _fail(ckpt_dir, "state.json", "records a malformed random-generator state (rng.torch_cpu)")
    for name in ("train_config", "data_config"):
        if state.get(name) is not None and not isinstance(state[name], dict):
            raise _fail(ckpt_dir, "state.json", f"records a malformed {name}")


def _check_tensors(ckpt_dir: Path, meta: dict[str, Any], files: set[str]) -> ModelConfig:
    """The tensors fit the model that state.json describes (names, shapes, dtypes)."""
    import torch

    try:
        config = ModelConfig.from_dict(meta["model_config"])
        with torch.device("meta"):
            expected = {k: v for k, v in GPT(config, block_keys=meta["block_keys"]).state_dict().items()}
    except (ConfigError, TypeError, ValueError) as e:
        raise _fail(ckpt_dir, "state.json", f"describes no valid model ({' '.join(str(e).split())})") from None
    found = safetensors_header(ckpt_dir / "model.safetensors", "model.safetensors")
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        detail = f"lacks {', '.join(missing[:3])}" if missing else f"has unexpected {', '.join(extra[:3])}"
        raise _fail(ckpt_dir, "model.safetensors", f"does not fit the model in state.json: it {detail}")
    for name, tensor in expected.items():
        if found[name]["shape"] != list(tensor.shape):
            raise _fail(ckpt_dir, "model.safetensors", f"does not fit the model in state.json: {name} has shape "
                                                        f"{found[name]['shape']}, the model needs {list(tensor.shape)}")
    if "optimizer.safetensors" in files:
        params = {name: list(p.shape) for name, p in expected.items()}
        for full_name, entry in safetensors_header(ckpt_dir / "optimizer.safetensors", "optimizer.safetensors").items():
            name, _, key = full_name.rpartition(".")
            shape_ok = key == "step" or params.get(name) == entry["shape"]
            if key not in STATE_KEYS or name not in params or not shape_ok:
                raise _fail(ckpt_dir, "optimizer.safetensors", f"holds {full_name} {entry['shape']}, which fits no "
                                                                "parameter of the model")
    return config


def verify_checkpoint(ckpt_dir: Path, format_tag: str, max_version: int) -> dict[str, Any]:
    """Check the checkpoint in ``ckpt_dir`` (see the module docstring); returns its parsed state.json."""
    ckpt_dir = Path(ckpt_dir)
    key = str(ckpt_dir.resolve())
    manifest_path = ckpt_dir / MANIFEST_FILE
    if manifest_path.is_file() and _verified.get(key) != _stats(ckpt_dir):
        manifest = _read_json(ckpt_dir, MANIFEST_FILE)
        if not isinstance(manifest, dict):
            raise _fail(ckpt_dir, MANIFEST_FILE, "is not a mapping")
        _check_files(ckpt_dir, manifest)
    meta = _read_json(ckpt_dir, "state.json")
    _check_state(ckpt_dir, meta, format_tag, max_version)
    if manifest_path.is_file():
        manifest = _read_json(ckpt_dir, MANIFEST_FILE)
        if manifest.get("step") != meta["train_state"].get("step") or manifest.get("model_config") != \
                meta["model_config"] or manifest.get("format_version") != meta["version"]:
            raise _fail(ckpt_dir, "state.json", "disagrees with the manifest (step, model config or version)")
        files = set(manifest["files"])
    elif meta["version"] >= 2:
        raise _fail(ckpt_dir, MANIFEST_FILE, "is missing")
    else:
        files = {p.name for p in ckpt_dir.iterdir() if p.is_file()}
    _check_tensors(ckpt_dir, meta, files)
    _verified[key] = _stats(ckpt_dir)
    return meta

"""Reading a Hugging Face model directory: untrusted input, checked before anything is built or loaded.

:func:`inspect_hf` reads a local ``save_pretrained`` directory without loading a weight: ``config.json``
(valid JSON, a class we convert, a config ``transformers`` and our :class:`ModelConfig` accept), the
safetensors headers (parsed here: a truncated or malformed file is named), and every tensor name,
shape and dtype against what the family's key map needs (:func:`expected_tensors`): a missing or
unexpected tensor or a wrong shape is refused, so ``from_pretrained`` never fills a gap with a random
initialisation that a certificate would then measure as "exact". :func:`load_hf` then loads with
``use_safetensors=True``: weights are safetensors only; a pickle (``pytorch_model.bin``) is refused,
never unpickled. Every refusal is one :class:`ConfigError` line naming the file and the value.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from torch import nn

from transformer_grow.errors import ConfigError, require
from transformer_grow.hf.convert import check_finite, key_map
from transformer_grow.hf.families import FAMILIES, REFUSED, SUPPORTED_CLASSES, Family
from transformer_grow.io import read_text_strict
from transformer_grow.model import GPT, ModelConfig

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER = 100 * 2**20  # a safetensors header is JSON; larger means a damaged length prefix


@dataclass
class HFDirectory:
    """What :func:`inspect_hf` read: the configs, the family and the weights' headers (nothing loaded)."""

    path: Path
    hf_class: str  # e.g. "LlamaForCausalLM"
    hf_config: Any  # the transformers config
    family: Family
    config: ModelConfig  # ours, as from_hf would build it
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # file tensor name -> (safetensors dtype, shape)
    weight_bytes: int  # bytes of tensor data in the weight files

    @property
    def bytes_per_param(self) -> int:
        """The widest floating-point dtype stored (what the loaded model holds per parameter)."""
        return max(FLOAT_DTYPES[dtype] for dtype, _ in self.tensors.values())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


# ---------------------------------------------------------------------------------- config
def read_hf_config(path: Path):
    """``(transformers config, class name)`` of the directory ``path``; one line for anything unreadable."""
    require(path.is_dir() and (path / "config.json").is_file(),
            f"{str(path)!r} is not a Hugging Face model directory (no config.json); give a local save_pretrained "
            "directory")
    file = path / "config.json"
    try:
        raw = json.loads(read_text_strict(file, "config.json"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(file)!r} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    require(isinstance(raw, dict), f"{str(file)!r} must hold a JSON object, not {type(raw).__name__}")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - untrusted file: transformers' own validation, any error type
        raise ConfigError(f"{str(file)!r} is not a config transformers accepts: {_one_line(e)}") from None
    archs = getattr(config, "architectures", None)
    require(isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs),
            f"{str(file)!r}: architectures={archs!r} must name the model class, e.g. [\"LlamaForCausalLM\"]; "
            f"supported: {', '.join(SUPPORTED_CLASSES)}")
    arch = archs[0]
    if arch not in SUPPORTED_CLASSES:
        why = f" ({REFUSED[arch]})" if arch in REFUSED else ""
        raise ConfigError(f"{arch} is not supported{why}; supported: {', '.join(SUPPORTED_CLASSES)}")
    return config, arch


def model_config_for(family: Family, hf_config, seq_len: int | None, where: str) -> ModelConfig:
    """Our :class:`ModelConfig` for an HF config (the family's refusals, and any malformed field, one line)."""
    try:
        return ModelConfig(**family.read_config(hf_config, seq_len))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as e:
        raise ConfigError(f"{where}: a field has a value of the wrong kind ({_one_line(e)})") from None


# --------------------------------------------------------------------------------- weights
def safetensors_header(file: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], int]:
    """``({name: (dtype, shape)}, data bytes)`` from a safetensors file's header, checked against the
    file's size (a truncated file is refused here, before any loader sees it)."""
    size = file.stat().st_size
    where = f"weights file {str(file)!r}"
    with open(file, "rb") as f:
        prefix = f.read(8)
        require(len(prefix) == 8, f"{where} is truncated: {size} bytes, not even a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        require(n <= min(MAX_HEADER, size - 8), f"{where} is truncated or not safetensors: its header claims {n:,} "
                                                f"bytes; the file holds {size:,}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"{where} is damaged or not safetensors: its header is not JSON") from None
    require(isinstance(header, dict), f"{where} is damaged: its header is not a JSON object")
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"]))
        require(ok, f"{where} is damaged: the header entry of tensor {name!r} is malformed")
        dtype = entry.get("dtype")
        require(dtype in FLOAT_DTYPES, f"{where}: tensor {name!r} is stored as {dtype!r}; only floating-point "
                                       f"weights are supported ({', '.join(FLOAT_DTYPES)})")
        start, stop = entry["data_offsets"]
        count = 1
        for d in entry["shape"]:
            count *= d
        require(stop - start == count * FLOAT_DTYPES[dtype],
                f"{where} is damaged: tensor {name!r} of shape {tuple(entry['shape'])} does not match its "
                f"{stop - start:,} bytes")
        tensors[name] = (dtype, tuple(entry["shape"]))
        spans.append((start, stop, name))
    data, end = size - 8 - n, max((stop for _, stop, _ in spans), default=0)
    require(end <= data, f"{where} is truncated: its header promises {end:,} bytes of tensor data, the file "
                         f"holds {data:,}")
    at = 0
    for start, stop, name in sorted(spans):  # the format: tensors tile the data exactly, no overlap, no gap
        require(start == at, f"{where} is damaged: tensor {name!r} starts at byte {start:,}, not {at:,}")
        at = stop
    require(at == data, f"{where} is damaged: {data - at:,} bytes follow the last tensor")
    return tensors, data


def weight_files(path: Path, arch: str) -> list[Path]:
    """The safetensors files of a directory (one file or an index's shards); pickles refused."""
    if (path / SINGLE).is_file():
        return [path / SINGLE]
    if (path / INDEX).is_file():
        try:
            index = json.loads(read_text_strict(path / INDEX, INDEX))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{str(path / INDEX)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        require(isinstance(weight_map, dict) and weight_map
                and all(isinstance(f, str) and f == Path(f).name and f.endswith(".safetensors")
                        for f in weight_map.values()),
                f"{str(path / INDEX)!r} is damaged: it needs a weight_map of tensor names to .safetensors files in "
                "the same directory")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        require(not missing, f"{str(path)!r}: shard(s) {', '.join(missing[:3])} named in {INDEX} are missing")
        return [path / s for s in shards]
    pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ConfigError(
            f"{str(path)!r} holds only pickled weights ({', '.join(pickles[:3])}), which tgrow never loads (unpickling "
            f"runs code); in an environment you trust, convert them to safetensors: transformers.{arch}."
            f"from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True) (transformers 5 writes "
            "safetensors by default)")
    raise ConfigError(f"{str(path)!r} has no weights: neither {SINGLE} nor {INDEX}; give a complete "
                      "save_pretrained directory")


def read_tensors(path: Path, arch: str) -> tuple[dict[str, tuple[str, tuple[int, ...]]], int]:
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    total = 0
    for file in weight_files(path, arch):
        found, size = safetensors_header(file)
        twice = sorted(set(found) & set(tensors))
        require(not twice, f"{str(path)!r}: tensor {', '.join(twice[:1])} is stored in more than one weight file")
        tensors.update(found)
        total += size
    require(tensors, f"{str(path)!r}: the weight files hold no tensors")
    return tensors, total


# --------------------------------------------------------------------------- the key map
def _revert(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names and shapes ``save_pretrained`` writes for ``state`` (transformers 5 stores MoE experts
    in the original per-expert layout and converts them when loading)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # pragma: no cover - no conversions in this transformers
        return state
    return revert_weight_conversion(model, dict(state))


def expected_tensors(hf_class: str, hf_config, family: Family, config: ModelConfig):
    """``(required, allowed, native)`` tensors, name -> shape: ``required`` are the file tensors the family's
    key map reads (every one of our parameters) as ``save_pretrained`` writes them; ``native`` the same
    under the model's own names (a file may store those instead); ``allowed`` adds what the HF class may
    also store (a tied head, an empty shared expert). Built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = getattr(transformers, hf_class)(hf_config)
        ours = GPT(config, block_keys=[str(i) for i in range(config.n_layer)])
    slots = key_map(config, ours.block_keys, family)
    state = model.state_dict()
    names = {slots[name].hf for name, _ in ours.named_parameters()}
    unknown = sorted(names - set(state))
    require(not unknown, f"{hf_class} has no tensor {', '.join(unknown[:1])} that our model needs: unsupported variant")
    required = {k: tuple(v.shape) for k, v in _revert(model, {n: state[n] for n in names}).items()}
    allowed = {k: tuple(v.shape) for k, v in _revert(model, state).items()}
    native = {n: tuple(state[n].shape) for n in names}
    return required, {**{k: tuple(v.shape) for k, v in state.items()}, **allowed}, native


def check_layer_count(where: str, tensors, family: Family, n_layer: int) -> None:
    """The layers the weights hold against config.json's count: cheap, before a model of that many layers
    is built (even on the meta device, thousands of layers take a while)."""
    prefixes = {piece.hf.split("{i}")[0] for piece in family.keys.values() if "{i}" in piece.hf}
    found = set()
    for name in tensors:
        for prefix in prefixes:
            index = name[len(prefix):].split(".", 1)[0] if name.startswith(prefix) else ""
            if index.isdigit():
                found.add(int(index))
    if found != set(range(n_layer)):
        held = sorted(found)
        text = ("none" if not held else f"0..{held[-1]}" if held == list(range(len(held)))
                else ", ".join(map(str, held[:6])) + (" ..." if len(held) > 6 else ""))
        raise ConfigError(f"{where}: config.json has {n_layer} layer(s); the weights hold layer(s) {text}")


def check_tensors(where: str, tensors: dict[str, tuple[str, tuple[int, ...]]], required: dict, allowed: dict,
                  native: dict) -> None:
    """Refuse a missing, unexpected or wrongly shaped tensor (one line, naming it)."""
    unexpected = sorted(set(tensors) - set(allowed))
    require(not unexpected, f"{where}: unexpected tensor(s) {', '.join(unexpected[:3])}"
                            f"{f' and {len(unexpected) - 3} more' if len(unexpected) > 3 else ''} in the weights: "
                            "not part of this model (another variant, or config.json does not fit them)")
    need = native if set(native) <= set(tensors) else required  # transformers 5's layout or the original
    missing = sorted(set(need) - set(tensors))
    require(not missing, f"{where}: tensor(s) {', '.join(missing[:3])}"
                         f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''} missing from the weights "
                         f"({len(missing)} of {len(need)} needed): the directory is incomplete")
    for name, (_, shape) in sorted(tensors.items()):
        want = need.get(name, allowed[name])
        require(shape == want, f"{where}: tensor {name} has shape {shape} in the weights; config.json needs {want}")


# ---------------------------------------------------------------------------- entry points
def inspect_hf(path: str | Path, seq_len: int | None = None) -> HFDirectory:
    """Check a Hugging Face model directory completely without loading a weight (module docstring)."""
    path = Path(path)
    hf_config, arch = read_hf_config(path)
    tensors, weight_bytes = read_tensors(path, arch)
    family = next(f for f in FAMILIES.values() if f.hf_class == arch)
    where = f"{str(path)!r}"
    config = model_config_for(family, hf_config, seq_len, f"{str(path / 'config.json')!r}")
    check_layer_count(where, tensors, family, config.n_layer)
    try:
        required, allowed, native = expected_tensors(arch, hf_config, family, config)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers builds the class from the untrusted config
        raise ConfigError(f"{str(path / 'config.json')!r}: transformers cannot build {arch} from it: "
                          f"{_one_line(e)}") from None
    check_tensors(where, tensors, required, allowed, native)
    return HFDirectory(path, arch, hf_config, family, config, tensors, weight_bytes)


def load_hf(path: str | Path | HFDirectory, seq_len: int | None = None) -> nn.Module:
    """A supported ``transformers`` LM (causal, or BERT's masked LM) from a local ``save_pretrained``
    directory, checked by :func:`inspect_hf` first (never a download, never a pickle); a weight that is
    NaN or inf is refused once loaded."""
    directory = path if isinstance(path, HFDirectory) else inspect_hf(path, seq_len)
    try:
        model = getattr(transformers, directory.hf_class).from_pretrained(
            directory.path, config=directory.hf_config, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
        raise ConfigError(f"{str(directory.path)!r} cannot be loaded: {_one_line(e)}") from None
    check_finite(model, f"{str(directory.path)!r} ({directory.hf_class})")
    return model

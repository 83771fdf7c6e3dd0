"""Option and configuration plumbing shared by the `tgrow` sub-commands.

Settings come, in increasing priority, from: the dataclass defaults, a preset (``--preset`` or
``preset:`` in the file), a YAML/JSON file (``--config FILE``) and the command-line flags. A config
file holds sections ``model``, ``train`` and ``data`` (plus any extra sections a command allows), or
flat keys that are sorted into sections by name (``vocab_size`` goes to ``data``: the model's
vocabulary follows the tokenizer). Keys use the dataclass field names (``n_layer``,
``tie_embeddings``, ``max_steps``...); dashes are accepted for underscores. Unknown keys are refused.

The model, train and data flags are generated from the dataclasses' fields (one flag per field, help
from the field documentation, see :mod:`transformer_grow.cli.flags`). Every flag's default is ``None``
("not given"), so a flag overrides a file or checkpoint value only when it is actually on the command
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transformer_grow.cli.flags import (
    ConfigFlags,
    DuplicateKeyError,
    dataclass_default,
    load_json,
    load_yaml,
    parse_count,
)
from transformer_grow.data import DataConfig
from transformer_grow.data.config import ENCODING_ERRORS, TOKEN_DTYPES, TOKENIZERS
from transformer_grow.device import resolve_autocast_dtype, resolve_device
from transformer_grow.errors import ConfigError, require
from transformer_grow.model import PRESETS, ModelConfig
from transformer_grow.model.config import MLPS, NORMS, POSITIONS, ROUTERS
from transformer_grow.train.config import DEVICES, DTYPES, SCHEDULES, TrainConfig

SECTIONS = ("model", "train", "data")


def _preset_notes() -> dict[str, str]:
    """Model fields a preset sets: their default is the preset's (the dataclass's without a preset)."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    names = sorted({name for settings in PRESETS.values() for name in settings})
    return {name: f"the preset's, else {dataclass_default(fields[name])}" for name in names}


# The model's vocabulary follows the tokenizer (the data's --vocab-size), hence --model-vocab-size.
MODEL_FLAGS = ConfigFlags(
    ModelConfig, "model (override the preset)", rename={"vocab_size": "model-vocab-size"},
    aliases={"tie_embeddings": ("--tie",)},
    choices={"norm": NORMS, "pos": POSITIONS, "mlp": MLPS, "moe_router": ROUTERS},
    default_notes={**_preset_notes(), "vocab_size": "the tokenizer's"})
TRAIN_FLAGS = ConfigFlags(TrainConfig, "training", choices={"schedule": SCHEDULES, "device": DEVICES, "dtype": DTYPES})
DATA_FLAGS = ConfigFlags(DataConfig, "data", choices={"tokenizer": TOKENIZERS, "token_dtype": TOKEN_DTYPES,
                                                      "encoding_errors": ENCODING_ERRORS})


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--preset NAME``."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file with sections model/train/data (or flat keys); flags override it")
    presets = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in p.items())}" for name, p in PRESETS.items())
    parser.add_argument("--preset", metavar="NAME", default=None,
                        help=f"model preset, refined by the model flags ({presets}); without one the ModelConfig "
                             "defaults apply (the same shape as tiny)")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(section: str, values: dict[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown {section} setting(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _normalise(d: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Dashes to underscores in the keys; one line if two spellings name one setting (``n-layer``, ``n_layer``)."""
    result: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for key, value in d.items():
        name = str(key).replace("-", "_")
        require(name not in result, f"config file {path!r}: setting {name!r} is given twice (as {spelled.get(name)!r} "
                                    f"and {key!r}); give each setting once")
        result[name], spelled[name] = value, key
    return result


def _coerce_numbers(cls, values: dict[str, Any]) -> dict[str, Any]:
    """Numbers that YAML read as strings become numbers: PyYAML (YAML 1.1) reads ``3e-4`` and ``1e6`` as
    text; counts may also be written ``10M``. Anything else is left for the config's own validation."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    result = dict(values)
    for key, value in values.items():
        if not isinstance(value, str) or key not in types:
            continue
        kind = types[key].split("|")[0].strip()
        try:
            if kind == "float":
                result[key] = float(value)
            elif kind == "int":
                result[key] = parse_count(value)
        except (ValueError, argparse.ArgumentTypeError):
            pass
    return result


def load_config_file(path: str, extra_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML/JSON config into ``{"preset": str|None, "model": {}, "train": {}, "data": {}, <extra>: {}}``."""
    file = Path(path)
    require(file.is_file(), f"config file {path!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
        raw = load_json(text) if file.suffix.lower() == ".json" else load_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"config file {path!r}: {e}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path!r} could not be read: {e}") from e
    raw = {} if raw is None else raw
    require(isinstance(raw, dict), f"config file {path!r} must hold a mapping of settings, not {type(raw).__name__}")
    raw = _normalise(raw, path)
    result: dict[str, Any] = {"preset": None, **{s: {} for s in (*SECTIONS, *extra_sections)}}
    allowed = {"model": _field_names(ModelConfig) | {"preset"}, "train": _field_names(TrainConfig),
               "data": _field_names(DataConfig)}
    section_class = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
    for key, value in raw.items():
        if key in result and key != "preset":  # a section
            require(isinstance(value, dict), f"config file {path!r}: section {key!r} must be a mapping")
            value = _normalise(value, path)
            if key in allowed:
                _check_keys(key, value, allowed[key], path)
            if key == "model" and "preset" in value:
                result["preset"] = value.pop("preset")
            result[key].update(value)
        elif key == "preset":
            result["preset"] = value
        elif key in allowed["data"]:
            result["data"][key] = value
        elif key in allowed["train"]:
            result["train"][key] = value
        elif key in allowed["model"]:
            result["model"][key] = value
        else:
            everything = sorted(set().union(*allowed.values()) | set(result))
            raise ConfigError(f"{path}: unknown setting {key!r}; allowed sections: "
                              f"{', '.join(repr(s) for s in result if s != 'preset')}, or flat keys: "
                              f"{', '.join(everything)}")
    for section, cls in section_class.items():
        result[section] = _coerce_numbers(cls, result[section])
    return result


@dataclass
class RunSetup:
    """Validated settings of a training run. The model's vocabulary is fixed once the data is known."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    vocab_size_given: bool  # the user set the model's vocab_size explicitly
    extra: dict[str, Any] = field(default_factory=dict)  # extra config-file sections

    def model_for(self, data: Any) -> ModelConfig:
        """The model config for ``data``: vocabulary from the tokenizer, ``seq_len`` checked against the data."""
        model = self.model
        if self.vocab_size_given:
            require(model.vocab_size >= data.vocab_size,
                    f"vocab_size={model.vocab_size} of the model is smaller than the data's vocabulary of "
                    f"{data.vocab_size} tokens; use vocab_size >= {data.vocab_size}")
        else:
            model = model.replace(vocab_size=int(data.vocab_size))
        data.check_seq_len(model.seq_len)
        return model


def check_device(train: TrainConfig) -> None:
    """Refuse a device or dtype this machine cannot run, before any data is prepared."""
    resolve_autocast_dtype(train.dtype, resolve_device(train.device))


def model_settings(args: argparse.Namespace, file: dict[str, Any]) -> dict[str, Any]:
    """Preset, then file ``model`` section, then model flags, merged into one dict of ModelConfig fields."""
    name = getattr(args, "preset", None) or file.get("preset")
    settings: dict[str, Any] = {}
    if name is not None:
        require(isinstance(name, str) and name in PRESETS,
                f"preset={name!r} is not allowed; choose one of {', '.join(map(repr, PRESETS))}")
        settings.update(PRESETS[name])
    settings.update(file.get("model", {}))
    settings.update(MODEL_FLAGS.given(args))
    return settings


def build_run_setup(args: argparse.Namespace, extra_sections: tuple[str, ...] = ()) -> RunSetup:
    """Validate every model, train and data setting from file + flags; raises :class:`ConfigError` first."""
    file = load_config_file(args.config, extra_sections) if getattr(args, "config", None) else \
        {"preset": None, **{s: {} for s in (*SECTIONS, *extra_sections)}}
    data = DataConfig(**{**file["data"], **DATA_FLAGS.given(args)})
    data.validate()
    train = TrainConfig.from_dict({**file["train"], **TRAIN_FLAGS.given(args)})
    train.validate()  # a budget is needed here (a TrainConfig alone may leave it to GrowthManager's budget=)
    check_device(train)
    settings = model_settings(args, file)
    vocab_given = "vocab_size" in settings
    if not vocab_given:  # placeholder until the tokenizer is known; replaced by RunSetup.model_for
        settings["vocab_size"] = 256 if data.tokenizer == "bytes" else data.vocab_size
    model = ModelConfig.from_dict(settings)
    return RunSetup(model=model, train=train, data=data, vocab_size_given=vocab_given,
                    extra={s: file[s] for s in extra_sections})


__all__ = [
    "DATA_FLAGS",
    "MODEL_FLAGS",
    "TRAIN_FLAGS",
    "RunSetup",
    "add_config_options",
    "build_run_setup",
    "check_device",
    "load_config_file",
    "model_settings",
    "parse_count",
]

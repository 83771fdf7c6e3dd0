"""Option and configuration plumbing shared by the `tgrow` sub-commands.

Settings come, in increasing priority, from: the dataclass defaults, a preset (``--preset`` or
``preset:`` in the file), a YAML/JSON file (``--config FILE``) and the command-line flags. A config
file holds sections ``model``, ``train`` and ``data`` (plus any extra sections a command allows), or
flat keys that are sorted into sections by name (``vocab_size`` goes to ``data``: the model's
vocabulary follows the tokenizer). Keys use the dataclass field names (``n_layer``,
``tie_embeddings``, ``max_steps``...); dashes are accepted for underscores. Unknown keys are refused.

Every flag's default is ``None`` ("not given"), so a flag overrides a file or checkpoint value only
when it is actually on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transformer_grow.data import DataConfig
from transformer_grow.device import resolve_autocast_dtype, resolve_device
from transformer_grow.errors import ConfigError, require
from transformer_grow.model import PRESETS, ModelConfig
from transformer_grow.train.config import TrainConfig

SECTIONS = ("model", "train", "data")
_COUNT = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgbt]?)\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """An integer count written as ``1000``, ``1e6``, ``10M``, ``2.5B`` or ``500k``."""
    match = _COUNT.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 1000, 1e6, 10M, 2.5B)")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _field_defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


_TRAIN_DEFAULTS = _field_defaults(TrainConfig)
_DATA_DEFAULTS = _field_defaults(DataConfig)

# (flag, field, argparse kwargs). Model defaults depend on the preset, so none are shown.
MODEL_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--n-layer", "n_layer", {"type": int, "help": "number of Transformer blocks"}),
    ("--d-model", "d_model", {"type": int, "help": "residual stream width"}),
    ("--n-head", "n_head", {"type": int, "help": "attention (query) heads; must divide d_model unless "
                                                "--head-dim is set"}),
    ("--n-kv-head", "n_kv_head", {"type": int, "help": "key/value heads (< n_head: grouped-query attention); "
                                                      "default n_head"}),
    ("--head-dim", "head_dim", {"type": int, "help": "width of one attention head; default d_model / n_head"}),
    ("--d-ff", "d_ff", {"type": int, "help": "feed-forward hidden width; default 4*d_model (gelu) or "
                                            "8/3*d_model rounded up to 64 (swiglu)"}),
    ("--seq-len", "seq_len", {"type": int, "help": "context length in tokens (training sequence length)"}),
    ("--norm", "norm", {"help": "normalisation: layernorm or rmsnorm"}),
    ("--pos", "pos", {"help": "position encoding: rope or learned"}),
    ("--mlp", "mlp", {"help": "feed-forward type: gelu or swiglu"}),
    ("--tie", "tie_embeddings", {"action": argparse.BooleanOptionalAction,
                                     "help": "tie the output head to the token embedding (--no-tie: separate head)"}),
    ("--bias", "bias", {"action": argparse.BooleanOptionalAction, "help": "biases in linear layers and LayerNorm"}),
    ("--dropout", "dropout", {"type": float, "help": "dropout probability in [0, 1)"}),
    ("--rope-base", "rope_base", {"type": float, "help": "RoPE base frequency"}),
]

TRAIN_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--batch-size", "batch_size", {"type": int, "help": "global batch: sequences per optimizer step"}),
    ("--grad-accum", "grad_accum", {"type": int, "help": "micro-batches per step (must divide the batch size)"}),
    ("--max-steps", "max_steps", {"type": parse_count, "help": "stop after this many optimizer steps"}),
    ("--max-tokens", "max_tokens", {"type": parse_count, "help": "stop after this many training tokens (e.g. 10M); "
                                                               "with --max-steps, whichever comes first"}),
    ("--lr", "lr", {"type": float, "help": "peak learning rate"}),
    ("--min-lr-ratio", "min_lr_ratio", {"type": float, "help": "final learning rate as a fraction of the peak"}),
    ("--warmup-steps", "warmup_steps", {"type": int, "help": "linear warmup steps"}),
    ("--schedule", "schedule", {"help": "learning-rate schedule: cosine, wsd (warmup-stable-decay) or constant"}),
    ("--decay-frac", "decay_frac", {"type": float, "help": "wsd: fraction of the steps spent decaying"}),
    ("--weight-decay", "weight_decay", {"type": float, "help": "AdamW weight decay (on matrices and embeddings only)"}),
    ("--beta1", "beta1", {"type": float, "help": "AdamW beta1"}),
    ("--beta2", "beta2", {"type": float, "help": "AdamW beta2"}),
    ("--grad-clip", "grad_clip", {"type": float, "help": "clip the global gradient norm to this (0: no clipping)"}),
    ("--eval-interval", "eval_interval", {"type": int, "help": "evaluate every N steps (0: only at the end)"}),
    ("--eval-windows", "eval_windows", {"type": int, "help": "number of fixed validation windows"}),
    ("--eval-batch-size", "eval_batch_size", {"type": int, "help": "windows per evaluation batch; default the "
                                                                  "micro-batch size"}),
    ("--log-interval", "log_interval", {"type": int, "help": "write a metrics record every N steps"}),
    ("--ckpt-interval", "ckpt_interval", {"type": int, "help": "checkpoint every N steps (0: only at the end)"}),
    ("--tensorboard", "tensorboard", {"action": argparse.BooleanOptionalAction,
                                          "help": "also log to TensorBoard in OUT/tensorboard (needs tensorboard)"}),
    ("--seed", "seed", {"type": int, "help": "seed of the model initialisation and the data order"}),
    ("--device", "device", {"help": "auto (CUDA, then MPS, then CPU), cpu, cuda or mps"}),
    ("--dtype", "dtype", {"help": "auto (bf16 autocast on CUDA, else fp32), fp32 or bf16 (bf16 on CPU is opt-in)"}),
    ("--compile", "compile", {"action": argparse.BooleanOptionalAction, "help": "torch.compile the model"}),
]

DATA_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--corpus", "corpus", {"help": "'stdlib' (the embedded corpus), a text file or directory, a .npy/.bin "
                                     "token file, or hf:NAME[:CONFIG[:SPLIT]]"}),
    ("--tokenizer", "tokenizer", {"help": "bpe (byte-level BPE trained on the corpus, cached) or bytes"}),
    ("--vocab-size", "vocab_size", {"type": int, "help": "BPE vocabulary size (the model's vocabulary follows it)"}),
    ("--val-fraction", "val_fraction", {"type": float, "help": "share of the corpus held out for validation"}),
    ("--cache-dir", "cache_dir", {"help": "cache of tokenizers and token arrays; default $TGROW_CACHE or "
                                           "~/.cache/transformer_grow"}),
    ("--token-dtype", "token_dtype", {"help": "element type of a raw .bin token file: uint16 or uint32"}),
]

MODEL_FLAG_FIELDS = [f for _, f, _ in MODEL_OPTIONS]
TRAIN_FLAG_FIELDS = [f for _, f, _ in TRAIN_OPTIONS]
DATA_FLAG_FIELDS = [f for _, f, _ in DATA_OPTIONS]


def _add_options(parser: argparse.ArgumentParser, title: str, options, defaults: dict[str, Any] | None) -> None:
    group = parser.add_argument_group(title)
    for flag, name, kwargs in options:
        kwargs = dict(kwargs)
        if defaults is not None and name in defaults and defaults[name] is not None:
            kwargs["help"] += f" (default: {defaults[name]})"
        group.add_argument(flag, dest=name, default=None, **kwargs)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--preset NAME``."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file with sections model/train/data (or flat keys); flags override it")
    presets = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in p.items())}" for name, p in PRESETS.items())
    parser.add_argument("--preset", metavar="NAME", default=None,
                        help=f"model preset, refined by the model flags ({presets}); without one the ModelConfig "
                             "defaults apply (the same shape as tiny)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, "model (override the preset)", MODEL_OPTIONS, None)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, "training", TRAIN_OPTIONS, _TRAIN_DEFAULTS)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, "data", DATA_OPTIONS, _DATA_DEFAULTS)


def flag_values(args: argparse.Namespace, fields: list[str]) -> dict[str, Any]:
    """The settings among ``fields`` given on the command line (non-``None``)."""
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(section: str, values: dict[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown {section} setting(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _normalise(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in d.items()}


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
        raw = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path!r} could not be read: {e}") from e
    raw = {} if raw is None else raw
    require(isinstance(raw, dict), f"config file {path!r} must hold a mapping of settings, not {type(raw).__name__}")
    raw = _normalise(raw)
    result: dict[str, Any] = {"preset": None, **{s: {} for s in (*SECTIONS, *extra_sections)}}
    allowed = {"model": _field_names(ModelConfig) | {"preset"}, "train": _field_names(TrainConfig),
               "data": _field_names(DataConfig)}
    section_class = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
    for key, value in raw.items():
        if key in result and key != "preset":  # a section
            require(isinstance(value, dict), f"config file {path!r}: section {key!r} must be a mapping")
            value = _normalise(value)
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
    settings.update(flag_values(args, MODEL_FLAG_FIELDS))
    return settings


def build_run_setup(args: argparse.Namespace, extra_sections: tuple[str, ...] = ()) -> RunSetup:
    """Validate every model, train and data setting from file + flags; raises :class:`ConfigError` first."""
    file = load_config_file(args.config, extra_sections) if getattr(args, "config", None) else \
        {"preset": None, **{s: {} for s in (*SECTIONS, *extra_sections)}}
    data = DataConfig(**{**file["data"], **flag_values(args, DATA_FLAG_FIELDS)})
    data.validate()
    train = TrainConfig.from_dict({**file["train"], **flag_values(args, TRAIN_FLAG_FIELDS)})
    check_device(train)
    settings = model_settings(args, file)
    vocab_given = "vocab_size" in settings
    if not vocab_given:  # placeholder until the tokenizer is known; replaced by RunSetup.model_for
        settings["vocab_size"] = 256 if data.tokenizer == "bytes" else data.vocab_size
    model = ModelConfig.from_dict(settings)
    return RunSetup(model=model, train=train, data=data, vocab_size_given=vocab_given,
                    extra={s: file[s] for s in extra_sections})


__all__ = [
    "DATA_FLAG_FIELDS",
    "MODEL_FLAG_FIELDS",
    "TRAIN_FLAG_FIELDS",
    "RunSetup",
    "add_config_options",
    "add_data_options",
    "add_model_options",
    "add_train_options",
    "build_run_setup",
    "check_device",
    "flag_values",
    "load_config_file",
    "model_settings",
    "parse_count",
]

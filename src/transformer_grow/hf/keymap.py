"""What a Hugging Face family is (:mod:`transformer_grow.hf.families`): :class:`Piece`, where one of
our tensors lives in an HF tensor, and :class:`Family`, a family's classes, key map and config mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import require
from transformer_grow.model import ModelConfig


@dataclass(frozen=True)
class Piece:
    """Where one of our tensors lives in an HF tensor: ``hf`` (a name template with ``{i}`` for the
    layer index), stored transposed (``Conv1D``), as row ``e`` of a stacked ``[E, ...]`` expert tensor,
    and/or as the ``part[0]``-th of ``part[1]`` equal chunks along the (output) dimension 0."""

    hf: str
    transpose: bool = False
    expert: bool = False
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Family:
    """One ``transformers`` family: its classes, key map and config mapping."""

    name: str
    hf_class: str  # e.g. "LlamaForCausalLM"
    config_class: str  # e.g. "LlamaConfig"
    keys: dict[str, Piece]  # our name template ({b}: block key, {e}: expert) -> HF piece
    read_config: Callable[[Any, int | None], dict[str, Any]]  # HF config, seq_len -> ModelConfig fields
    write_config: Callable[[ModelConfig, dict[str, Any]], dict[str, Any]]  # ours, source extras -> HF fields
    moe_family: str | None = None  # the family a model with experts is exported to
    zero_params: tuple[str, ...] = ()  # HF parameter suffixes without a counterpart in ours: exported as 0
    auto_class: str = "AutoModelForCausalLM"  # the transformers Auto class that loads a save_pretrained export
    untied_keys: tuple[tuple[str, Piece], ...] = ()  # entries of ``keys`` that differ when the head is untied
    architecture: tuple[tuple[str, str], ...] = (("norm", "rmsnorm"), ("pos", "rope"), ("mlp", "swiglu"))

    def check_exportable(self, config: ModelConfig) -> None:
        """:class:`ConfigError` unless a GPT of ``config`` has this family's architecture."""
        for name, value in self.architecture:
            require(getattr(config, name) == value, f"{self.hf_class} needs {name}={value!r}; this model has "
                                                    f"{name}={getattr(config, name)!r}")

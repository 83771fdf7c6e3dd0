"""The GPT-style model: typed config, presets, and the module itself."""

from transformer_grow.model.config import PRESETS, ModelConfig, preset
from transformer_grow.model.gpt import GPT, Block, ModelOutput

__all__ = ["GPT", "Block", "ModelConfig", "ModelOutput", "PRESETS", "preset"]

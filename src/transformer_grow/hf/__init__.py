"""Bring your own model: grow Hugging Face ``transformers`` models.

``from_hf(model) -> (GPT, FamilyInfo)`` converts a GPT-2, Llama, Mistral, Qwen2, Mixtral or Qwen2-MoE
causal LM, or a BERT masked LM (``BertForMaskedLM``: bidirectional, post-LayerNorm), into our
:class:`~transformer_grow.model.GPT` (native: every growth operator applies unchanged);
``to_hf(gpt, info)`` converts back (a model with experts goes to the family's MoE counterpart:
Llama/Mistral -> Mixtral, Qwen2 -> Qwen2-MoE). ``grow_hf`` grows one and certifies HF against HF,
``save_grown`` writes ``save_pretrained`` + ``growth_record.json``, ``target_for_size``
turns ``"7B"`` into a config. ``load_hf(path)`` reads a local directory after :func:`inspect_hf` checked it
(safetensors only; every tensor against the key map). Needs the ``hf`` extra (``transformers``).
"""

from transformer_grow.hf.convert import (
    FamilyInfo,
    config_from_hf,
    from_hf,
    hf_logits,
    loader_class,
    state_from_hf,
    state_to_hf,
    to_hf,
)
from transformer_grow.hf.families import FAMILIES, SUPPORTED_CLASSES, family_of
from transformer_grow.hf.grow import HFGrowth, grow_hf, save_grown
from transformer_grow.hf.load import HFDirectory, inspect_hf, load_hf
from transformer_grow.model.sizing import parse_size, target_for_size

__all__ = ["FAMILIES", "FamilyInfo", "HFDirectory", "HFGrowth", "SUPPORTED_CLASSES", "config_from_hf", "family_of",
           "from_hf", "grow_hf", "hf_logits", "inspect_hf", "load_hf", "loader_class", "parse_size", "save_grown",
           "state_from_hf", "state_to_hf", "target_for_size", "to_hf"]

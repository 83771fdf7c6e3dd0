"""Growth operators: grow a trained Transformer in depth, width, heads, FFN, context and experts.

Every operator returns a :class:`GrowthResult` ``(model, param_map, report)``: a new model (the
input is untouched), a :class:`ParamMap` saying where every new value came from (it also grows
optimizer state: :func:`grow_optimizer_state`), and a :class:`GrowthReport`
with the declared kind and the *measured* preservation on a probe batch. :func:`grow` derives the
sequence of operators from a target config (CompoundGrow). Models are reached through adapters
(:class:`ModelAdapter`; :class:`GPTAdapter` for our GPT).
"""

from transformer_grow.operators.adapter import GPTAdapter, ModelAdapter, adapter_for
from transformer_grow.operators.composite import grow, target_config
from transformer_grow.operators.depth import (
    NewBlock,
    duplicate,
    insert_random,
    insert_zero,
    interleave,
    layer_map,
    stack,
)
from transformer_grow.operators.dynamics import lr_multipliers
from transformer_grow.operators.heads_ffn import add_heads, grow_ffn
from transformer_grow.operators.ligo import LiGO, ligo
from transformer_grow.operators.map import DimMap, ParamMap, ParamSource
from transformer_grow.operators.moe import add_experts, upcycle
from transformer_grow.operators.noise import NoiseSpec
from transformer_grow.operators.optimizer import Handoff, grow_optimizer_state, handoff
from transformer_grow.operators.report import GrowthCertificateError, GrowthReport, GrowthResult
from transformer_grow.operators.sequence import grow_seq
from transformer_grow.operators.unshare import unshare
from transformer_grow.operators.width import clone, net2net, random_pad, zero_pad

__all__ = [
    "DimMap",
    "GPTAdapter",
    "GrowthCertificateError",
    "GrowthReport",
    "GrowthResult",
    "LiGO",
    "Handoff",
    "ModelAdapter",
    "NewBlock",
    "NoiseSpec",
    "ParamMap",
    "ParamSource",
    "adapter_for",
    "add_experts",
    "add_heads",
    "clone",
    "duplicate",
    "grow",
    "grow_ffn",
    "grow_optimizer_state",
    "grow_seq",
    "handoff",
    "insert_random",
    "insert_zero",
    "interleave",
    "layer_map",
    "ligo",
    "lr_multipliers",
    "net2net",
    "random_pad",
    "stack",
    "target_config",
    "unshare",
    "upcycle",
    "zero_pad",
]

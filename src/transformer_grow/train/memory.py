"""A rough estimate of the memory a run needs, checked before anything is allocated.

The sizes a user can type are bounded one by one (the config dataclasses' ``validate``); this adds
the check of their product: a model and batch whose estimated footprint exceeds the memory of the
device are refused with the estimate in the message, instead of failing inside an allocation
(or, on Linux, swapping the machine to a halt) after the data was prepared.

The estimate is deliberately simple and errs low, so that only settings that cannot possibly fit are
refused: fp32 weights, gradients and two AdamW moments (16 bytes per parameter), plus a lower bound on
the activations of one micro-batch kept for the backward pass, plus the fp32 logits of an evaluation
batch.
"""

from __future__ import annotations

import os

from transformer_grow.errors import ConfigError
from transformer_grow.model import ModelConfig

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
FP32 = 4


def estimate_parameters(model: ModelConfig) -> int:
    """Parameters of a model with ``model`` (embeddings included; norms and biases approximated)."""
    d = model.d_model
    attention = d * model.d_attn * 2 + d * model.d_kv * 2
    ffn = (3 if model.mlp == "swiglu" else 2) * d * model.d_ff
    if model.n_expert:
        ffn = ffn * model.n_expert + d * model.n_expert
    per_layer = attention + ffn + 4 * d
    embeddings = model.vocab_size * d * (1 if model.tie_embeddings else 2)
    positions = model.seq_len * d if model.pos == "learned" else 0
    return model.n_layer * per_layer + embeddings + positions + d


def activation_bytes(model: ModelConfig, sequences: int) -> int:
    """A lower bound on the activations of ``sequences`` sequences kept for the backward pass (fused
    attention assumed: no ``seq_len x seq_len`` scores), plus their logits and the logits' gradient."""
    tokens = sequences * model.seq_len
    experts = model.moe_top_k if model.n_expert else 1
    per_layer = tokens * (8 * model.d_model + 2 * model.d_ff * experts)
    logits = 2 * tokens * model.vocab_size
    return FP32 * (model.n_layer * per_layer + logits)


def available_memory_bytes(device: str) -> tuple[int, str] | None:
    """``(bytes, description)`` of the memory ``device`` offers, or ``None`` when it cannot be told."""
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory), "the GPU"
        if device == "cuda":
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):  # not every platform has these
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(estimate: int, what: str, device: str, advice: str) -> None:
    """Refuse ``estimate`` bytes when it exceeds the memory of ``device`` (message names both)."""
    available = available_memory_bytes(device)
    if available is not None and estimate > available[0]:
        raise ConfigError(f"{what} needs at least an estimated {_gib(estimate)}, more than the {_gib(available[0])} of "
                          f"{available[1]}; {advice}")


def check_training_memory(model: ModelConfig, train) -> None:
    """Refuse a model + batch (a :class:`~transformer_grow.train.config.TrainConfig`) that cannot fit."""
    params = estimate_parameters(model)
    eval_sequences = train.eval_batch_size or train.micro_batch_size
    estimate = (params * BYTES_PER_PARAMETER + activation_bytes(model, train.micro_batch_size)
                + FP32 * eval_sequences * model.seq_len * model.vocab_size)
    check_memory(estimate, f"training a {params:,}-parameter model on micro-batches of {train.micro_batch_size} x "
                           f"{model.seq_len} tokens", train.device,
                 "choose a smaller model (--n-layer, --d-model, --d-ff...) or micro-batch (--grad-accum)")


def check_eval_memory(model: ModelConfig, windows: int, batch_size: int, device: str) -> None:
    """Refuse an evaluation whose windows and batch logits cannot fit next to the model."""
    estimate = (estimate_parameters(model) * FP32 + 8 * windows * model.seq_len
                + FP32 * batch_size * model.seq_len * (model.vocab_size + 16 * model.d_model))
    check_memory(estimate, f"evaluating {windows:,} windows in batches of {batch_size:,}", device,
                 "use fewer --windows or a smaller --batch-size")

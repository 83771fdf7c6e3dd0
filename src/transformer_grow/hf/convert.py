"""Hugging Face model <-> our GPT, through a family's key map (:mod:`transformer_grow.hf.families`).

``from_hf(model) -> (GPT, FamilyInfo)`` and ``to_hf(gpt, info) -> PreTrainedModel`` move every tensor
(transposed, split or stacked as the key map says) and refuse, naming the parameter, any tensor one
side has and the other does not, so an unsupported variant cannot be converted silently. The same
map moves per-parameter tensors of any kind: :func:`state_from_hf` / :func:`state_to_hf` carry AdamW
moments keyed by HF parameter name (transposing, splitting and stacking commute with Adam's
element-wise moments).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.hf.families import (
    EXTRA_FIELDS,
    FAMILIES,
    TOKEN_FIELDS,
    Family,
    Piece,
    family_of,
)
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators.adapter import GPTAdapter
from transformer_grow.optim_state import StateByName

# Source config fields never carried to an export: derived per layer or by transformers itself.
_DROPPED_FIELDS = ("layer_types", "architectures", "transformers_version", "_name_or_path")


@dataclass
class FamilyInfo:
    """What :func:`to_hf` needs besides the GPT: the source family and its full HF config."""

    family: str  # key of FAMILIES, e.g. "llama"
    hf_class: str  # e.g. "LlamaForCausalLM"
    hf_config: dict[str, Any]  # the source model's config.to_dict()
    seq_len: int  # our seq_len: the context the conversion and growth are certified at
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "hf_class": self.hf_class, "hf_config": self.hf_config,
                "seq_len": self.seq_len, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilyInfo:
        return cls(d["family"], d["hf_class"], dict(d["hf_config"]), int(d["seq_len"]), list(d.get("notes", [])))

    @classmethod
    def new(cls, family: str, config: ModelConfig) -> FamilyInfo:
        """For exporting a GPT trained here (no HF source): the family's ``transformers`` defaults for
        every setting our config does not write (token ids, dropout of GPT-2's embeddings, ...)."""
        choice("family", family, tuple(FAMILIES))
        return cls(family, FAMILIES[family].hf_class, {}, config.seq_len)


# ------------------------------------------------------------------------------- key map
@dataclass(frozen=True)
class Slot:
    """One of our tensors inside one HF tensor: ``hf[expert]``, transposed, chunk ``part``."""

    hf: str
    transpose: bool
    expert: int | None
    part: tuple[int, int] | None


def key_map(config: ModelConfig, block_keys: list[str], family: Family) -> dict[str, Slot]:
    """Our parameter name -> its :class:`Slot`, for a model of ``config`` whose blocks are
    ``block_keys`` (HF layer ``i`` is our ``block_keys[i]``: stable ids map to positions)."""
    slots: dict[str, Slot] = {}

    def add(ours: str, piece: Piece, hf: str, expert: int | None) -> None:
        slots[ours] = Slot(hf, piece.transpose, expert, piece.part)

    templates = family.keys if config.tie_embeddings else {**family.keys, **dict(family.untied_keys)}
    for template, piece in templates.items():
        if "{b}" not in template:
            add(template, piece, piece.hf, None)
            continue
        for i, key in enumerate(block_keys):
            hf = piece.hf.format(i=i)
            if "{e}" in template:
                for e in range(config.n_expert):
                    add(template.format(b=key, e=e), piece, hf, e)
            else:
                add(template.format(b=key), piece, hf, None)
    return slots


def _take(tensor: torch.Tensor, slot: Slot) -> torch.Tensor:
    """Our tensor from the HF tensor of its slot."""
    if slot.expert is not None:
        tensor = tensor[slot.expert]
    if slot.transpose:
        tensor = tensor.t()
    if slot.part is not None:
        tensor = tensor.chunk(slot.part[1], dim=0)[slot.part[0]]
    return tensor


def tensors_from_hf(hf: dict[str, torch.Tensor], names: list[str], slots: dict[str, Slot]) -> dict[str, torch.Tensor]:
    """Our tensors ``names`` from HF tensors by HF name (views where possible)."""
    out = {}
    for name in names:
        require(name in slots, f"{name} has no place in the HF key map")
        slot = slots[name]
        require(slot.hf in hf, f"{slot.hf} (for our {name}) is missing from the HF tensors")
        out[name] = _take(hf[slot.hf], slot)
    return out


def tensors_to_hf(ours: dict[str, torch.Tensor], slots: dict[str, Slot]) -> dict[str, torch.Tensor]:
    """HF tensors by HF name, assembled from our tensors (chunks concatenated, experts stacked)."""
    groups: dict[str, list[tuple[Slot, torch.Tensor]]] = {}
    for name, tensor in ours.items():
        require(name in slots, f"our parameter {name} has no place in the HF key map")
        groups.setdefault(slots[name].hf, []).append((slots[name], tensor))
    out = {}
    for hf, members in groups.items():
        experts = sorted({s.expert for s, _ in members}, key=lambda e: -1 if e is None else e)
        stacked = []
        for e in experts:
            parts = sorted(((s, t) for s, t in members if s.expert == e), key=lambda m: m[0].part or (0, 1))
            n_parts = parts[0][0].part[1] if parts[0][0].part else 1
            require(len(parts) == n_parts, f"{hf}: {len(parts)} of {n_parts} parts given")
            tensor = torch.cat([t for _, t in parts], dim=0) if n_parts > 1 else parts[0][1]
            stacked.append(tensor.t() if parts[0][0].transpose else tensor)
        out[hf] = torch.stack(stacked) if experts != [None] else stacked[0]
    return out


# ---------------------------------------------------------------------------- conversion
def from_hf(model: nn.Module, seq_len: int | None = None) -> tuple[GPT, FamilyInfo]:
    """Our :class:`GPT` computing the same function as the ``transformers`` model ``model``, and the
    :class:`FamilyInfo` to convert it (grown or not) back with :func:`to_hf`.

    ``seq_len``: the context to certify at (RoPE families; default ``max_position_embeddings`` capped
    at :data:`~transformer_grow.hf.families.DEFAULT_ROPE_SEQ_LEN`); GPT-2 takes ``n_positions``.
    """
    family = family_of(model)
    fields = family.read_config(model.config, seq_len)
    config = ModelConfig(**fields)
    check_finite(model)
    keys = [str(i) for i in range(config.n_layer)]
    gpt = GPTAdapter().build(config, keys, like=model)
    hf = dict(model.named_parameters())
    slots = key_map(config, keys, family)
    ours = dict(gpt.named_parameters())
    used = {slots[name].hf for name in ours if name in slots}
    extra = [n for n, t in hf.items() if n not in used and t.numel() and not n.endswith(family.zero_params)]
    require(not extra, f"{type(model).__name__}: parameter(s) {', '.join(extra[:3])} have no counterpart in our model")
    with torch.no_grad():
        for name, tensor in tensors_from_hf(hf, list(ours), slots).items():
            require(tensor.shape == ours[name].shape,
                    f"{slots[name].hf}: shape {tuple(tensor.shape)} does not fit our {name} {tuple(ours[name].shape)}")
            ours[name].copy_(tensor)
    gpt.train(model.training)
    info = FamilyInfo(family.name, family.hf_class, model.config.to_dict(), config.seq_len)
    window = info.hf_config.get("sliding_window")
    if window is not None:
        info.notes.append(f"sliding_window={window} >= seq_len={config.seq_len}: full causal attention there")
    return gpt, info


@torch.no_grad()
def check_finite(model: nn.Module, where: str | None = None) -> None:
    """:class:`ConfigError` naming the first tensor of ``model`` that holds NaN or inf: such a model has
    no function to preserve, and any certificate measured on it would be meaningless."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConfigError(f"{where or type(model).__name__}: tensor {name} holds {bad:,} NaN or inf value(s); a "
                              "model with non-finite weights cannot be converted or certified (repair or re-export it)")


def config_from_hf(model: nn.Module, seq_len: int | None = None) -> ModelConfig:
    """The :class:`ModelConfig` :func:`from_hf` would build for ``model`` (refusals included), without
    building anything."""
    return ModelConfig(**family_of(model).read_config(model.config, seq_len))


def export_family(config: ModelConfig, info: FamilyInfo) -> Family:
    """The family a GPT of ``config`` is exported to: the source's, or its MoE counterpart."""
    family = FAMILIES[info.family]
    if config.share != "none":
        raise ConfigError(f"share={config.share!r}: transformers' {family.hf_class} stores every layer's weights; "
                          "unshare the model first (tgrow grow --method unshare, or grow(model, {'share': 'none'}, "
                          "method='unshare'))")
    if config.n_expert and family.moe_family is None:
        raise ConfigError(f"{family.hf_class} has no mixture-of-experts counterpart in transformers; "
                          f"experts can be exported for: "
                          + ", ".join(f.hf_class for f in FAMILIES.values() if f.moe_family))
    family = FAMILIES[family.moe_family] if config.n_expert else family
    family.check_exportable(config)
    return family


def loader_class(config: ModelConfig, info: FamilyInfo):
    """The ``transformers`` Auto class that loads the export of a GPT of ``config`` (``AutoModelForCausalLM``;
    ``AutoModelForMaskedLM`` for BERT)."""
    return getattr(transformers, export_family(config, info).auto_class)


def hf_config_for(config: ModelConfig, info: FamilyInfo):
    """The ``transformers`` config of the exported model: the source's settings (token ids, dropout,
    ...) with every size and architecture field written from ``config``."""
    family = export_family(config, info)
    source = info.hf_config
    if family.name == info.family:
        base = {k: v for k, v in source.items() if k not in _DROPPED_FIELDS}
    else:  # another class (dense -> MoE): only the tokenizer's ids carry over
        base = {k: source[k] for k in TOKEN_FIELDS if k in source}
    fields = family.write_config(config, {k: source.get(k) for k in EXTRA_FIELDS})
    config_class = getattr(transformers, family.config_class)
    try:
        return config_class.from_dict({**base, **fields, "architectures": [family.hf_class]})
    except (ValueError, TypeError) as e:  # transformers' own validation (e.g. Llama: heads must divide hidden)
        raise ConfigError(f"{family.config_class} cannot hold this model: {' '.join(str(e).split())}") from None


def _no_init():
    """Skip transformers' random init of a model whose every tensor we overwrite (when available)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def to_hf(gpt: GPT, info: FamilyInfo) -> nn.Module:
    """The ``transformers`` model (the source's class, or its MoE counterpart when ``gpt`` has experts)
    computing the same function as ``gpt``, on its device and dtype."""
    family = export_family(gpt.config, info)
    hf_config = hf_config_for(gpt.config, info)
    reference = next(gpt.parameters())
    with _no_init():
        model = getattr(transformers, family.hf_class)(hf_config)
    model.tie_weights()  # skipped with the init: ties lm_head to the embedding when the config says so
    model = model.to(device=reference.device, dtype=reference.dtype)
    slots = key_map(gpt.config, gpt.block_keys, family)
    tensors = tensors_to_hf(dict(gpt.named_parameters()), slots)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in tensors:
                require(tensors[name].shape == param.shape,
                        f"{name}: shape {tuple(tensors[name].shape)} does not fit {tuple(param.shape)}")
                param.copy_(tensors.pop(name))
            elif param.numel() and name.endswith(family.zero_params):
                param.zero_()
            else:
                require(not param.numel(), f"{family.hf_class} parameter {name} has no counterpart in our model")
    require(not tensors, f"{family.hf_class} has no parameter(s) {', '.join(list(tensors)[:3])}")
    model.train(gpt.training)
    return model


def hf_param_names(gpt: GPT, info: FamilyInfo) -> dict[str, str]:
    """Our parameter name -> the HF parameter holding it in ``to_hf(gpt, info)``."""
    slots = key_map(gpt.config, gpt.block_keys, export_family(gpt.config, info))
    return {name: slots[name].hf for name, _ in gpt.named_parameters()}


# ------------------------------------------------------------------------- optimizer state
def state_from_hf(state: StateByName, gpt: GPT, info: FamilyInfo) -> StateByName:
    """AdamW state keyed by HF parameter name (``optimizer_state_by_name(hf_model, opt)``) -> ours."""
    if not state:
        return {}
    slots = key_map(gpt.config, gpt.block_keys, FAMILIES[info.family])
    names = [n for n, _ in gpt.named_parameters() if slots[n].hf in state]
    moments = {k: tensors_from_hf({n: s[k] for n, s in state.items()}, names, slots) for k in ("exp_avg", "exp_avg_sq")}
    return {n: {"exp_avg": moments["exp_avg"][n].clone(), "exp_avg_sq": moments["exp_avg_sq"][n].clone(),
                "step": torch.as_tensor(state[slots[n].hf]["step"]).clone()} for n in names}


def state_to_hf(state: StateByName, gpt: GPT, info: FamilyInfo) -> StateByName:
    """Our AdamW state by name -> keyed by the parameter names of ``to_hf(gpt, info)``."""
    if not state:
        return {}
    slots = key_map(gpt.config, gpt.block_keys, export_family(gpt.config, info))
    out: StateByName = {}
    for key in ("exp_avg", "exp_avg_sq"):
        for hf, tensor in tensors_to_hf({n: s[key] for n, s in state.items()}, slots).items():
            out.setdefault(hf, {})[key] = tensor.contiguous()
    for name, entry in state.items():
        out[slots[name].hf]["step"] = torch.as_tensor(entry["step"]).clone()
    return out


@torch.no_grad()
def hf_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[B, T, vocab]`` of a ``transformers`` LM in eval mode (no cache; BERT: token types 0)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        logits = model(input_ids=tokens.to(param.device), use_cache=False).logits
    finally:
        model.train(was_training)
    return logits.float()

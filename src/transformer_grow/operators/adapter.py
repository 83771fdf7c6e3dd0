"""Architecture adapters: what growth operators need to know about a model family.

Operators never look inside a model directly. They ask an adapter for the model's config (as a
:class:`ModelConfig`), its block keys, how to build an empty model of a config, how to initialise
chosen parameters freshly, and the *axes* of every parameter: for each tensor dimension, which
logical axis it runs along and how the parameter uses it:

- ``"write"``: the dimension produces that axis (a linear's output rows, an embedding's columns);
- ``"read"``: the dimension consumes that axis (a linear's input columns);
- ``"norm"`` / ``"norm_bias"``: an elementwise norm weight / bias on that axis;
- ``"final_norm"`` / ``"final_norm_bias"``: the norm whose output the LM head reads (with a tied head
  it absorbs the head's read-side 1/k when width grows k-fold by cloning, HyperCloning, Samragh et al. 2024);
- ``None``: an axis that growth of that kind never changes (vocabulary).

Axes: ``model`` (d_model, the residual stream), ``q`` (query heads x head_dim, also the input of the
attention output projection), ``kv`` (key/value heads x head_dim), ``ffn`` (d_ff), ``pos`` (learned
positions), ``expert`` (router outputs), ``vocab``. Another family (Hugging Face GPT-2, Llama, BERT)
plugs in by implementing :class:`ModelAdapter`; operators need no new code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import nn

from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.layers import RotaryEmbedding

Axis = tuple[str, "str | None"]  # (axis name, use)


class ModelAdapter(ABC):
    """The interface growth operators use to read and build models of one family."""

    @abstractmethod
    def config(self, model: nn.Module) -> ModelConfig:
        """The model's architecture as a :class:`ModelConfig`."""

    @abstractmethod
    def block_keys(self, model: nn.Module) -> list[str]:
        """Stable ids of the Transformer blocks, in order."""

    @abstractmethod
    def block_prefix(self, key: str) -> str:
        """Parameter-name prefix of block ``key`` (e.g. ``"blocks.3."``)."""

    @abstractmethod
    def ffn_prefix(self, key: str, expert: int | None = None) -> str:
        """Prefix of the dense FFN of block ``key`` or of its expert number ``expert``."""

    @abstractmethod
    def router_name(self, key: str) -> str:
        """Name of the MoE router weight ``[n_expert, d_model]`` of block ``key``."""

    @abstractmethod
    def param_axes(self, name: str, config: ModelConfig) -> tuple[Axis, ...]:
        """One ``(axis, use)`` per dimension of parameter ``name``."""

    @abstractmethod
    def build(self, config: ModelConfig, block_keys: list[str], like: nn.Module) -> nn.Module:
        """A model of ``config`` on ``like``'s device and dtype; parameter values are uninitialised."""

    @abstractmethod
    def init_fresh(self, model: nn.Module, names: Iterable[str]) -> None:
        """Initialise parameters ``names`` of ``model`` as a freshly constructed model would."""

    @abstractmethod
    def logits_and_loss(
        self, model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, T, vocab]`` and mean next-token cross-entropy on a probe batch."""

    def tied_head(self, config: ModelConfig) -> bool:
        """Whether the output head shares the token embedding."""
        return config.tie_embeddings


# (module name, parameter name) -> axes, for our GPT. Block-level modules are matched on the last two
# components of the name, so dense FFNs and MoE experts share entries.
_GPT_AXES: dict[tuple[str, str], tuple[Axis, ...]] = {
    ("tok_emb", "weight"): (("vocab", None), ("model", "write")),
    ("pos_emb", "weight"): (("pos", None), ("model", "write")),
    ("lm_head", "weight"): (("vocab", None), ("model", "read")),
    ("norm_f", "weight"): (("model", "final_norm"),),
    ("norm_f", "bias"): (("model", "final_norm_bias"),),
    ("attn_norm", "weight"): (("model", "norm"),),
    ("attn_norm", "bias"): (("model", "norm_bias"),),
    ("mlp_norm", "weight"): (("model", "norm"),),
    ("mlp_norm", "bias"): (("model", "norm_bias"),),
    ("q_proj", "weight"): (("q", "write"), ("model", "read")),
    ("q_proj", "bias"): (("q", "write"),),
    ("k_proj", "weight"): (("kv", "write"), ("model", "read")),
    ("k_proj", "bias"): (("kv", "write"),),
    ("v_proj", "weight"): (("kv", "write"), ("model", "read")),
    ("v_proj", "bias"): (("kv", "write"),),
    ("o_proj", "weight"): (("model", "write"), ("q", "read")),
    ("o_proj", "bias"): (("model", "write"),),
    ("up_proj", "weight"): (("ffn", "write"), ("model", "read")),
    ("up_proj", "bias"): (("ffn", "write"),),
    ("gate_proj", "weight"): (("ffn", "write"), ("model", "read")),
    ("gate_proj", "bias"): (("ffn", "write"),),
    ("down_proj", "weight"): (("model", "write"), ("ffn", "read")),
    ("down_proj", "bias"): (("model", "write"),),
    ("router", "weight"): (("expert", "write"), ("model", "read")),
    ("router", "threshold"): (("expert", "write"),),  # top-any gate (DynMoE): one threshold per expert
    # Encoder (BERT) modules: token types, the embedding norm, the MLM head (mlm_head.dense/norm/bias).
    ("type_emb", "weight"): (("type", None), ("model", "write")),
    ("emb_norm", "weight"): (("model", "norm"),),
    ("emb_norm", "bias"): (("model", "norm_bias"),),
    ("dense", "weight"): (("model", "write"), ("model", "read")),
    ("dense", "bias"): (("model", "write"),),
    ("norm", "weight"): (("model", "final_norm"),),  # mlm_head.norm: the output weight reads it
    ("norm", "bias"): (("model", "final_norm_bias"),),
    ("mlm_head", "bias"): (("vocab", None),),
}

# Modules whose init depends on their parent (GPT.init_weights): residual projections get a scaled
# std from the enclosing attention/MLP, the MoE router its init from the MoE layer.
_PARENT_INIT = ("o_proj", "down_proj", "router")


class GPTAdapter(ModelAdapter):
    """Adapter for :class:`transformer_grow.model.GPT`."""

    def config(self, model: nn.Module) -> ModelConfig:
        return model.config

    def block_keys(self, model: nn.Module) -> list[str]:
        return model.block_keys

    def block_prefix(self, key: str) -> str:
        return f"blocks.{key}."

    def ffn_prefix(self, key: str, expert: int | None = None) -> str:
        return f"blocks.{key}.mlp." + ("" if expert is None else f"experts.{expert}.")

    def router_name(self, key: str) -> str:
        return f"blocks.{key}.mlp.router.weight"

    def param_axes(self, name: str, config: ModelConfig) -> tuple[Axis, ...]:
        parts = name.split(".")
        axes = _GPT_AXES.get((parts[-2], parts[-1])) if len(parts) >= 2 else None
        if axes is None:
            raise KeyError(f"GPTAdapter does not know the axes of parameter {name!r}")
        if parts[0] == "norm_f" and config.head == "mlm":  # the MLM head's dense reads it, not the output weight
            return tuple((axis, use.removeprefix("final_")) for axis, use in axes)
        return axes

    def build(self, config: ModelConfig, block_keys: list[str], like: nn.Module) -> nn.Module:
        reference = next(like.parameters())
        with torch.device("meta"):
            model = GPT(config, block_keys=block_keys)
        model = model.to(dtype=reference.dtype).to_empty(device=reference.device)
        if model.rope is not None:  # non-persistent buffers are not carried by to_empty: rebuild them
            model.rope = RotaryEmbedding(config).to(reference.device)
        model.train(like.training)
        return model

    def init_fresh(self, model: nn.Module, names: Iterable[str]) -> None:
        owners = sorted({name.rpartition(".")[0] for name in names})
        for owner_name in owners:
            owner = model.get_submodule(owner_name)
            if isinstance(owner, (nn.Linear, nn.Embedding)):
                model.init_weights(owner)
            else:  # norms initialise themselves (weight 1, bias 0)
                owner.reset_parameters()
            parent_name, _, leaf = owner_name.rpartition(".")
            if leaf in _PARENT_INIT:
                model.init_weights(model.get_submodule(parent_name))

    def logits_and_loss(self, model, tokens, targets):
        out = model(tokens, targets)
        return out.logits, out.loss


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s family; :class:`ConfigError` if none is known."""
    if isinstance(model, GPT):
        return GPTAdapter()
    raise ConfigError(
        f"no growth adapter for {type(model).__name__}; pass adapter=<a ModelAdapter> (known: GPT)"
    )

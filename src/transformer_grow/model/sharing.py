"""Cross-layer parameter sharing: which stored block each layer uses, and tying the layers to it.

A shared model has ``n_layer`` layers (computation) but only ``M = share_groups`` stored blocks
(parameters). Layer ``i`` uses stored block ``g(i)``; the strategies (``ModelConfig.share``):

- ``all``: every layer uses one block (ALBERT, Lan et al. 2020);
- ``sequence``: ``g(i) = floor(i / (N / M))``, consecutive layers share (Takase & Kiyono 2021,
  "Lessons on Parameter Sharing across Layers in Transformers", sec. 2);
- ``cycle``: ``g(i) = i mod M``, the stack of M blocks repeated (Takase & Kiyono 2021);
- ``cycle_rev``: ``cycle`` whose last M layers run in reverse order (Takase & Kiyono 2021, "Cycle (Rev)");
- ``middle_all`` / ``middle_sequence`` / ``middle_cycle``: the first and last layers keep blocks of
  their own and the ``N - 2`` middle layers share ``M - 2`` blocks by ``all`` / ``sequence`` /
  ``cycle`` (``middle_all`` is Subformer's sandwich sharing, Reid et al. 2021);
- ``custom``: an explicit assignment ``share_layers`` (what :mod:`transformer_grow.operators.share` chooses
  from a trained model's layer similarity).

What a layer shares with its group (``share_parts``): the whole block, only the attention, or only
the FFN; the pre-norms of a shared part are shared too unless ``share_norms`` is off (per-layer
norms). ``share_lora_rank = r > 0`` gives every layer of a group of two or more its own low-rank
delta on each shared linear, ``W_l = W_shared + B_l A_l`` (Relaxed Recursive Transformers, Bae et al.
2024, eq. 2; ``B_l`` starts at zero as in LoRA, Hu et al. 2021), at rank ``min(r, in, out)`` per
matrix. With LoRA, linear biases stay per layer: a low-rank delta cannot relax a bias.

Sharing is done by *tying*: every layer keeps its own modules (so a parameter name exists for every
layer), and the modules of a group's later layers hold the very ``nn.Parameter`` objects of its first
layer. Autograd then sums a shared weight's gradient over its uses; ``named_parameters()`` (which
drops duplicates, the first name wins) names every shared tensor once, as the first layer of its
group, which is also how optimizer state and parameter maps know it; ``state_dict()`` stores it
once (:func:`install`'s hooks). FLOPs are those of the unshared model: a layer computes whatever it
stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from transformer_grow.errors import choice, require

if TYPE_CHECKING:  # the config imports this module lazily (validation): no import cycle at run time
    from transformer_grow.model.config import ModelConfig

SHARE_STRATEGIES = ("none", "all", "sequence", "cycle", "cycle_rev", "middle_all", "middle_sequence",
                    "middle_cycle", "custom")
SHARE_PARTS = ("block", "attn", "ffn")
MAX_LORA_RANK = 4096
# Block-relative module prefixes of each part (model/gpt.py Block): the sublayer and its pre-norm.
PART_MODULES = {"attn": ("attn.", "attn_norm."), "ffn": ("mlp.", "mlp_norm.")}
NORM_PREFIXES = ("attn_norm.", "mlp_norm.")
# Settings of an unshared model (share="none" requires them, unshared_config() restores them).
UNSHARED = {"share": "none", "share_groups": None, "share_layers": None, "share_parts": "block",
            "share_norms": True, "share_lora_rank": 0}


# --------------------------------------------------------------------------- assignment
def canonical(groups: list[int]) -> list[int]:
    """Group ids renumbered in order of first use (``[1, 1, 0]`` -> ``[0, 0, 1]``): one spelling per
    sharing pattern, so equal configs build equal models."""
    first: dict[int, int] = {}
    return [first.setdefault(g, len(first)) for g in groups]


def strategy_groups(strategy: str, n_layer: int, n_groups: int) -> list[int]:
    """The stored block of every layer under ``strategy`` with ``n_groups`` blocks (module docstring)."""
    n, m = n_layer, n_groups
    if strategy == "none":
        return list(range(n))
    if strategy == "all":
        return [0] * n
    if strategy == "sequence":
        return [i * m // n for i in range(n)]  # floor(i / (N/M)) in integer arithmetic
    if strategy == "cycle":
        return [i % m for i in range(n)]
    if strategy == "cycle_rev":
        return canonical([i % m if i < n - m else m - 1 - (i - (n - m)) for i in range(n)])
    if strategy.startswith("middle_"):
        inner = strategy_groups(strategy[len("middle_"):], n - 2, m - 2)
        return [0, *(1 + g for g in inner), m - 1]
    raise ValueError(f"no layer assignment for share={strategy!r}")


def default_groups(strategy: str) -> int | None:
    """``share_groups`` where the strategy fixes it (``all``: 1, ``middle_all``: 3), else ``None``."""
    return {"all": 1, "middle_all": 3}.get(strategy)


def layer_groups(config: ModelConfig) -> list[int]:
    """The stored block (group id, numbered by first use) of every layer of ``config``."""
    if config.share == "custom":
        return list(config.share_layers)
    return strategy_groups(config.share, config.n_layer, config.share_groups or config.n_layer)


def check_sharing(config: ModelConfig) -> None:
    """Refuse (:class:`ConfigError`, one line) sharing settings that do not describe a model."""
    choice("share", config.share, SHARE_STRATEGIES)
    choice("share_parts", config.share_parts, SHARE_PARTS)
    require(isinstance(config.share_norms, bool), f"share_norms={config.share_norms!r} must be true or false")
    rank = config.share_lora_rank
    require(isinstance(rank, int) and not isinstance(rank, bool) and 0 <= rank <= MAX_LORA_RANK,
            f"share_lora_rank={rank!r} is not allowed; it must be an integer from 0 to {MAX_LORA_RANK}")
    if config.share == "none":
        for name, default in UNSHARED.items():
            require(getattr(config, name) == default,
                    f"{name}={getattr(config, name)!r} applies only to a shared model; set share to one of "
                    f"{', '.join(SHARE_STRATEGIES[1:])} (or leave {name} at {default!r})")
        return
    require(config.n_expert == 0, f"share={config.share!r} with n_expert={config.n_expert}: cross-layer sharing "
                                  "of mixture-of-experts models is not supported (use n_expert=0)")
    n, m = config.n_layer, config.share_groups
    require(isinstance(m, int) and not isinstance(m, bool),
            f"share={config.share!r} needs share_groups (the number of stored blocks), got {m!r}")
    layers = config.share_layers
    if config.share == "custom":
        require(isinstance(layers, list) and len(layers) == n
                and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in layers),
                f"share_layers={layers!r} must list the stored block (an integer >= 0) of each of the {n} layers")
        require(layers == canonical(layers), f"share_layers={layers} must number the blocks in order of first "
                                             f"use: {canonical(layers)}")
        require(m == max(layers) + 1, f"share_groups={m} disagrees with share_layers={layers} "
                                      f"({max(layers) + 1} blocks)")
        return
    require(layers is None, f"share_layers={layers!r} applies only to share='custom'")
    fixed = default_groups(config.share)
    if fixed is not None:
        require(m == fixed, f"share={config.share!r} stores {fixed} block(s); share_groups={m} is not allowed")
    least = 3 if config.share.startswith("middle_") else 1
    require(least <= m <= n, f"share_groups={m} is not allowed for share={config.share!r} with n_layer={n}; it "
                             f"must be from {least} to {n}")


def unshared_config(config: ModelConfig) -> ModelConfig:
    """``config`` with every layer storing its own weights (what unsharing grows a shared model into);
    the same as ``config.replace(share="none")``."""
    return config.replace(**UNSHARED)


# --------------------------------------------------------------------------- modules
class LoRALinear(nn.Linear):
    """``y = x W^T + b + (x A^T) B^T``: a (shared) linear plus this layer's rank-``r`` delta ``B A``
    (Relaxed Recursive Transformers, Bae et al. 2024, eq. 2). ``weight``/``bias`` are tied to the
    group's; ``lora_A`` [r, in] and ``lora_B`` [out, r] are this layer's own."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int):
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, rank))
        self.init_lora(0.02)

    @torch.no_grad()
    def init_lora(self, std: float) -> None:
        """LoRA init (Hu et al. 2021, sec. 4.1): ``A`` Gaussian, ``B`` zero, so ``B A = 0`` at start."""
        nn.init.normal_(self.lora_A, 0.0, std)
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def shares(config: ModelConfig, suffix: str) -> bool:
    """Whether block parameter ``suffix`` (e.g. ``attn.q_proj.weight``) is shared by a group."""
    parts = ("attn", "ffn") if config.share_parts == "block" else (config.share_parts,)
    if not any(suffix.startswith(prefix) for part in parts for prefix in PART_MODULES[part]):
        return False
    if suffix.endswith((".lora_A", ".lora_B")):  # every layer's own delta
        return False
    if suffix.startswith(NORM_PREFIXES):
        return config.share_norms
    return not (config.share_lora_rank and suffix.endswith(".bias"))  # LoRA: biases per layer


def lora_modules(config: ModelConfig, block: nn.Module) -> list[str]:
    """Block-relative names of the linears that carry a LoRA delta in a layer of a shared group."""
    if not config.share_lora_rank:
        return []
    return [name for name, module in block.named_modules()
            if isinstance(module, nn.Linear) and shares(config, f"{name}.weight")]


def tie_blocks(blocks: nn.ModuleDict, config: ModelConfig) -> None:
    """Give each layer of a group of two or more its LoRA linears (once) and tie the shared parameters
    of every layer to its group's first layer. Idempotent: :meth:`GPT._apply` re-ties after
    ``to_empty``/dtype changes that allocate parameters anew."""
    keys = list(blocks.keys())
    groups = layer_groups(config)
    first = {}
    for key, g in zip(keys, groups):
        first.setdefault(g, key)
    size = {g: groups.count(g) for g in set(groups)}
    for key, g in zip(keys, groups):
        if size[g] < 2:
            continue
        block = blocks[key]
        for name in lora_modules(config, block):
            linear = block.get_submodule(name)
            if not isinstance(linear, LoRALinear):
                rank = min(config.share_lora_rank, linear.in_features, linear.out_features)
                lora = LoRALinear(linear.in_features, linear.out_features, linear.bias is not None, rank)
                lora.to(device=linear.weight.device, dtype=linear.weight.dtype)
                owner, _, leaf = name.rpartition(".")
                setattr(block.get_submodule(owner), leaf, lora)
        if first[g] == key:
            continue
        source = blocks[first[g]]
        for suffix, _ in list(block.named_parameters()):
            if shares(config, suffix):
                owner, _, leaf = suffix.rpartition(".")
                setattr(block.get_submodule(owner), leaf, source.get_parameter(suffix))


# --------------------------------------------------------------------------- names and counts
def alias_names(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for every parameter name that is a second (third...) name of a tensor already
    named (``named_parameters`` keeps the first name; these are the rest)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def reused_params(model: nn.Module) -> int:
    """Parameters counted once more for every further use: what sharing saves in storage but not in
    compute (``flops_per_token`` adds it back)."""
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False)) - \
        sum(p.numel() for p in model.parameters())


def _drop_aliases(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for alias in alias_names(module):
        state_dict.pop(prefix + alias, None)


def _restore_aliases(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    for alias, name in alias_names(module).items():
        if prefix + alias not in state_dict and prefix + name in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + name]


def install(model: nn.Module) -> None:
    """Tie ``model.blocks`` per ``model.config`` and make ``state_dict()`` hold every shared tensor once
    (under its first name) while ``load_state_dict`` accepts that form (the other names are filled in)."""
    tie_blocks(model.blocks, model.config)
    model.register_state_dict_post_hook(_drop_aliases)
    model.register_load_state_dict_pre_hook(_restore_aliases)

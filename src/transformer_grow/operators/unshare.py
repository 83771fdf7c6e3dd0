"""Unsharing: a cross-layer-shared model grown into the full model that computes the same function.

Every layer of a shared model (:mod:`transformer_grow.model.sharing`) already computes with weights
of its own shape; they are only *stored* once per group. Unsharing gives every layer its own copy of
exactly the weights it used, so it is exact by construction:

- a tied parameter becomes one parameter per layer, each a copy of the group's tensor; the parameter
  map names the group's tensor by its first name, the one ``named_parameters()`` and the optimizer
  state use (:func:`unshare_plan`);
- with relaxed sharing (Bae et al. 2024, eq. 2) the layer's LoRA delta is folded in:
  ``W_l = W_shared + B_l A_l``; the grown model has no LoRA factors.

The grown model is therefore wider in storage, not in compute: its FLOPs per token equal the shared
model's minus the LoRA products (:meth:`~transformer_grow.model.GPT.flops_per_token`).

AdamW moments (:func:`~transformer_grow.operators.optimizer.grow_optimizer_state`) follow the map: every
layer's copy starts with the moments of the shared tensor. The shared tensor's gradient was the sum
of its uses' gradients (``k`` uses of similar gradient: about ``k`` times one layer's); Adam's update
``m / (sqrt(v) + eps)`` does not change when the gradient scale does (Kingma & Ba 2015, sec. 2.1), so
copying the moments unscaled continues each layer's update direction and size up to ``eps``. A
folded weight also starts from the shared tensor's moments: the moments of ``W + B A`` are not a
function of those of ``B`` and ``A`` (they are of the products' gradients, ``B^T g`` and ``g A^T``,
which do not determine ``g``), so the LoRA factors' moments are dropped.
"""

from __future__ import annotations

from torch import nn

from transformer_grow.errors import require
from transformer_grow.model import GPT
from transformer_grow.model.sharing import LoRALinear, alias_names, unshared_config
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.build import GrowthPlan, run_operator
from transformer_grow.operators.map import ParamMap, ParamSource
from transformer_grow.operators.report import GrowthResult

UNSHARE_METHODS = ("unshare",)


def lora_deltas(model: nn.Module) -> dict[str, tuple]:
    """``{weight name: (A, B)}`` for every LoRA linear of a relaxed-shared model."""
    return {f"{name}.weight": (module.lora_A, module.lora_B)
            for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def unshare_plan(model: nn.Module, adapter: ModelAdapter, *, seed: int = 0) -> GrowthPlan:
    """Every parameter name of the shared model (first names and aliases alike) becomes a parameter of
    the unshared model, copied from the tensor it names; LoRA factors are folded by ``finish``."""
    del seed  # nothing is drawn: the operator is deterministic
    require(isinstance(model, GPT), f"unsharing works on our GPT, not {type(model).__name__}")
    config = adapter.config(model)
    require(config.share != "none", "unshare: the model is not shared (share='none'); there is nothing to unshare")
    aliases = alias_names(model)
    deltas = lora_deltas(model)
    lora_names = {f"{weight[:-len('weight')]}{leaf}" for weight in deltas for leaf in ("lora_A", "lora_B")}
    entries = {
        name: ParamSource(tuple(param.shape), aliases.get(name, name))
        for name, param in model.named_parameters(remove_duplicate=False)
        if name not in lora_names
    }

    def fold(new: nn.Module, seed: int) -> None:
        del seed
        params = dict(new.named_parameters())
        for name, (a, b) in deltas.items():
            weight = params[name]
            weight.data.add_((b.detach().double() @ a.detach().double()).to(weight.device, weight.dtype))

    shared = len({id(p) for p in model.parameters()})
    notes = [f"unshared {config.share} sharing ({config.share_groups} stored blocks, parts={config.share_parts}) "
             f"into {config.n_layer} layers: {len(entries)} parameters from {shared - 2 * len(deltas)} stored ones"]
    if deltas:
        notes.append(f"folded {len(deltas)} rank-{config.share_lora_rank} LoRA deltas into their layers' weights "
                     "(W + B A); their AdamW moments are dropped, the weights start from the shared tensor's")
    return GrowthPlan("unshare", "exact", unshared_config(config), adapter.block_keys(model), ParamMap(entries),
                      options={"share": config.share, "share_groups": config.share_groups,
                               "share_parts": config.share_parts, "share_lora_rank": config.share_lora_rank},
                      notes=notes, finish=fold if deltas else None)


def unshare(model: nn.Module, **run) -> GrowthResult:
    """The full model of a shared ``model``: every layer its own copy of the weights it used (LoRA
    deltas folded in). Exact; the report certifies it on the probe (module docstring)."""
    run.setdefault("adapter", adapter_for(model))
    return run_operator(model, unshare_plan, **run)

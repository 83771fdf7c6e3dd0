"""The one place where grown models are built: every operator describes its growth as a
:class:`GrowthPlan` (new config, block keys, parameter map, declared kind) and calls :func:`execute`.

Building costs O(parameters): the new model is allocated without initialisation (meta device, then
``to_empty``), only parameters that contain fresh entries are initialised, and every other value is
written once from the parameter map. Peak memory is the old model, the new model and one temporary
tensor the size of the largest parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformer_grow.distributed.guard import ensure_unwrapped
from transformer_grow.grow.adapter import ModelAdapter, adapter_for
from transformer_grow.grow.map import ParamMap
from transformer_grow.grow.noise import NoiseSpec, add_noise
from transformer_grow.grow.report import GrowthReport, GrowthResult, check_probe, default_probe, measure
from transformer_grow.model import ModelConfig


@dataclass
class GrowthPlan:
    """What an operator decided, before anything is built."""

    method: str
    kind: str
    config: ModelConfig
    block_keys: list[str]
    param_map: ParamMap
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    noise: NoiseSpec = field(default_factory=NoiseSpec)


@torch.no_grad()
def materialize(
    new: nn.Module, old: nn.Module, param_map: ParamMap, adapter: ModelAdapter, seed: int
) -> None:
    """Write every parameter of ``new`` from ``old`` through ``param_map``; fresh entries get the
    model's own initialisation under ``seed``, zero-filled entries zeros."""
    old_params = dict(old.named_parameters())
    new_params = dict(new.named_parameters())
    if set(new_params) != set(param_map):
        missing = sorted(set(new_params) ^ set(param_map))
        raise RuntimeError(f"parameter map and grown model disagree on {missing[:5]}")
    fresh = [n for n, e in param_map.items() if e.fill == "fresh" and e.kind in ("new", "partial")]
    device = next(new.parameters()).device  # fresh values are seeded without touching the global RNG
    fork = {"devices": []} if device.type == "cpu" else {"device_type": device.type}
    with torch.random.fork_rng(**fork):
        torch.manual_seed(seed)
        adapter.init_fresh(new, fresh)
    for name, param in new_params.items():
        entry = param_map[name]
        if entry.source is None:
            if entry.fill == "zeros":
                param.zero_()
            continue
        source = old_params[entry.source]
        if entry.kind == "copy":
            param.copy_(source)
            continue
        fresh_rows = entry.kind == "partial" and entry.fill == "fresh"
        # A new tensor that becomes the parameter's storage: each value is written once.
        values = entry.apply(source, zero_new=not fresh_rows)
        if fresh_rows:  # the fresh initialisation into the new rows only
            for dim, d in enumerate(entry.dims):
                if d is not None and d.has_new():
                    rows = d.new_positions.to(param.device)
                    values.index_copy_(dim, rows, param.detach().index_select(dim, rows).to(values.dtype))
        param.data = values.to(dtype=param.dtype)


def probe_for(config: ModelConfig, probe) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    """The probe batch (validated, or the seeded default) and its description for the report."""
    if probe is None:
        batch = default_probe(config.vocab_size, config.seq_len)
        return batch, {"source": "seeded random", "shape": list(batch[0].shape)}
    batch = check_probe(probe, config.vocab_size, config.seq_len)
    return batch, {"source": "given", "shape": list(batch[0].shape)}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def execute(
    model: nn.Module,
    plan: GrowthPlan,
    adapter: ModelAdapter,
    *,
    seed: int = 0,
    probe=None,
    measure_preservation: bool = True,
) -> GrowthResult:
    """Build the grown model of ``plan`` from ``model`` (left untouched), add the plan's noise, and
    measure preservation on the probe batch."""
    old_config = adapter.config(model)
    batch, probe_info = probe_for(old_config, probe)
    new = adapter.build(plan.config, plan.block_keys, like=model)
    materialize(new, model, plan.param_map, adapter, seed)
    add_noise(new, plan.param_map, plan.noise)
    report = GrowthReport(
        method=plan.method,
        kind=plan.kind,
        old_config=old_config.to_dict(),
        new_config=plan.config.to_dict(),
        old_params=num_params(model),
        new_params=num_params(new),
        options=dict(plan.options),
        probe=probe_info,
        map_summary=plan.param_map.summary(),
        notes=list(plan.notes),
    )
    if measure_preservation:
        fill_measurement(report, adapter, model, new, batch)
    return GrowthResult(new, plan.param_map, report)


def fill_measurement(
    report: GrowthReport, adapter: ModelAdapter, old: nn.Module, new: nn.Module, batch
) -> None:
    for key, value in measure(adapter, old, new, batch).items():
        setattr(report, key, value)


def kind_with_noise(kind: str, noise: NoiseSpec) -> str:
    """Plain noise makes an exact operator approximate; cancelling noise keeps it exact."""
    return "approximate" if kind == "exact" and noise.mode == "plain" and noise.std > 0 else kind


def run_operator(
    model: nn.Module,
    make_plan,
    *,
    adapter: ModelAdapter | None = None,
    seed: int = 0,
    probe=None,
    measure: bool = True,
    **options,
) -> GrowthResult:
    """Shared driver of the single-dimension operators: plan (all checks, nothing built), then execute."""
    ensure_unwrapped(model)  # never grow under a live DDP/FSDP wrapper: it would miss the new parameters
    adapter = adapter or adapter_for(model)
    plan = make_plan(model, adapter, seed=seed, **options)
    return execute(model, plan, adapter, seed=seed, probe=probe, measure_preservation=measure)

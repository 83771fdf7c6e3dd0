"""The one place where grown models are built: every operator describes its growth as a
:class:`GrowthPlan` (new config, block keys, parameter map, declared kind) and calls :func:`execute`.

Building costs O(parameters): the new model is allocated without initialisation (meta device, then
``to_empty``), only parameters that contain fresh entries are initialised, and every other value is
written once from the parameter map. Peak memory is the old model, the new model and one temporary
tensor the size of the largest parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformer_grow.distributed.guard import ensure_unwrapped
from transformer_grow.errors import require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.map import ParamMap
from transformer_grow.operators.noise import NoiseSpec, add_noise
from transformer_grow.operators.report import (
    EXACT_TOL,
    GrowthReport,
    GrowthResult,
    certify,
    check_probe,
    default_probe,
    loss_at_length,
    measure,
)


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
    # Seeded in-place adjustment of the built model after the map and the noise (``finish(model, seed)``),
    # e.g. the symmetry-breaking jitter of a zero router (operators/moe.py).
    finish: Callable[[nn.Module, int], None] | None = None


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


@dataclass
class Probe:
    """The batch a growth is measured on, validated against the old model.

    ``batch`` is ``(x, y)`` for comparing old and new model (at most the old ``seq_len``; by default
    exactly it), ``windows`` the caller's token windows when given as one tensor (they may be longer:
    context growth then also evaluates the grown model at its new length), ``info`` what the report says.
    """

    batch: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any]
    windows: torch.Tensor | None = None

    def at_length(self, config: ModelConfig, seq_len: int) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
        """A batch at ``seq_len`` (> the old length) for the grown model: the caller's windows when they
        are long enough, else seeded random tokens."""
        if self.windows is not None and self.windows.shape[1] >= seq_len + 1:
            w = self.windows[:, : seq_len + 1]
            return (w[:, :-1].long(), w[:, 1:].long()), "given"
        return default_probe(config.vocab_size, seq_len), "seeded random"


def probe_for(config: ModelConfig, probe) -> Probe:
    """The probe (validated, or seeded random tokens at the full ``seq_len``) and its description.

    ``probe``: ``None``, a pair ``(x, y)`` or a ``[batch, time + 1]`` tensor of token windows (see
    :func:`~transformer_grow.operators.report.check_probe`). A probe shorter than ``seq_len`` certifies only
    the positions it covers: the report says so.
    """
    if probe is None:
        batch = default_probe(config.vocab_size, config.seq_len)
        source = "seeded random"
        windows = None
    else:
        batch = check_probe(probe, config.vocab_size, config.seq_len)
        source = "given"
        windows = probe if isinstance(probe, torch.Tensor) else None
    length = batch[0].shape[1]
    info = {"source": source, "shape": list(batch[0].shape), "full_length": length == config.seq_len}
    return Probe(batch, info, windows)


def probe_notes(probe: Probe, config: ModelConfig) -> list[str]:
    length = probe.batch[0].shape[1]
    if length == config.seq_len:
        return []
    return [
        f"the probe covers positions 0..{length - 1} of seq_len={config.seq_len}: "
        "later positions are not measured"
    ]


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
    exact_tol: float | None = EXACT_TOL,
) -> GrowthResult:
    """Build the grown model of ``plan`` from ``model`` (left untouched), add the plan's noise, and
    measure preservation on the probe (checking a declared ``exact`` against ``exact_tol``)."""
    old_config = adapter.config(model)
    probe = probe if isinstance(probe, Probe) else probe_for(old_config, probe)
    new = adapter.build(plan.config, plan.block_keys, like=model)
    materialize(new, model, plan.param_map, adapter, seed)
    add_noise(new, plan.param_map, plan.noise)
    if plan.finish is not None:
        plan.finish(new, seed)
    report = GrowthReport(
        method=plan.method,
        kind=plan.kind,
        old_config=old_config.to_dict(),
        new_config=plan.config.to_dict(),
        old_params=num_params(model),
        new_params=num_params(new),
        options=dict(plan.options),
        probe=dict(probe.info),
        map_summary=plan.param_map.summary(),
        notes=list(plan.notes),
    )
    if measure_preservation:
        fill_measurement(report, adapter, model, new, probe, exact_tol)
    return GrowthResult(new, plan.param_map, report)


def fill_measurement(
    report: GrowthReport,
    adapter: ModelAdapter,
    old: nn.Module,
    new: nn.Module,
    probe: Probe,
    exact_tol: float | None = EXACT_TOL,
) -> None:
    """Measure old vs new on the probe (fp32, eval), evaluate the grown model at its new length after
    context growth, and check the declared kind (raises :class:`GrowthCertificateError`)."""
    old_config, new_config = adapter.config(old), adapter.config(new)
    for key, value in measure(adapter, old, new, probe.batch).items():
        setattr(report, key, value)
    report.notes.extend(probe_notes(probe, old_config))
    if new_config.seq_len > old_config.seq_len:  # the new positions have no old model to compare with
        batch, source = probe.at_length(new_config, new_config.seq_len)
        loss = loss_at_length(adapter, new, batch)
        report.probe["new_length"] = {"source": source, "shape": list(batch[0].shape), "loss_new": loss}
        report.notes.append(
            f"grown model at its new seq_len={new_config.seq_len}: loss {loss:.4f} ({source} tokens)"
        )
        if exact_tol is not None:
            require(math.isfinite(loss), f"{report.method}: loss {loss} at the new seq_len is not finite")
    certify(report, exact_tol)


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
    exact_tol: float | None = EXACT_TOL,
    **options,
) -> GrowthResult:
    """Shared driver of the single-dimension operators: plan (all checks, nothing built), then execute.

    ``probe``: ``None`` (seeded random tokens at the full seq_len), a pair ``(x, y)`` or a tensor of
    token windows (real validation data: pass it when you have it). ``exact_tol``: the declared-exact
    check (``None``: measure without checking)."""
    ensure_unwrapped(model)  # never grow under a live DDP/FSDP wrapper: it would miss the new parameters
    adapter = adapter or adapter_for(model)
    probe = probe_for(adapter.config(model), probe)  # validated before anything is built
    plan = make_plan(model, adapter, seed=seed, **options)
    return execute(
        model, plan, adapter, seed=seed, probe=probe, measure_preservation=measure, exact_tol=exact_tol
    )

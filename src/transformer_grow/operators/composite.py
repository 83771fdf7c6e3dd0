"""CompoundGrow: grow a model to a target config as a sequence of single-dimension operators.

``grow(model, target, method=None, *, depth=..., width=..., heads=..., ffn=..., seq=..., experts=...)``
reads the difference between the model's config and ``target`` and applies, in this order:

==========  =================================================  ==========================================
dimension   choices (default first)                            changes
==========  =================================================  ==========================================
share       unshare (a shared model; always first, exact)      share -> none (operators/unshare.py)
width       clone, net2net, zero_pad, random_pad               d_model (clone also heads x k, d_ff x k
                                                               where the target has room)
heads       zero                                               n_head, n_kv_head
ffn         zero, split                                        d_ff
experts     upcycle (dense model), add (MoE model)             n_expert
depth       stack, duplicate, interleave, insert_zero,         n_layer
            insert_random, layer_map
seq         copy, tile, interpolate (learned positions)        seq_len, rope_scale, rope_base
==========  =================================================  ==========================================

``method`` is a shorthand for the depth and/or width choice: ``method="stack"``, ``method="clone"``
or ``method="stack+clone"``. Per-operator options: ``layer_sources`` (depth=layer_map),
``insert_positions`` (insert_zero/insert_random), ``block_init`` (insert_zero), ``rescale_eps``
(zero_pad), ``router_init`` (experts), ``expert_init`` (experts=add). ``noise``/``noise_std`` go to
every cloning or splitting step that supports the mode (a step that cannot cancel noise gets none,
noted in the report).

Everything is checked before anything is built: shrinking or unreachable targets, changes of norm,
positions, MLP type, vocabulary, tying, biases or head_dim raise :class:`ConfigError`. Settings that
do not change the architecture (dropout, init_std, scale_residual_init, moe_aux_loss_coef, norm_eps)
follow the source model; a different target value is noted, not applied. The returned map is the
composition of the steps' maps; the report measures old vs final model and lists the steps.

A dict target names what changes; everything else is the model's (:func:`target_config`: derived sizes
follow the model's shape, never :class:`ModelConfig` defaults; the report notes what was derived). The
measurement covers the model's full seq_len (pass real validation windows as ``probe``), runs in fp32
whatever the caller's autocast, and a declared-``exact`` result above ``exact_tol`` raises
:class:`~transformer_grow.operators.report.GrowthCertificateError`.
"""

from __future__ import annotations

from torch import nn

from transformer_grow.distributed.guard import ensure_unwrapped
from transformer_grow.model import ModelConfig
from transformer_grow.operators import moe
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.build import execute, fill_measurement, num_params, probe_for
from transformer_grow.operators.dynamics import check_preserve, dynamics_notes
from transformer_grow.operators.report import EXACT_TOL, GrowthReport, GrowthResult, worst_kind
from transformer_grow.operators.steps import (  # re-exported: the planning API used by the growth trainer
    CHOICES,
    FOLLOW_SOURCE,
    plan,
    plan_steps,
    resolve_choices,
    target_config,
)

__all__ = ["CHOICES", "grow", "plan", "plan_steps", "resolve_choices", "target_config"]


def grow(
    model: nn.Module,
    target: ModelConfig | dict | str,
    method: str | None = None,
    *,
    depth: str | None = None,
    width: str | None = None,
    heads: str | None = None,
    ffn: str | None = None,
    seq: str | None = None,
    experts: str | None = None,
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
    probe=None,
    measure: bool = True,
    measure_steps: bool = False,
    exact_tol: float | None = EXACT_TOL,
    adapter: ModelAdapter | None = None,
    preserve: str = "function",
    **options,
) -> GrowthResult:
    """Grow ``model`` to ``target`` (config, dict or preset name); see the module docstring.

    ``probe``: real validation data when you have it, as a ``[batch, time + 1]`` tensor of token
    windows (cut to the model's seq_len + 1; longer windows also evaluate the grown model at a new
    seq_len) or a pair ``(x, y)``; ``None``: seeded random tokens at the model's full seq_len.
    ``exact_tol``: a declared-``exact`` growth that measures max |dlogits| above ``exact_tol`` (fp32)
    raises :class:`~transformer_grow.operators.report.GrowthCertificateError` (``None``: no check).
    ``preserve``: ``"function"`` or ``"dynamics"``, recorded in the report for
    :func:`~transformer_grow.operators.optimizer.handoff` (moments and LR multipliers after growth)."""
    check_preserve(preserve)
    ensure_unwrapped(model)  # never grow under a live DDP/FSDP wrapper: it would miss the new parameters
    adapter = adapter or adapter_for(model)
    source = adapter.config(model)
    given = dict(target) if isinstance(target, dict) else None
    target = target_config(source, target)
    steps = plan(
        source,
        target,
        method,
        depth=depth,
        width=width,
        heads=heads,
        ffn=ffn,
        seq=seq,
        experts=experts,
        noise=noise,
        noise_std=noise_std,
        **options,
    )
    probe = probe_for(source, probe)  # validated before anything is built

    current, param_map, reports = model, None, []
    for i, step in enumerate(steps):
        step_plan = step.make_plan(current, adapter, seed=seed + i, **step.kwargs)
        result = execute(
            current,
            step_plan,
            adapter,
            seed=seed + i,
            probe=probe if measure_steps else None,
            measure_preservation=measure_steps,
            exact_tol=exact_tol,
        )
        if step.dimension == "experts" and step.method == "add" and measure_steps:
            moe.note_new_expert_share(result, adapter.config(current).n_expert)
        if step.note:
            result.report.notes.append(step.note)
        param_map = result.param_map if param_map is None else result.param_map.compose(param_map)
        reports.append(result.report)
        current = result.model

    notes = [
        f"{name}: target {getattr(target, name)!r} not applied; follows the model "
        f"({getattr(adapter.config(current), name)!r})"
        for name in FOLLOW_SOURCE
        if getattr(target, name) != getattr(adapter.config(current), name)
    ]
    if given is not None:  # a partial dict: say which unnamed sizes followed the model's shape
        derived = [
            f"{name}={getattr(target, name)}"
            for name in ("n_head", "n_kv_head", "d_ff")
            if name not in given and getattr(target, name) != getattr(source, name)
        ]
        if derived:
            notes.append(f"partial target: {', '.join(derived)} scaled with the model's shape (not given)")
    report = GrowthReport(
        method=",".join(f"{s.dimension}={s.method}" for s in steps),
        kind=worst_kind(r.kind for r in reports),
        old_config=source.to_dict(),
        new_config=adapter.config(current).to_dict(),
        old_params=num_params(model),
        new_params=num_params(current),
        options={"seed": seed, "noise": noise, "noise_std": noise_std, **options},
        probe=dict(probe.info),
        map_summary=param_map.summary(),
        notes=notes,
        steps=reports,
    )
    report.options["preserve"] = preserve
    if preserve == "dynamics":
        report.notes += dynamics_notes(param_map, adapter.config(current))
    result = GrowthResult(current, param_map, report)
    if measure:
        fill_measurement(report, adapter, model, current, probe, exact_tol)
        if 0 < source.n_expert < target.n_expert:
            moe.note_new_expert_share(result, source.n_expert)
    return result

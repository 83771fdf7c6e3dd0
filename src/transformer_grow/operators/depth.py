"""Depth growth: the new block sequence as a *layout* over the old blocks.

A layout lists, for every block of the grown model, either an old block index (a copy of that block)
or a :class:`NewBlock`. The first occurrence of an old block keeps its key, so its parameter names do
not change; later copies and new blocks get fresh keys named after their origin (``"3_1"``).

- :func:`stack`: G_stack (Du et al. 2024, "Stacking your Transformers"): the whole small model stacked
  ``g`` times, ``L0..Ln L0..Ln`` (the authors' code, ``prts_lit/scaling/stackingpt.py`` with
  ``stacking_6L_24L.json``: ``stacking_list = [0..5, 0..5, 0..5, 0..5]`` for 6 -> 24 layers; also
  progressive stacking, Gong et al. 2019). :func:`duplicate`: each block duplicated in place,
  ``L0 L0 L1 L1 ...`` (the "interpolation" of Chang et al. 2018; the layout our ``stack`` had before
  2026-12-08, under which every earlier ``g_stack`` number from more than one layer was measured).
  :func:`interleave`: the in-place layout with seeded noise on the copies. :func:`layer_map`: any
  layout, e.g. SOLAR's depth up-scaling (Kim et al. 2023) ``[0..23, 8..31]``, or MIDAS's middle block
  (Saunshi et al. 2024). Copies add their residual update a second time: not function-preserving
  (kind ``none``); the loss jump is measured.
- :func:`insert_zero`: new blocks whose residual writers (attention ``o_proj``, FFN ``down_proj``,
  weights and biases) are zero add ``x + 0``: exact (LLaMA-Pro block expansion, Wu et al. 2024, which
  copies the preceding block's other weights; ``init="random"`` initialises them freshly instead).
- :func:`insert_random`: freshly initialised new blocks (G_random, Du et al. 2024): no preservation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.build import GrowthPlan, run_operator
from transformer_grow.operators.map import ParamMap, ParamSource
from transformer_grow.operators.noise import NoiseSpec
from transformer_grow.operators.report import GrowthResult

DEPTH_METHODS = ("stack", "duplicate", "interleave", "insert_zero", "insert_random", "layer_map")
# Depth operators that copy every block a whole number of times.
WHOLE_FACTOR_METHODS = ("stack", "duplicate", "interleave")
# Names no longer accepted, with what to write instead (one line, never a silent change of meaning).
RENAMED_METHODS = {"repeat": "stack (G_stack's layout, the whole model stacked: what 'repeat' was)"}
BLOCK_INITS = ("copy", "random")


@dataclass(frozen=True)
class NewBlock:
    """A block with no single old source: ``copy_of`` (old index) gives the values of its
    non-writer parameters (``None``: fresh init); ``zero_writes`` zeroes its residual writers."""

    copy_of: int | None = None
    zero_writes: bool = True


def factor_for(old_layers: int, new_layers: int, method: str) -> int:
    require(
        new_layers % old_layers == 0 and new_layers // old_layers >= 2,
        f"depth={method!r} repeats blocks a whole number of times: n_layer {old_layers} -> {new_layers} is "
        f"x{new_layers / old_layers:.4g}; use depth='insert_zero', 'insert_random' or 'layer_map'",
    )
    return new_layers // old_layers


def stack_layout(n_layer: int, factor: int) -> list[int]:
    """G_stack's layout (Du et al. 2024): the whole stack ``factor`` times, ``[0..n-1] * factor``."""
    return list(range(n_layer)) * factor


def duplicate_layout(n_layer: int, factor: int) -> list[int]:
    """Each block ``factor`` times in place: ``[0, 0, 1, 1, ...]``."""
    return [i for i in range(n_layer) for _ in range(factor)]


def whole_factor_layout(method: str, n_layer: int, factor: int) -> list[int]:
    """The layout of a :data:`WHOLE_FACTOR_METHODS` operator (``interleave`` duplicates in place)."""
    return (stack_layout if method == "stack" else duplicate_layout)(n_layer, factor)


def check_method_name(method: str) -> None:
    """Refuse a renamed depth method with one line naming its new name."""
    require(method not in RENAMED_METHODS,
            f"depth={method!r} is no longer a method name; use depth={RENAMED_METHODS.get(method)}")


def even_positions(n_layer: int, n_new: int) -> list[int]:
    """Insert positions spread evenly: after every ``n_layer / n_new`` blocks (LLaMA-Pro's groups)."""
    return [(i + 1) * n_layer // n_new - 1 for i in range(n_new)]


def insert_layout(n_layer: int, positions: list[int], zero_writes: bool, init: str) -> list:
    """Old blocks in order with a :class:`NewBlock` after each position (``-1``: before the first)."""
    require(len(positions) > 0, "insert positions must name at least one position")
    for p in positions:
        require(
            isinstance(p, int) and -1 <= p < n_layer,
            f"insert position {p!r} must be an integer in [-1, {n_layer - 1}] (insert after that block)",
        )
    choice("block_init", init, BLOCK_INITS)
    layout: list = [
        NewBlock(max(p, 0) if init == "copy" else None, zero_writes) for p in positions if p == -1
    ]
    for i in range(n_layer):
        layout.append(i)
        layout += [NewBlock(i if init == "copy" else None, zero_writes) for p in positions if p == i]
    return layout


def check_layout(layout: list, n_layer: int) -> None:
    olds = [x for x in layout if not isinstance(x, NewBlock)]
    for x in olds:
        require(
            isinstance(x, int) and 0 <= x < n_layer,
            f"layer map entry {x!r} must be an old block index in [0, {n_layer - 1}]",
        )
    unused = sorted(set(range(n_layer)) - set(olds))
    require(
        not unused, f"layer map drops old block(s) {unused}: growth keeps every block (that would be pruning)"
    )
    require(
        len(layout) > n_layer,
        f"layer map has {len(layout)} entries; growing needs more than n_layer={n_layer}",
    )


def depth_config(config: ModelConfig, layout: list) -> ModelConfig:
    check_layout(layout, config.n_layer)
    return config.replace(n_layer=len(layout))


def _fresh_key(stem: str, taken: set[str]) -> str:
    n = 1
    while f"{stem}_{n}" in taken:
        n += 1
    taken.add(f"{stem}_{n}")
    return f"{stem}_{n}"


def depth_plan(
    model: nn.Module,
    adapter: ModelAdapter,
    *,
    layout: list,
    method: str = "layer_map",
    kind: str = "none",
    noise: str = "none",
    noise_std: float = 1e-3,
    seed: int = 0,
    options: dict | None = None,
) -> GrowthPlan:
    config = adapter.config(model)
    new_config = depth_config(config, layout)
    spec = NoiseSpec(noise, noise_std, seed)
    spec.check_supported(f"depth={method!r} (block copies have no cancelling pairs)", ("none", "plain"))
    old_keys = adapter.block_keys(model)
    params = dict(model.named_parameters())
    suffixes = [
        n[len(adapter.block_prefix(old_keys[0])) :]
        for n in params
        if n.startswith(adapter.block_prefix(old_keys[0]))
    ]
    block_names = {adapter.block_prefix(k) + s for k in old_keys for s in suffixes}
    entries = {n: ParamSource(tuple(p.shape), n) for n, p in params.items() if n not in block_names}

    taken, used, new_keys = set(old_keys), set(), []
    for item in layout:
        is_copy = not isinstance(item, NewBlock) and item in used  # a later occurrence of an old block
        if isinstance(item, NewBlock):
            key = _fresh_key(new_keys[-1] if new_keys else "start", taken)
        else:
            key = _fresh_key(old_keys[item], taken) if is_copy else old_keys[item]
            used.add(item)
        new_keys.append(key)
        for suffix in suffixes:
            name = adapter.block_prefix(key) + suffix
            template = params[adapter.block_prefix(old_keys[0]) + suffix]
            shape = tuple(template.shape)
            if not isinstance(item, NewBlock):
                noisy = is_copy and spec.mode == "plain" and template.dim() >= 2
                source = adapter.block_prefix(old_keys[item]) + suffix
                entries[name] = ParamSource(shape, source, noise="plain" if noisy else "none")
            elif item.zero_writes and ("model", "write") in adapter.param_axes(name, config):
                entries[name] = ParamSource(shape, None, fill="zeros")
            elif item.copy_of is None:
                entries[name] = ParamSource(shape, None, fill="fresh")
            else:
                entries[name] = ParamSource(shape, adapter.block_prefix(old_keys[item.copy_of]) + suffix)
    opts = {"layout": [x if isinstance(x, int) else repr(x) for x in layout], **(options or {})}
    if spec.mode != "none":
        opts.update(noise=spec.mode, noise_std=spec.std)
    notes = []
    if len(used) < sum(not isinstance(x, NewBlock) for x in layout):
        notes.append(
            "copied blocks add their residual update again: not function-preserving (G_stack, Du et al. 2024)"
        )
    if any(isinstance(x, NewBlock) and not x.zero_writes for x in layout):
        notes.append("fresh blocks (G_random) add a random residual update: not function-preserving")
    kind = _post_norm_kind(config, layout, kind, notes)
    return GrowthPlan(
        method, kind, new_config, new_keys, ParamMap(entries), options=opts, notes=notes, noise=spec
    )


def _post_norm_kind(config: ModelConfig, layout: list, kind: str, notes: list[str]) -> str:
    """A zero-writer block is ``x + 0`` only with pre-norm. Post-norm (BERT) blocks apply their norms to
    ``x + 0``: ``norm(norm(x))``, not ``x`` (LayerNorm is not idempotent once its weight and bias are
    not 1 and 0): the declared ``exact`` does not hold, and the measurement says how far it is."""
    if kind != "exact" or config.norm_placement != "post" or not any(isinstance(x, NewBlock) for x in layout):
        return kind
    notes.append("post-norm: a zero-writer block computes norm(norm(x)), not x: not function-preserving")
    return "none"


def layer_map(
    model: nn.Module, sources: list[int], *, noise: str = "none", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """Blocks of the grown model copied from old blocks ``sources`` (every old block at least once),
    e.g. SOLAR depth up-scaling (Kim et al. 2023) ``[0..23, 8..31]``. Kind ``none`` (measured)."""
    return run_operator(
        model, depth_plan, layout=list(sources), method="layer_map", noise=noise, noise_std=noise_std, **run
    )


def _n_layer(model: nn.Module, run: dict) -> int:
    return (run.get("adapter") or adapter_for(model)).config(model).n_layer


def _by_factor(model: nn.Module, method: str, layout_fn, factor, noise: str, noise_std: float,
               run: dict) -> GrowthResult:
    """A copying depth operator whose layout is ``layout_fn(n_layer, factor)``."""
    require(isinstance(factor, int) and factor >= 2, f"{method} factor={factor!r} must be an integer >= 2")
    layout = layout_fn(_n_layer(model, run), factor)
    return run_operator(model, depth_plan, layout=layout, method=method, noise=noise, noise_std=noise_std,
                        options={"factor": factor}, **run)


def stack(
    model: nn.Module, factor: int = 2, *, noise: str = "none", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """G_stack (Du et al. 2024): the whole model stacked ``factor`` times (L0..Ln L0..Ln), as the
    authors' ``stacking_list`` builds it."""
    return _by_factor(model, "stack", stack_layout, factor, noise, noise_std, run)


def duplicate(
    model: nn.Module, factor: int = 2, *, noise: str = "none", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """Every block duplicated ``factor`` times in place (L0 L0 L1 L1 ...; Chang et al. 2018's
    "interpolation")."""
    return _by_factor(model, "duplicate", duplicate_layout, factor, noise, noise_std, run)


def interleave(
    model: nn.Module, factor: int = 2, *, noise: str = "plain", noise_std: float = 1e-3, **run
) -> GrowthResult:
    """Each block followed by ``factor - 1`` copies carrying seeded plain noise (L0 L0~ L1 L1~ ...):
    :func:`duplicate`'s layout with symmetry-breaking noise on the copies."""
    return _by_factor(model, "interleave", duplicate_layout, factor, noise, noise_std, run)


def insert_zero(
    model: nn.Module,
    positions: list[int] | None = None,
    *,
    n_new: int | None = None,
    init: str = "copy",
    **run,
) -> GrowthResult:
    """New blocks with zero residual writers after old blocks ``positions`` (exact; LLaMA-Pro block
    expansion, Wu et al. 2024).
    Default positions: ``n_new`` blocks spread evenly."""
    n_layer = _n_layer(model, run)
    positions = _positions(n_layer, positions, n_new)
    layout = insert_layout(n_layer, positions, zero_writes=True, init=init)
    return run_operator(
        model,
        depth_plan,
        layout=layout,
        method="insert_zero",
        kind="exact",
        options={"positions": positions, "block_init": init},
        **run,
    )


def insert_random(
    model: nn.Module, positions: list[int] | None = None, *, n_new: int | None = None, **run
) -> GrowthResult:
    """Freshly initialised new blocks after old blocks ``positions`` (G_random, Du et al. 2024; no
    preservation)."""
    n_layer = _n_layer(model, run)
    positions = _positions(n_layer, positions, n_new)
    layout = insert_layout(n_layer, positions, zero_writes=False, init="random")
    return run_operator(
        model,
        depth_plan,
        layout=layout,
        method="insert_random",
        kind="none",
        options={"positions": positions},
        **run,
    )


def _positions(n_layer: int, positions: list[int] | None, n_new: int | None) -> list[int]:
    if positions is not None:
        return list(positions)
    require(isinstance(n_new, int) and n_new >= 1, f"give positions or n_new >= 1 (got n_new={n_new!r})")
    return even_positions(n_layer, n_new)

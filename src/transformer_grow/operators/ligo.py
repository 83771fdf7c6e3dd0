"""LiGO: a *learned* linear growth operator (Wang et al. 2023, "Learning to Grow Pretrained Models for
Efficient Transformer Training", ICLR).

The grown model's weights are a linear function of the small model's, ``theta_new = M theta_small``,
with ``M`` factorised as a depth operator after a width operator (Sec. 3.1), ``M = L_depth R_width``,
each applied per parameter type. For the parameter type ``s`` (e.g. ``attn.q_proj.weight``) of new
block ``l``, with the small model's blocks ``j = 0 .. L1-1``:

    depth (Sec. 3.1):   D_{s,l} = sum_j  w^s_{l,j} * W_{s,j}                      w^s: [L2, L1]
    width (Sec. 3.2):   W^new_{s,l} = A_{a(s)} D_{s,l} B_{b(s)}^T                 (a matrix W [out, in])
                        v^new_{s,l} = A_{a(s)} v_{s,l}                             (a vector: norm, bias)

The width matrices are *tied across layers* (Sec. 3.2): one ``A`` per logical axis for the side that
writes it (``out``: a linear's output rows, embedding columns, norm weights) and one ``B`` for the side
that reads it (``in``: a linear's input columns), for the axes ``model`` (d_model, the residual
stream: embeddings, norms, every block's input and output), ``q`` (query heads x head_dim),
``kv`` (key/value heads) and ``ffn`` (d_ff). Tying ``model`` across layers keeps the residual
stream consistent: every block reads what every other block writes. With a tied output head the
final norm reads through ``B_model`` (it carries the head's read-side scale, as in :func:`clone`).
Non-block parameters (embeddings, final norm, untied head) have no depth operator. So the operator
holds ``n_types * L2 * L1`` depth coefficients and ``~2 * sum_axis(n_new * n_old)`` width entries.

Initialisation: from the fixed operator the LiGO is named after (default ``depth="stack"``, G_stack's
layer map, Du et al. 2024; ``width="clone"``). Each entry of that operator's
:class:`~transformer_grow.operators.map.ParamMap` is separable: per dimension a sparse linear map
(:class:`~transformer_grow.operators.map.DimMap`) of one source tensor. The DimMaps are exactly ``A``/``B``
(densified) and the source block indices are the one-hot rows of ``w``, so before any LiGO training
the materialised model equals ``grow(model, target, depth=..., width=...)`` (clone's ``1/k`` read
scale included, wherever the operator puts it).

Training (:mod:`transformer_grow.run.ligo_phase`): the grown model's language-model loss,
computed by running the grown architecture on the materialised weights (``torch.func.functional_call``
on a parameter-free skeleton), is minimised over the operator's parameters only; the small model is
frozen. Then :meth:`LiGO.materialise` writes a plain :class:`~transformer_grow.model.GPT`.

Memory: the operator holds the small model's tensors (by reference), its own parameters and, during
a step, the materialised large weights (which the forward pass keeps for its backward). The
intermediates of each parameter type's expansion are *recomputed* in the backward pass (activation
checkpointing, one parameter type at a time) rather than kept, so the peak is the small model, the
large model, the operator (and its AdamW moments), the activations and one parameter type's
intermediates.

FLOPs of materialisation (:meth:`LiGO.flops`): every product above is a matrix product ``[m, k] @
[k, n]`` costing ``c = 2 m k n`` forward. Its backward costs ``c`` per operand that needs a gradient:
the operator's parameter always, the small model's weights never, an intermediate when an operator
parameter came before it. The backward pass recomputes every product of a type's chain but the last
(checkpointing stops recomputing once the saved tensors the backward needs exist). Per parameter type,
with ``T`` the elements of its ``L1`` stacked small tensors and ``n_new`` the number of new tensors:

    depth:  c_d = 2 * n_new * T                        (the [L2, L1] @ [L1, T / L1] product)
    width:  for each grown dimension in order (size n -> N): c = 2 * N * T, then T <- T * N / n
    step:   sum_i c_i * (2 + [input i needs grad] + [i is not the last product])

and the final materialisation costs ``sum_i c_i`` once (forward only, no gradient). A depth-only
type is ``2 c_d``; a width-grown matrix of a width-only LiGO ``3 c_1 + 3 c_2``; with depth too
``3 c_d + 4 c_1 + 3 c_2``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from transformer_grow.distributed.guard import ensure_unwrapped
from transformer_grow.errors import ConfigError, require
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.model.layers import RotaryEmbedding
from transformer_grow.operators.adapter import GPTAdapter, ModelAdapter, adapter_for
from transformer_grow.operators.build import fill_measurement, num_params, probe_for
from transformer_grow.operators.map import DimMap, ParamMap
from transformer_grow.operators.report import EXACT_TOL, GrowthReport, GrowthResult, fp32_context, worst_kind
from transformer_grow.operators.steps import plan as plan_steps_for
from transformer_grow.operators.steps import target_config

# The paper trains the operator for ~100 steps (Wang et al. 2023, Sec. 4.1); AdamW without weight decay
# (decay would pull the operator, hence the grown weights, towards zero).
DEFAULT_LIGO_STEPS = 100
DEFAULT_LIGO_LR = 1e-2
LIGO_WIDTH_INITS = ("clone", "net2net")
LIGO_DEPTH_INITS = ("stack", "duplicate", "layer_map", "insert_zero")


@dataclass
class TypeGroup:
    """The new tensors of one parameter type, materialised together (one checkpointed expansion).

    ``names``: the grown model's parameters (one per new block, in block order; one for a non-block
    parameter). ``sources``: the small model's tensors the expansion reads (all ``L1`` blocks when the
    depth operator is learned; else one per name). ``depth``: key of its ``w`` or ``None``.
    ``dims``: per dimension, the key of its width matrix (``None``: the axis does not grow).
    """

    names: list[str]
    sources: list[str]
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    depth: str | None = None
    depth_init: torch.Tensor | None = None  # [L2, L1] one-hot rows (zero rows: zero-initialised blocks)
    dims: list[str | None] | None = None

    def matmul_costs(self, sizes: dict[str, tuple[int, int]]) -> list[tuple[int, bool]]:
        """``(forward FLOPs, input needs grad)`` of each matrix product, in order (module docstring)."""
        n_old = 1
        for s in self.old_shape:
            n_old *= s
        costs, needs_grad = [], False
        total = len(self.names) * n_old
        if self.depth is not None:
            l2, l1 = len(self.names), len(self.sources)
            costs.append((2 * l2 * l1 * n_old, False))  # [L2, L1] @ [L1, n_old]
            needs_grad = True
        for key in self.dims or []:
            if key is None:
                continue
            new, old = sizes[key]
            costs.append((2 * new * total, needs_grad))
            total = total // old * new
            needs_grad = True
        return costs


@dataclass
class LigoLayout:
    """The structure of a LiGO operator (no values): what :class:`LiGO` learns and its FLOPs."""

    config: ModelConfig
    block_keys: list[str]
    init_map: ParamMap  # the fixed operator's map (the LiGO's initial value; maps optimizer moments)
    init_kind: str  # the fixed operator's declared kind (what the untrained LiGO reproduces)
    groups: list[TypeGroup]
    width_maps: dict[str, DimMap]  # key ("model_out", "ffn_in" ...) -> the fixed operator's DimMap
    width_sizes: dict[str, tuple[int, int]]  # key -> (n_new, n_old)
    method: str  # e.g. "ligo(depth=stack,width=clone)"

    def flops(self, training: bool = True) -> int:
        """Materialisation FLOPs: one training step (forward, recomputation, backward) or, with
        ``training=False``, one forward (the final materialisation). See the module docstring."""
        total = 0
        for group in self.groups:
            costs = group.matmul_costs(self.width_sizes)
            for i, (cost, input_grad) in enumerate(costs):
                if not training:
                    total += cost
                    continue
                recomputed = i < len(costs) - 1  # the last product's output is saved for no gradient
                total += cost * (2 + int(input_grad) + int(recomputed))
        return total

    def operator_params(self) -> int:
        """Number of the operator's learned values."""
        depth = sum(g.depth_init.numel() for g in self.groups if g.depth_init is not None)
        return depth + sum(new * old for new, old in self.width_sizes.values())


def _meta_copy(config: ModelConfig, block_keys: list[str]) -> GPT:
    with torch.device("meta"):
        return GPT(config, block_keys=block_keys)


def _role(use: str | None, tied: bool) -> str:
    """``in`` where the axis is read (a linear's input; the final norm in front of a tied head), else ``out``."""
    return "in" if use == "read" or (use in ("final_norm", "final_norm_bias") and tied) else "out"


def _block_of(name: str, keys: dict[str, int]) -> tuple[int, str] | None:
    """``(block index, suffix)`` of a block parameter ``blocks.<key>.<suffix>``, else ``None``."""
    if not name.startswith("blocks."):
        return None
    key, _, suffix = name[len("blocks."):].partition(".")
    return keys[key], suffix


def _same_map(a: DimMap, b: DimMap) -> bool:
    return a is b or (a.size == b.size and bool(torch.equal(dense(a, 0), dense(b, 0))))


def dense(dim_map: DimMap, n_old: int) -> torch.Tensor:
    """The DimMap as a dense ``[n_new, n_old]`` float64 matrix (``n_old=0``: the largest index + 1)."""
    index = dim_map.index
    weight = torch.ones(index.shape, dtype=torch.float64) if dim_map.weight is None else dim_map.weight
    n_old = max(n_old, int(index.max()) + 1 if index.numel() else 0)
    out = torch.zeros(index.shape[0], n_old, dtype=torch.float64)
    rows = torch.arange(index.shape[0]).unsqueeze(1).expand_as(index)
    keep = index >= 0
    out.index_put_((rows[keep], index[keep]), weight[keep], accumulate=True)
    return out


def ligo_layout(model: nn.Module, target: ModelConfig | dict | str, *, depth: str = "stack", width: str = "clone",
                seed: int = 0, adapter: ModelAdapter | None = None, **options) -> LigoLayout:
    """The structure of the LiGO growing ``model`` (a real or meta GPT) into ``target``, initialised
    as ``depth`` and ``width`` (refused with :class:`ConfigError` before anything is built)."""
    adapter = adapter or adapter_for(model)
    require(isinstance(adapter, GPTAdapter), "LiGO supports our GPT (GPTAdapter) only")
    source = adapter.config(model)
    target = target_config(source, target)
    require(source.n_expert == 0, "LiGO grows dense models; this model is a mixture of experts (n_expert="
                                  f"{source.n_expert}): use experts='upcycle'/'add' growth instead")
    require(getattr(source, "share", "none") == "none",
            f"LiGO grows models without cross-layer sharing; this one has share={source.share!r}: unshare first")
    grows_depth, grows_width = target.n_layer != source.n_layer, target.d_model != source.d_model
    if grows_depth:
        require(depth in LIGO_DEPTH_INITS, f"LiGO depth init {depth!r} is not allowed; choose one of "
                                           f"{', '.join(map(repr, LIGO_DEPTH_INITS))} (a linear copy of blocks)")
    if grows_width:
        require(width in LIGO_WIDTH_INITS, f"LiGO width init {width!r} is not allowed; choose one of "
                                           f"{', '.join(map(repr, LIGO_WIDTH_INITS))} (a linear copy of coordinates)")
    steps = plan_steps_for(source, target, depth=depth if grows_depth else None,
                           width=width if grows_width else None, **options)
    others = [f"{s.dimension}={s.method}" for s in steps if s.dimension not in ("depth", "width")]
    require(not others, f"LiGO learns depth and width growth (heads and FFN grown with the width by cloning); "
                        f"the target also needs {', '.join(others)}: grow those first or choose a target "
                        f"with n_head and d_ff x{target.d_model // source.d_model} (seq_len unchanged)")
    current = _meta_copy(source, adapter.block_keys(model))
    param_map, kinds = None, []
    for i, step in enumerate(steps):
        step_plan = step.make_plan(current, adapter, seed=seed + i, **step.kwargs)
        kinds.append(step_plan.kind)
        param_map = step_plan.param_map if param_map is None else step_plan.param_map.compose(param_map)
        current = _meta_copy(step_plan.config, step_plan.block_keys)
    config, block_keys = current.config, current.block_keys
    old_keys = {k: i for i, k in enumerate(adapter.block_keys(model))}
    new_keys = {k: i for i, k in enumerate(block_keys)}
    old_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    tied = adapter.tied_head(config)
    width_maps: dict[str, DimMap] = {}
    width_sizes: dict[str, tuple[int, int]] = {}
    groups: dict[str, TypeGroup] = {}
    for name, entry in param_map.items():
        require(entry.noise == "none", f"LiGO: {name} carries noise ({entry.noise}); a LiGO is a linear map")
        require(entry.kind not in ("new", "partial") or entry.fill == "zeros",
                f"LiGO: {name} has freshly initialised values (fill={entry.fill!r}); only copies and zeros are "
                "a linear function of the small model")
        block = _block_of(name, new_keys)
        group_key = name if block is None else block[1]
        source_name = entry.source
        old_shape = old_shapes[source_name] if source_name is not None else None
        dims: list[str | None] = []
        if source_name is not None:
            try:
                axes = adapter.param_axes(name, config)
            except KeyError as e:
                raise ConfigError(f"LiGO: {e.args[0]} (LiGO knows the plain decoder's parameters)") from None
            for d, dim_map in enumerate(entry.dims):
                if dim_map is None:
                    dims.append(None)
                    continue
                axis, use = axes[d]
                key = f"{axis}_{_role(use, tied)}"
                if key not in width_maps:
                    width_maps[key] = dim_map
                    width_sizes[key] = (dim_map.size, old_shape[d])
                elif not _same_map(width_maps[key], dim_map):
                    raise ConfigError(f"LiGO ties one expansion per axis and side ({key}); the {width} operator "
                                      f"maps {name} differently")
                dims.append(key)
        group = groups.get(group_key)
        if group is None:
            sources = [] if block is None else ([f"blocks.{k}.{group_key}" for k in old_keys] if grows_depth else [])
            shape = old_shape if old_shape is not None else old_shapes[f"blocks.{next(iter(old_keys))}.{group_key}"]
            group = groups[group_key] = TypeGroup([], sources, shape, tuple(entry.shape), dims=None)
            if grows_depth and block is not None:
                group.depth = group_key.replace(".", "__")
                group.depth_init = torch.zeros(len(block_keys), len(old_keys))
        if source_name is not None:  # a zero-initialised block (no source) has no width map of its own
            require(group.dims in (None, dims),
                    f"LiGO ties width expansions across layers; {name} is mapped differently")
            group.dims = dims
        if block is not None and grows_depth:
            if source_name is not None:  # one-hot: new block l copies old block j (zero row: a zero block)
                group.depth_init[block[0], _block_of(source_name, old_keys)[0]] = 1.0
        else:
            require(source_name is not None, f"LiGO: {name} has no source")
            group.sources.append(source_name)
        group.names.append(name)
    for group in groups.values():  # blocks in the grown model's order
        if group.depth is not None:
            group.names.sort(key=lambda n: _block_of(n, new_keys)[0])
    method = "ligo(" + ",".join(f"{s.dimension}={s.method}" for s in steps) + ")"
    return LigoLayout(config, block_keys, param_map, worst_kind(kinds), list(groups.values()), width_maps,
                      width_sizes, method)


class LiGO(nn.Module):
    """The learned growth operator from ``model`` (frozen, held by reference) to ``target``; see the
    module docstring. Its parameters are the depth coefficients (``depth``, one ``[L2, L1]`` matrix
    per parameter type) and the tied width matrices (``width``: ``model_out``, ``model_in``, ``q_out``...).

    ``forward(idx, targets)`` runs the grown architecture on the materialised weights (differentiable
    in the operator); :meth:`materialise` returns the plain grown model.
    """

    def __init__(self, model: nn.Module, target: ModelConfig | dict | str, *, depth: str = "stack",
                 width: str = "clone", seed: int = 0, adapter: ModelAdapter | None = None, **options):
        super().__init__()
        ensure_unwrapped(model)
        self.adapter = adapter or adapter_for(model)
        self.layout = ligo_layout(model, target, depth=depth, width=width, seed=seed, adapter=self.adapter,
                                  **options)
        reference = next(model.parameters())
        self.depth = nn.ParameterDict({g.depth: nn.Parameter(g.depth_init.to(reference.device, torch.float32))
                                       for g in self.layout.groups if g.depth is not None})
        self.width = nn.ParameterDict({
            key: nn.Parameter(dense(m, self.layout.width_sizes[key][1]).to(reference.device, torch.float32))
            for key, m in self.layout.width_maps.items()})
        self.steps_trained = 0  # optimizer steps taken on the operator (run/ligo_phase.py counts them)
        # Not submodules: the small model is the frozen input, the skeleton has no values of its own.
        self._held = {"small": model, "skeleton": self._skeleton(model)}

    @property
    def small(self) -> nn.Module:
        return self._held["small"]

    @property
    def config(self) -> ModelConfig:
        return self.layout.config

    def _skeleton(self, model: nn.Module) -> GPT:
        """The grown architecture without parameter storage (meta), real RoPE buffers: what
        ``functional_call`` runs on the materialised weights."""
        skeleton = _meta_copy(self.layout.config, self.layout.block_keys)
        if skeleton.rope is not None:
            skeleton.rope = RotaryEmbedding(self.layout.config).to(next(model.parameters()).device)
        skeleton.train(model.training)
        return skeleton

    # ------------------------------------------------------------- materialise
    def _expand(self, group: TypeGroup, *tensors: torch.Tensor) -> torch.Tensor:
        """The group's new tensors stacked ``[n_new, *new_shape]``: ``tensors`` are its ``w`` (if any),
        its width matrices in dimension order, then its sources."""
        it = iter(tensors)
        w = next(it) if group.depth is not None else None
        mats = [None if key is None else next(it) for key in group.dims or []]
        sources = list(it)
        x = torch.stack(sources)  # [n, *old_shape]
        if w is not None:  # depth (Sec. 3.1): new block l = sum_j w[l, j] * old block j
            x = (w @ x.flatten(1)).view(w.shape[0], *group.old_shape)
        for dim, m in enumerate(mats):  # width (Sec. 3.2): the tied expansion along each grown dimension
            if m is not None:
                x = torch.movedim(m @ torch.movedim(x, dim + 1, -2), -2, dim + 1)
        return x

    def _operands(self, group: TypeGroup) -> list[torch.Tensor]:
        params = dict(self.small.named_parameters())
        out = [self.depth[group.depth]] if group.depth is not None else []
        out += [self.width[key] for key in group.dims or [] if key is not None]
        return out + [params[name].detach() for name in group.sources]

    def weights(self) -> dict[str, torch.Tensor]:
        """Every parameter of the grown model, differentiable in the operator's parameters; each
        parameter type's intermediates are recomputed in the backward pass (module docstring)."""
        out = {}
        for group in self.layout.groups:
            operands = self._operands(group)
            learned = group.depth is not None or any(k is not None for k in group.dims or [])
            if not learned:  # copied as they are (e.g. the embedding under depth-only growth)
                stacked = operands
            elif torch.is_grad_enabled():
                stacked = checkpoint(self._expand, group, *operands, use_reentrant=False)
            else:
                stacked = self._expand(group, *operands)
            for i, name in enumerate(group.names):
                out[name] = stacked[i]
        return out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """The grown model's :class:`~transformer_grow.model.gpt.ModelOutput` on the materialised weights."""
        return torch.func.functional_call(self._held["skeleton"], self.weights(), (idx, targets))

    def flops(self, training: bool = True) -> int:
        """Materialisation FLOPs of one training step (or of one forward): :meth:`LigoLayout.flops`."""
        return self.layout.flops(training)

    @torch.no_grad()
    def materialise(self, *, probe=None, measure: bool = True, exact_tol: float | None = EXACT_TOL,
                    seed: int = 0) -> GrowthResult:
        """The grown model as a plain :class:`GPT` (the operator and the small model are untouched).

        Written one parameter type at a time into an uninitialised model (peak: small + large +
        operator + one type's intermediates), in fp32 whatever the caller's autocast. The result's
        ``param_map`` is the *fixed* operator's map (the LiGO's initial value): the learned map is
        dense and mixes layers, which a :class:`ParamMap` (one source tensor per parameter, sparse per
        dimension) cannot express; optimizer moments grown through it follow the stack/clone copy the
        operator started from (an approximation once the operator has trained; ``optimizer='fresh'``
        avoids it). ``probe``/``measure``/``exact_tol``: as for :func:`~transformer_grow.operators.grow`;
        the declared kind is the fixed operator's until the operator has trained, then ``none``.
        """
        layout, small = self.layout, self.small
        new = self.adapter.build(layout.config, layout.block_keys, like=small)
        params = dict(new.named_parameters())
        devices = {p.device.type for p in small.parameters()}
        with fp32_context(devices):
            for group in layout.groups:
                stacked = self._expand(group, *(t.float() for t in self._operands(group)))
                for i, name in enumerate(group.names):
                    params[name].copy_(stacked[i])
                del stacked
        trained = self.steps_trained > 0
        report = GrowthReport(
            method=layout.method, kind="none" if trained else layout.init_kind,
            old_config=self.adapter.config(small).to_dict(), new_config=layout.config.to_dict(),
            old_params=num_params(small), new_params=num_params(new),
            options={"seed": seed, "ligo_steps": self.steps_trained, "operator_params": layout.operator_params()},
            probe={}, map_summary=layout.init_map.summary(),
            notes=[f"LiGO (Wang et al. 2023) initialised as {layout.method[5:-1]}, trained {self.steps_trained} "
                   "steps; optimizer moments map through the initial (fixed) operator's map"])
        if measure:
            probe = probe_for(self.adapter.config(small), probe)
            report.probe = dict(probe.info)
            fill_measurement(report, self.adapter, small, new, probe, exact_tol)
        return GrowthResult(new, layout.init_map, report)


def ligo(model: nn.Module, target: ModelConfig | dict | str, batches: Iterable = (), *, steps: int = 0,
         lr: float = DEFAULT_LIGO_LR, depth: str = "stack", width: str = "clone", seed: int = 0, probe=None,
         measure: bool = True, exact_tol: float | None = EXACT_TOL, **options) -> GrowthResult:
    """Grow ``model`` into ``target`` by a LiGO operator trained ``steps`` AdamW steps (``lr``, no
    weight decay) on ``batches`` (``(x, y)`` pairs) and materialised. ``steps=0`` gives exactly
    ``grow(model, target, depth=depth, width=width)``. For training inside a run (batches from the
    trainer, FLOPs counted) see :mod:`transformer_grow.run.ligo_phase`."""
    require(isinstance(steps, int) and steps >= 0, f"steps={steps!r} must be an integer >= 0")
    require(isinstance(lr, (int, float)) and lr > 0, f"lr={lr!r} must be a positive number")
    operator = LiGO(model, target, depth=depth, width=width, seed=seed, **options)
    if steps:
        optimizer = torch.optim.AdamW(operator.parameters(), lr=lr, weight_decay=0.0)
        batches = iter(batches)
        for _ in range(steps):
            x, y = next(batches, (None, None))
            require(x is not None, f"ligo: batches ran out after {operator.steps_trained} of {steps} steps")
            operator_step(operator, optimizer, x, y)
    return operator.materialise(probe=probe, measure=measure, exact_tol=exact_tol, seed=seed)


def operator_step(operator: LiGO, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  autocast=contextlib.nullcontext, reduce_grads=None) -> float:
    """One step of the operator on the grown model's LM loss; returns the loss (before the step).
    ``autocast``: a context for the forward; ``reduce_grads(params)``: averages gradients over
    data-parallel ranks (every rank then takes the same step)."""
    device = next(operator.parameters()).device
    with autocast():
        loss = operator(x.to(device), y.to(device)).loss
    loss.backward()
    if reduce_grads is not None:
        reduce_grads([p for p in operator.parameters() if p.grad is not None])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    operator.steps_trained += 1
    return float(loss.detach())

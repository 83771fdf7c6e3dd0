"""Growth that preserves training *dynamics*: AdamW on the grown model retraces the small model.

A function-preserving operator stores every small value ``p`` in the grown model as ``s_v * p``,
replicated ``r`` times (``r``: the product over dimensions of how many new rows copy that source row,
times ``ParamSource.copies`` for averaged replicas such as upcycled experts). While the grown model
equals the small one on the whole manifold ``P = s_v * T(p)`` (``T``: the gather) and its gradients
are symmetric across copies, the chain rule ``g = sum over copies of s_v * G`` gives the grown gradient

    G = s_g * T(g),   s_g = 1 / (s_v * r)                                          (1)

Width cloning by k (HyperCloning, Samragh et al. 2024): a linear block ``W/k`` has ``s_v = 1/k``,
``r = k**2`` so ``s_g = 1/k``; a tiled bias, norm or embedding column ``s_v = 1``, ``r = k``,
``s_g = 1/k``; the final norm that absorbs the head's ``1/k`` ``s_v = 1/k``, ``r = k``, ``s_g = 1``.
Net2Net FFN splitting (Chen et al. 2016, eq. 2): a unit copied c times has up/gate rows
``s_v = 1, r = c`` and down-projection columns ``s_v = 1/c, r = c``. Upcycled experts (Komatsuzaki et
al. 2022) ``s_v = 1``, ``r = n_expert``. Zero-padding's rescaled norm weights ``s_v = sqrt(d/d_new)``.

Adam's direction ``u = m_hat / (sqrt(v_hat) + eps)`` is invariant to the gradient's scale, so a value
stored as ``s_v * p`` moves by ``lr * u`` instead of ``s_v * lr * u`` (Kingma & Ba 2015, sec. 2.1:
the step is invariant to rescaling the gradient). To retrace the small model's AdamW trajectory
(Loshchilov & Hutter 2019, decoupled decay ``p <- p (1 - lr wd) - lr u``) exactly:

1. moments follow the *gradient* scale: ``exp_avg = s_g T(m)``, ``exp_avg_sq = s_g**2 T(v)``
   (``preserve="dynamics"`` of :func:`~transformer_grow.operators.optimizer.grow_optimizer_state`; the
   default ``"function"`` rule scales them by the value scale, staged training, Shen et al. 2022);
2. the Adam direction is multiplied by an LR multiplier ``s_v`` per element (:func:`lr_multipliers`;
   applied by :class:`~transformer_grow.train.optim.LRMultipliers`);
3. decoupled weight decay keeps its rate: ``P <- P (1 - lr wd) - lr s_v u`` is ``s_v T`` of the small step.

Then every step maps to the small model's step and the grown model stays on the manifold, except
for ``eps``: the grown direction is ``m_hat / (sqrt(v_hat) + eps / s_g)``, i.e. AdamW with
``eps * k`` for clone k; and parameters whose exact gradient is zero (a key bias: softmax is
shift-invariant) receive rounding noise that Adam normalises into steps, differently in each model.
Measured (tests/test_grow_dynamics.py, fp32, eps=1e-8, 8 steps after growth): the grown parameters
stay within 1e-4 .. 7e-3 of one mapped small step (7e-3: LayerNorm models with key biases), logits
within 2e-5 (relative); with the function rule they are 1.8 .. 14 steps off. eps=1e-3: 1.5 steps.

Copies of a source row hold identical activations, so the gradient of a copy that *reads* the axis
is the small one and that of a copy that *writes* it is ``rho`` times it, ``rho`` the weight its
readers give it: ``s_g = rho / s_v`` per dimension, which is (1) when copies share ``rho = 1/r`` and
stays right for composed maps whose copies do not (a split after a clone: weights 1/4, 1/4, 1/2).

Where (1) does not hold, no multiplier can help, and none is claimed:

- upcycling: identical experts see ``w_e(x) * G`` with per-token combine weights ``w_e``; it equals
  ``G / n_expert`` for every expert only when all are chosen with equal weights: ``top_k == n_expert``
  and a zero router, whose exact gradient is then zero; in fp32 it is rounding noise that Adam
  turns into steps of ~lr/10, so the router must be held still (LR multiplier 0) for the trajectory
  to be retraced. With a random router or ``top_k < n_expert`` the experts' gradients differ and
  they drift apart (measured, not exact: no better than the function rule);
- gradient clipping by the global norm: the grown gradient's norm differs from the small one's, so
  an active clip scales the two differently (exact only while clipping is inactive);
- interpolated positions (a weighted sum of rows) and copies that are not averaged (stacked layers,
  tiled positions): moments follow the function rule and no multiplier is set;
- new values (fresh or zero) train freely: the grown model leaves the manifold as they move.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformer_grow.errors import choice
from transformer_grow.operators.adapter import ModelAdapter, adapter_for
from transformer_grow.operators.map import DimMap, ParamMap, ParamSource
from transformer_grow.operators.report import GrowthResult

PRESERVE_MODES = ("function", "dynamics")

# Axes whose copies are summed by their readers, so the gradient splits over the copies (1). The
# positions axis is not one: a token reads one position, so tiled positions are alternatives.
REPLICATED_AXES = ("model", "q", "kv", "ffn")


@dataclass(frozen=True)
class DynamicsScales:
    """Scales of one grown parameter, broadcastable to its shape (``None``: 1 everywhere).

    ``value``: ``s_v``, how the small values are scaled in the grown tensor; it is also the LR
    multiplier. ``grad``: ``s_g = 1 / (s_v * r)``, the scale of the grown gradient (1).
    """

    value: torch.Tensor | None = None
    grad: torch.Tensor | None = None

    def moment_factor(self, power: int) -> torch.Tensor | None:
        """What turns the function rule's moments (``s_v**power * T(.)``) into ``s_g**power * T(.)``."""
        if self.value is None and self.grad is None:
            return None
        value = torch.ones(()) if self.value is None else self.value
        grad = torch.ones(()) if self.grad is None else self.grad
        return (grad / value) ** power


def _dim_factors(d: DimMap, reader: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(s_v, s_g)`` per row of a one-term map (float64 [n]; new rows get 1, 1); ``None`` if multi-term.

    ``reader``: the weight ``rho`` with which readers of the axis read each row (``None``: an axis
    whose copies are not summed, ``rho = 1``). Copies of a source row hold identical activations, so
    a reader's copy sees the small gradient and a writer's copy ``rho`` times it: ``s_g = rho / s_v``
    (read rows have ``s_v = rho``, written rows ``s_v = 1``), which is ``1 / (s_v r)`` (1) when the
    copies share ``rho = 1/r``, and also right when they do not (a split after a clone: 1/4, 1/4, 1/2).
    """
    if d.index.shape[1] != 1:
        return None
    known = d.index[:, 0] >= 0
    weight = d.weight[:, 0] if d.weight is not None else torch.ones(d.size, dtype=torch.float64)
    value = torch.where(known & (weight != 0), weight, torch.ones((), dtype=torch.float64))
    if reader is None:
        return value, 1.0 / value
    return value, torch.where(known & (reader != 0), reader / value, torch.ones((), dtype=torch.float64))


def _replica_weights(d: DimMap) -> torch.Tensor:
    """``1 / r`` per row of a one-term map: the reader weight of copies that share it equally (Net2Net)."""
    rows = d.index[:, 0]
    known = rows >= 0
    counts = torch.bincount(rows[known], minlength=1).double()
    out = torch.ones(d.size, dtype=torch.float64)
    out[known] = 1.0 / counts[rows[known]]
    return out


def _compact(scale: torch.Tensor) -> torch.Tensor | None:
    """``None`` for all ones, a 0-dim tensor when uniform, else the broadcastable tensor (float32)."""
    first = scale.reshape(-1)[0]
    if bool((scale == first).all()):
        return None if float(first) == 1.0 else first.float().clone()
    return scale.float()


def param_scales(entry: ParamSource, axes, readers: dict[str, torch.Tensor]) -> DynamicsScales:
    """:class:`DynamicsScales` of one map entry; ``axes``: ``(axis, use)`` per dimension; ``readers``:
    ``{axis: rho}`` for the replicated axes that have a reading parameter (others: ``1 / r``)."""
    if entry.source is None:
        return DynamicsScales()
    value = torch.ones((1,) * len(entry.shape), dtype=torch.float64)
    grad = torch.full_like(value, 1.0 / entry.copies)  # averaged replicas: combine weight 1/copies
    for dim, d in enumerate(entry.dims):
        if d is None:
            continue
        axis = axes[dim][0]
        if axis in REPLICATED_AXES and d.index.shape[1] == 1:
            reader = readers.get(axis)
            reader = _replica_weights(d) if reader is None or reader.shape[0] != d.size else reader
        else:
            reader = None
        factors = _dim_factors(d, reader)
        if factors is None:  # weighted sum of rows: no dynamics claim, function rule kept
            continue
        shape = [1] * len(entry.shape)
        shape[dim] = -1
        value = value * factors[0].view(shape)
        grad = grad * factors[1].view(shape)
    return DynamicsScales(_compact(value), _compact(grad))


def dynamics_scales(
    param_map: ParamMap, model: nn.Module, adapter: ModelAdapter | None = None
) -> dict[str, DynamicsScales]:
    """``{param name: DynamicsScales}`` of the grown ``model`` under ``param_map`` (maps composed by
    :func:`~transformer_grow.operators.grow` included: their gathers compose, so do the weights)."""
    adapter = adapter or adapter_for(model)
    config = adapter.config(model)
    axes = {name: adapter.param_axes(name, config) for name in param_map}
    readers: dict[str, torch.Tensor] = {}  # rho per replicated axis, from any parameter that reads it
    for name, entry in param_map.items():
        for (axis, use), d in zip(axes[name], entry.dims):
            if use == "read" and axis in REPLICATED_AXES and d is not None and d.index.shape[1] == 1:
                readers.setdefault(axis, d._effective_weight()[:, 0])
    return {name: param_scales(e, axes[name], readers) for name, e in param_map.items()}


def lr_multipliers(result: GrowthResult, adapter: ModelAdapter | None = None) -> dict[str, torch.Tensor]:
    """``{param name: s_v}`` for the grown parameters whose AdamW direction needs a multiplier (point 2
    of the module docstring); parameters without an entry use 1. Tensors broadcast to the parameter."""
    scales = dynamics_scales(result.param_map, result.model, adapter)
    return {name: s.value for name, s in scales.items() if s.value is not None}


def check_preserve(preserve: str) -> None:
    choice("preserve", preserve, PRESERVE_MODES)


def dynamics_notes(param_map: ParamMap, new_config) -> list[str]:
    """Where ``preserve="dynamics"`` is not exact for this map (for the growth report)."""
    notes = ["preserve='dynamics': AdamW moments follow the gradient scale and LR multipliers follow the "
             "value scale; eps acts as eps/s_g and an active gradient clip breaks exactness"]
    if any(e.copies > 1 for e in param_map.values()):
        top_k = new_config.moe_top_k
        notes.append(
            "upcycled experts: moments scaled by 1/n_expert assume equal combine weights; exact only with "
            "router_init='zero' and top_k == n_expert" + ("" if top_k == new_config.n_expert else f" (top_k={top_k})")
        )
    if any(d is not None and d.index.shape[1] > 1 for e in param_map.values() for d in e.dims):
        notes.append("interpolated positions: moments follow the values, no LR multiplier (approximate)")
    return notes

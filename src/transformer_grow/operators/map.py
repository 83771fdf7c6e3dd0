"""The parameter map: where every value of a grown model came from.

Every growth operator in this package builds each new tensor *separably*: along each dimension,
row ``i`` of the new tensor is a weighted sum of rows of its source tensor along that dimension
(usually one row: a gather, optionally scaled). A :class:`DimMap` stores that for one dimension in
O(size of the dimension); a :class:`ParamSource` stores one per dimension plus the source name. So
the whole map costs O(sum of tensor dimensions), far less than the parameters themselves, and it can
be re-applied to *any* tensor shaped like the source: the values, Adam's ``exp_avg`` (``power=1``)
and ``exp_avg_sq`` (``power=2``: a value scaled by ``s`` has its second moment scaled by ``s**2``,
staged training, Shen et al. 2022). Entries with no source ("new") come out as zero.

Maps compose: ``later.compose(earlier)`` maps the final model straight to the original one, so a
sequence of operators (CompoundGrow) has one map, and optimizer state is grown once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)
class DimMap:
    """One dimension of a new tensor as a sparse linear map of the same dimension of its source.

    ``index`` [n, m] (long): the source rows each new row sums; ``-1`` marks a term without source.
    ``weight`` [n, m] (float64) or ``None`` for all ones. A row whose terms are all ``-1`` is *new*.
    """

    index: torch.Tensor
    weight: torch.Tensor | None = None

    @staticmethod
    def gather(rows: torch.Tensor, scale: torch.Tensor | float | None = None) -> DimMap:
        """Row ``i`` = ``scale[i] * source[rows[i]]`` (``rows[i] = -1``: new row)."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1, 1)
        if scale is None:
            return DimMap(rows)
        weight = torch.as_tensor(scale, dtype=torch.float64).expand(rows.shape[0]).reshape(-1, 1).clone()
        return DimMap(rows, weight)

    @property
    def size(self) -> int:
        return self.index.shape[0]

    @property
    def new_rows(self) -> torch.Tensor:
        """Bool [n]: rows with no source at all."""
        return (self.index < 0).all(dim=1)

    def has_new(self) -> bool:
        return self._has_new

    @functools.cached_property
    def _has_new(self) -> bool:
        return bool((self.index < 0).any())

    @functools.cached_property
    def new_positions(self) -> torch.Tensor:
        """Long [k]: the indices of the new rows."""
        return self.new_rows.nonzero().flatten()

    @functools.cached_property
    def uniform_weight(self) -> float | None:
        """For a one-term map (a gather): the weight its non-new rows share (``1.0`` without weights),
        or ``None`` when they differ or the map sums several rows."""
        if self.index.shape[1] != 1:
            return None
        if self.weight is None:
            return 1.0
        weights = self.weight[self.index[:, 0] >= 0, 0]
        first = float(weights[0]) if weights.numel() else 1.0
        return first if bool((weights == first).all()) else None

    def _effective_weight(self) -> torch.Tensor:
        w = torch.ones(self.index.shape, dtype=torch.float64) if self.weight is None else self.weight
        return torch.where(self.index < 0, torch.zeros((), dtype=torch.float64), w)

    def take(self, x: torch.Tensor, dim: int, zero_new: bool = True) -> torch.Tensor:
        """The rows of a one-term map, unscaled; new rows zero (unspecified with ``zero_new=False``)."""
        out = x.index_select(dim, self.index[:, 0].clamp(min=0).to(x.device))
        if zero_new and self.has_new():
            out.index_fill_(dim, self.new_positions.to(x.device), 0)
        return out

    def apply(self, x: torch.Tensor, dim: int, power: int = 1) -> torch.Tensor:
        """This map along ``dim`` of ``x``; weights raised to ``power``; new rows are zero."""
        shape = [1] * x.dim()
        shape[dim] = -1
        if self.index.shape[1] == 1:
            out = self.take(x, dim)
            if self.uniform_weight is None:
                out.mul_(self._effective_weight()[:, 0].pow(power).to(out.device, out.dtype).view(shape))
            elif self.uniform_weight != 1.0:
                out.mul_(self.uniform_weight**power)
            return out
        index = self.index.clamp(min=0).to(x.device)
        weight = self._effective_weight().pow(power).to(device=x.device, dtype=x.dtype)
        out = None
        for j in range(index.shape[1]):
            term = x.index_select(dim, index[:, j]).mul_(weight[:, j].view(shape))
            out = term if out is None else out.add_(term)
        return out

    def compose(self, inner: DimMap) -> DimMap:
        """``self`` after ``inner``: ``self`` maps mid -> new, ``inner`` maps old -> mid."""
        idx = self.index.clamp(min=0)
        index = inner.index[idx]  # [n, m_self, m_inner]
        weight = self._effective_weight()[:, :, None] * inner._effective_weight()[idx]
        dead = (self.index < 0)[:, :, None] | (index < 0)
        index = torch.where(dead, torch.full_like(index, -1), index).reshape(self.size, -1)
        weight = torch.where(dead, torch.zeros_like(weight), weight).reshape(self.size, -1)
        if index.shape[1] == 1 and bool(((weight == 1) | (index < 0)).all()):
            return DimMap(index)
        return DimMap(index, weight)


@dataclass(eq=False)
class ParamSource:
    """Where one parameter of the grown model came from.

    ``source=None``: every value is new (``fill`` says how the operator initialised it: ``"zeros"``
    or ``"fresh"`` — the model's own initialisation). Otherwise ``dims`` holds one :class:`DimMap`
    (or ``None`` = unchanged) per dimension of the source ``source``; entries in new rows are filled
    per ``fill``. ``noise`` names value-only noise added after mapping (``"none"``, ``"cancel"``,
    ``"plain"``), along dimension ``noise_dim`` for cancelling noise; it is not part of the map.
    ``copies``: how many parameters of the grown model hold this same source as replicas whose
    outputs the model *averages* (upcycled experts behind combine weights that sum to one,
    Komatsuzaki et al. 2022); it is not part of the values, but training dynamics need it
    (:mod:`~transformer_grow.operators.dynamics`). Copies that are not averaged (stacked layers) keep 1.
    """

    shape: tuple[int, ...]
    source: str | None = None
    dims: tuple[DimMap | None, ...] = ()
    fill: str = "fresh"
    noise: str = "none"
    noise_dim: int | None = None
    copies: int = 1

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.source is not None and not self.dims:
            self.dims = (None,) * len(self.shape)

    @property
    def kind(self) -> str:
        """``"new"``, ``"copy"`` (same values), ``"partial"`` (some new entries) or ``"mapped"``."""
        if self.source is None:
            return "new"
        if any(d is not None and d.has_new() for d in self.dims):
            return "partial"
        if all(d is None for d in self.dims):
            return "copy"
        return "mapped"

    def new_mask(self) -> torch.Tensor:
        """Bool tensor broadcastable to ``shape``: True where the value has no source."""
        if self.source is None:
            return torch.ones((1,) * len(self.shape), dtype=torch.bool)
        mask = torch.zeros((1,) * len(self.shape), dtype=torch.bool)
        for dim, d in enumerate(self.dims):
            if d is not None and d.has_new():
                view = [1] * len(self.shape)
                view[dim] = -1
                mask = mask | d.new_rows.view(view)
        return mask

    def apply(self, tensor: torch.Tensor | None, power: int = 1, zero_new: bool = True) -> torch.Tensor:
        """Re-apply this map to ``tensor`` (shaped like the source): values (``power=1``) or second
        moments (``power=2``). New entries are zero (unspecified with ``zero_new=False``, for a caller
        that overwrites them). ``tensor`` may be ``None`` only if ``source`` is."""
        if self.source is None or tensor is None:
            device = tensor.device if tensor is not None else None
            dtype = tensor.dtype if tensor is not None else torch.float32
            return torch.zeros(self.shape, dtype=dtype, device=device)
        out, scale = tensor, 1.0
        for dim, d in enumerate(self.dims):
            if d is None:
                continue
            if d.uniform_weight is not None:  # a gather whose single scale is applied once, below
                out = d.take(out, dim, zero_new)
                scale *= d.uniform_weight**power
            else:
                out = d.apply(out, dim, power)
            if scale != 1.0:  # on the first (smallest) gathered tensor, which this method owns
                out = out.mul_(scale)
                scale = 1.0
        if out is tensor:
            out = tensor.clone()
        if tuple(out.shape) != self.shape:
            raise ValueError(f"map of {self.source} gives shape {tuple(out.shape)}, expected {self.shape}")
        return out

    def compose(self, earlier: ParamSource, cache: dict) -> ParamSource:
        if self.source is None:
            return self
        if earlier.source is None:
            return ParamSource(self.shape, None, fill=earlier.fill if self.kind == "copy" else "mixed")
        dims = []
        for a, b in zip(self.dims, earlier.dims):
            if a is None or b is None:
                dims.append(b if a is None else a)
            else:
                key = (id(a), id(b))
                if key not in cache:
                    cache[key] = a.compose(b)
                dims.append(cache[key])
        noise = self.noise if earlier.noise == "none" else earlier.noise if self.noise == "none" else "mixed"
        fill = self.fill if earlier.kind in ("copy", "mapped") else "mixed"
        return ParamSource(self.shape, earlier.source, tuple(dims), fill, noise, None, self.copies * earlier.copies)


@dataclass
class ParamMap(Mapping[str, ParamSource]):
    """``{new parameter name: ParamSource}`` for every parameter of a grown model."""

    entries: dict[str, ParamSource] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ParamSource:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def compose(self, earlier: ParamMap) -> ParamMap:
        """The map from the original model (``earlier``'s source) straight to this map's model."""
        cache: dict = {}
        return ParamMap(
            {
                name: e.compose(earlier[e.source], cache) if e.source is not None else e
                for name, e in self.entries.items()
            }
        )

    def apply(self, tensors: Mapping[str, torch.Tensor], power: int = 1) -> dict[str, torch.Tensor]:
        """Grow a ``{old name: tensor}`` dict (values or moments); entries without a source are zero."""
        return {
            name: e.apply(tensors.get(e.source) if e.source is not None else None, power)
            for name, e in self.entries.items()
        }

    def summary(self) -> dict[str, int]:
        """Element counts by kind (copied, mapped, partially new, new) and the number of tensors."""
        counts = {"copy": 0, "mapped": 0, "partial": 0, "new": 0}
        for e in self.entries.values():
            counts[e.kind] += int(torch.Size(e.shape).numel())
        counts["tensors"] = len(self.entries)
        return counts

"""Growing logical axes (d_model, heads, d_ff) of every parameter at once.

An :class:`AxisChange` says how one axis grows: which source row each new row copies (``-1``: a new
row), the scale applied where the axis is *read* (``1/copies``, Net2Net, Chen et al. 2016, eq. 2:
replicated inputs are divided by their replication count so the reader's sum is unchanged), a scale
for norm weights, and how new rows are filled per use. :func:`axis_param_map` turns a set of changes
into a :class:`~transformer_grow.operators.map.ParamMap` for every parameter, using the adapter's axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transformer_grow.operators.adapter import ModelAdapter
from transformer_grow.operators.map import DimMap, ParamMap, ParamSource


@dataclass
class AxisChange:
    """How one axis grows.

    ``rows[i]``: the source row copied into new row ``i`` (``-1``: new). ``read_scale[i]``: scale of
    row ``i`` where the axis is read (``None``: 1). ``norm_scale``: scale of old rows of norm weights.
    ``fill``: per use, ``"fresh"`` or ``"zeros"`` for new rows (default fresh). ``noisy_reads``:
    readers of this axis carry the operator's symmetry-breaking noise (replicated axes).
    """

    rows: torch.Tensor
    read_scale: torch.Tensor | None = None
    norm_scale: float = 1.0
    fill: dict[str | None, str] = field(default_factory=dict)
    noisy_reads: bool = False

    @staticmethod
    def replicate(rows: torch.Tensor, noisy_reads: bool = True) -> AxisChange:
        """Every new row copies a source row; readers divide by the number of copies (exact)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        counts = torch.bincount(rows)
        return AxisChange(rows, read_scale=1.0 / counts[rows].double(), noisy_reads=noisy_reads)

    @staticmethod
    def extend(
        old_size: int, new_size: int, fill: dict[str | None, str], norm_scale: float = 1.0
    ) -> AxisChange:
        """Old rows unchanged, ``new_size - old_size`` new rows filled per ``fill``."""
        rows = torch.cat([torch.arange(old_size), torch.full((new_size - old_size,), -1)])
        return AxisChange(rows, norm_scale=norm_scale, fill=fill)

    def dim_map(self, use: str | None, tied_head: bool) -> DimMap:
        if use == "read" or (use in ("final_norm", "final_norm_bias") and tied_head):
            scale = self.read_scale
            if use == "final_norm" and self.norm_scale != 1.0:
                scale = self.norm_scale if scale is None else scale * self.norm_scale
            return DimMap.gather(self.rows, scale)
        if use in ("norm", "final_norm") and self.norm_scale != 1.0:
            return DimMap.gather(self.rows, self.norm_scale)
        return DimMap.gather(self.rows)


def heads_rows(head_rows: list[int], head_dim: int) -> torch.Tensor:
    """Expand a per-head row map (source head or -1) to the ``heads x head_dim`` axis."""
    rows = []
    for h in head_rows:
        rows.append(torch.full((head_dim,), -1) if h < 0 else torch.arange(h * head_dim, (h + 1) * head_dim))
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


def axis_param_map(
    model: nn.Module, adapter: ModelAdapter, changes: dict[str, AxisChange], noise_mode: str = "none"
) -> ParamMap:
    """The map of every parameter of ``model`` under ``changes`` (names are unchanged)."""
    config = adapter.config(model)
    tied = adapter.tied_head(config)
    cache: dict[tuple[str, str | None], DimMap] = {}  # one DimMap per (axis, use), shared by all params
    entries = {}
    for name, param in model.named_parameters():
        dims: list[DimMap | None] = []
        fill, noise_dim = "fresh", None
        for dim, (axis, use) in enumerate(adapter.param_axes(name, config)):
            change = changes.get(axis)
            if change is None:
                dims.append(None)
                continue
            if (axis, use) not in cache:
                cache[(axis, use)] = change.dim_map(use, tied)
            dims.append(cache[(axis, use)])
            if cache[(axis, use)].has_new() and change.fill.get(use, "fresh") == "zeros":
                fill = "zeros"
            if use == "read" and change.noisy_reads and noise_mode != "none":
                noise_dim = dim
        shape = tuple(d.size if d is not None else s for d, s in zip(dims, param.shape))
        entries[name] = ParamSource(
            shape,
            name,
            tuple(dims),
            fill,
            noise=noise_mode if noise_dim is not None else "none",
            noise_dim=noise_dim,
        )
    return ParamMap(entries)

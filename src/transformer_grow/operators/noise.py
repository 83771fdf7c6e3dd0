"""Symmetry breaking for cloning and splitting operators.

Exact copies that see the same inputs receive the same gradients and never diverge (the symmetry
problem of Net2Net, Chen et al. 2016).
Two remedies, both seeded:

- ``"cancel"``: noise on the *reading* side of replicated units, in +e/-e pairs across two copies of
  one source unit (HyperCloning, Samragh et al. 2024). The copies carry identical values h, so the
  reader computes ``(W_a + e) h + (W_b - e) h = (W_a + W_b) h``: still exact.
- ``"plain"``: independent Gaussian noise: breaks symmetry, changes the function slightly (approximate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformer_grow.errors import choice, require
from transformer_grow.operators.map import ParamMap

NOISE_MODES = ("none", "cancel", "plain")


@dataclass(frozen=True)
class NoiseSpec:
    """Which symmetry-breaking noise an operator adds: mode, absolute std and seed."""

    mode: str = "none"
    std: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        choice("noise", self.mode, NOISE_MODES)
        require(self.std >= 0, f"noise_std={self.std} must be >= 0")

    def check_supported(self, operator: str, supported: tuple[str, ...]) -> None:
        """Refuse a mode the operator cannot apply (e.g. cancelling noise on block copies)."""
        require(
            self.mode in supported,
            f"noise={self.mode!r} is not available for {operator}; "
            f"choose one of {', '.join(map(repr, supported))}",
        )


def noise_pairs(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(a, b)`` pairing copies of the same source row: ``rows[a[i]] == rows[b[i]]``.

    Copies of one row are paired in order of position; in a group of odd size the last copy has no
    partner (and gets no noise). Every other copy differs from the rest of its group after +e/-e.
    """
    order = torch.argsort(rows, stable=True)
    _, counts = torch.unique_consecutive(rows[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(rows)) - torch.repeat_interleave(starts, counts)
    size = torch.repeat_interleave(counts, counts)
    first = ((rank % 2 == 0) & (rank + 1 < size)).nonzero().flatten()
    return order[first], order[first + 1]


@torch.no_grad()
def add_noise(model: nn.Module, param_map: ParamMap, spec: NoiseSpec) -> int:
    """Add the noise that ``param_map`` marks (``ParamSource.noise``) to ``model``'s parameters.

    Cancelling noise is made zero-sum over groups of copies along ``noise_dim`` (the groups are the
    source rows of that dimension's :class:`~transformer_grow.operators.map.DimMap`). Returns the number
    of tensors changed. Deterministic for ``spec.seed``.
    """
    if spec.mode == "none" or spec.std == 0:
        return 0
    generator = torch.Generator().manual_seed(spec.seed)
    params = dict(model.named_parameters())
    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    changed = 0
    for name in sorted(param_map):
        entry = param_map[name]
        if entry.noise == "none":
            continue
        param = params[name]
        if entry.noise == "cancel":  # +e on one copy, -e on its partner: their reader's sum is unchanged
            dim = entry.noise_dim
            rows = entry.dims[dim]
            if id(rows) not in pairs:  # DimMaps are shared by many parameters
                pairs[id(rows)] = noise_pairs(rows.index[:, 0])
            a, b = (p.to(param.device) for p in pairs[id(rows)])
            shape = list(param.shape)
            shape[dim] = len(a)
            noise = torch.empty(shape, dtype=torch.float32).normal_(0.0, spec.std, generator=generator)
            noise = noise.to(device=param.device, dtype=param.dtype)
            param.index_add_(dim, a, noise).index_add_(dim, b, noise, alpha=-1)
        else:
            noise = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, spec.std, generator=generator)
            param.add_(noise.to(device=param.device, dtype=param.dtype))
        changed += 1
    return changed

"""Growth results and the *measured* preservation report.

Every operator declares a kind (``exact``: function-preserving by construction; ``approximate``: close
by design; ``none``: no preservation attempted) and *measures* it: the maximum absolute difference of
the logits and the difference of the loss between the old and the grown model on one probe batch,
in fp32 and eval mode (no dropout).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformer_grow.errors import require
from transformer_grow.grow.map import ParamMap

KINDS = ("exact", "approximate", "none")
DEFAULT_PROBE_SEED = 1234
DEFAULT_PROBE_SHAPE = (4, 64)


def worst_kind(kinds) -> str:
    """The weakest of several kinds (``exact`` < ``approximate`` < ``none``)."""
    kinds = list(kinds)
    return max(kinds, key=KINDS.index) if kinds else "exact"


@dataclass
class GrowthReport:
    """What an operator did and how well the grown model preserves the old one's function."""

    method: str
    kind: str
    max_abs_dlogits: float | None = None
    dloss: float | None = None  # loss(new) - loss(old)
    loss_old: float | None = None
    loss_new: float | None = None
    old_config: dict[str, Any] = field(default_factory=dict)
    new_config: dict[str, Any] = field(default_factory=dict)
    old_params: int = 0
    new_params: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    map_summary: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steps: list[GrowthReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "steps"}
        d["steps"] = [s.to_dict() for s in self.steps]
        return copy.deepcopy(d)

    def summary(self) -> str:
        """One human-readable line."""
        measured = (
            "not measured"
            if self.max_abs_dlogits is None
            else f"max|dlogits|={self.max_abs_dlogits:.3g} dloss={self.dloss:+.4g} "
            f"(loss {self.loss_old:.4f} -> {self.loss_new:.4f})"
        )
        return f"{self.method}: {self.kind}; {measured}; params {self.old_params:,} -> {self.new_params:,}"


@dataclass
class GrowthResult:
    """The grown model (a new object), its parameter map and its report."""

    model: nn.Module
    param_map: ParamMap
    report: GrowthReport


def default_probe(
    vocab_size: int, seq_len: int, seed: int = DEFAULT_PROBE_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random token batch ``(x, y)`` no longer than ``seq_len``."""
    batch, length = DEFAULT_PROBE_SHAPE
    length = min(length, seq_len)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch, length + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def check_probe(probe, vocab_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a user probe ``(x, y)`` against the *old* model: token ids and length."""
    require(
        isinstance(probe, (tuple, list)) and len(probe) == 2, "probe must be a pair (x, y) of token tensors"
    )
    x, y = (torch.as_tensor(t) for t in probe)
    require(
        x.dim() == 2 and x.shape == y.shape,
        f"probe x and y must both be [batch, time], got {tuple(x.shape)} and {tuple(y.shape)}",
    )
    require(x.shape[1] <= seq_len, f"probe length {x.shape[1]} exceeds the old model's seq_len={seq_len}")
    require(int(x.min()) >= 0 and int(x.max()) < vocab_size, f"probe token ids must lie in [0, {vocab_size})")
    return x.long(), y.long()


@torch.no_grad()
def measure(
    adapter, old: nn.Module, new: nn.Module, probe: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """max |logits_new - logits_old| and losses on ``probe``, in fp32 and eval mode."""
    results = []
    for model in (old, new):
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        runner = model if dtype == torch.float32 else copy.deepcopy(model).float()
        was_training = runner.training
        runner.eval()
        try:
            x, y = probe[0].to(device), probe[1].to(device)
            logits, loss = adapter.logits_and_loss(runner, x, y)
        finally:
            runner.train(was_training)
        results.append((logits.float(), float(loss)))
    (logits_old, loss_old), (logits_new, loss_new) = results
    return {
        "max_abs_dlogits": float((logits_new - logits_old).abs().max()),
        "dloss": loss_new - loss_old,
        "loss_old": loss_old,
        "loss_new": loss_new,
    }

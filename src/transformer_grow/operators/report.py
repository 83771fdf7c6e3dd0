"""Growth results and the *measured* preservation report.

Every operator declares a kind (``exact``: function-preserving by construction; ``approximate``: close
by design; ``none``: no preservation attempted) and *measures* it: the maximum absolute difference of
the logits and the difference of the loss between the old and the grown model on one probe batch.

The measurement is a certificate, so it must not be able to mislead:

- it covers every position: the probe is the caller's (real validation windows) or seeded random
  tokens, always at the old model's *full* ``seq_len`` (a defect at late positions is seen);
- it is computed in fp32 and eval mode whatever the caller's context: autocast is disabled for every
  device type involved, TF32 matmuls are off, non-fp32 models are measured on an fp32 copy, dropout
  is off;
- the declared kind is checked against it: an ``exact`` operator whose max |dlogits| exceeds the
  tolerance raises :class:`GrowthCertificateError` with the numbers;
- a measurement that is not finite (NaN, inf) certifies nothing: it raises whatever the tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transformer_grow.errors import ConfigError, require
from transformer_grow.operators.map import ParamMap

KINDS = ("exact", "approximate", "none")
DEFAULT_PROBE_SEED = 1234
DEFAULT_PROBE_BATCH = 4  # random windows, each at the model's full seq_len
# Declared-exact check: max |dlogits| <= EXACT_TOL in fp32. The fp32 rounding of an exact rewrite is
# ~1e-6..1e-5 on trained models (clone x3: 4e-6); one weight off by 0.05 already gives ~6e-4.
EXACT_TOL = 1e-4


class GrowthCertificateError(ConfigError):
    """An operator declared ``exact`` measured above tolerance: the grown model is not what it claims.

    A :class:`ConfigError`, so the CLI prints one line; ``report`` holds the full measurement.
    """

    def __init__(self, message: str, report: GrowthReport):
        super().__init__(message)
        self.report = report


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
    tolerance: float | None = None  # the bound a declared-exact measurement was checked against

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
    vocab_size: int, seq_len: int, seed: int = DEFAULT_PROBE_SEED, batch: int = DEFAULT_PROBE_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random token batch ``(x, y)``, ``[batch, seq_len]``: every position is probed."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch, seq_len + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def check_probe(probe, vocab_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a user probe against the *old* model and return it as ``(x, y)``.

    ``probe`` is a pair ``(x, y)`` of ``[batch, time]`` token tensors, or one ``[batch, time + 1]``
    tensor of token windows (e.g. ``TokenData.val_windows``): ``x = w[:, :-1]``, ``y = w[:, 1:]``.
    Windows longer than ``seq_len + 1`` are cut to ``seq_len + 1`` (so windows at a larger target
    length serve every growth event); a pair must not exceed ``seq_len``.
    """
    if isinstance(probe, torch.Tensor):
        require(
            probe.dim() == 2 and probe.shape[1] >= 2,
            f"a probe tensor must be [batch, time + 1] token windows, got shape {tuple(probe.shape)}",
        )
        windows = probe[:, : seq_len + 1]
        probe = (windows[:, :-1], windows[:, 1:])
    require(
        isinstance(probe, (tuple, list)) and len(probe) == 2,
        "probe must be a pair (x, y) of token tensors or one [batch, time + 1] tensor of token windows",
    )
    x, y = (torch.as_tensor(t) for t in probe)
    require(
        x.dim() == 2 and x.shape == y.shape,
        f"probe x and y must both be [batch, time], got {tuple(x.shape)} and {tuple(y.shape)}",
    )
    require(x.shape[1] <= seq_len, f"probe length {x.shape[1]} exceeds the old model's seq_len={seq_len}")
    require(
        not x.is_floating_point() and not y.is_floating_point(),
        f"probe must hold integer token ids, got {x.dtype}",
    )
    require(int(x.min()) >= 0 and int(x.max()) < vocab_size, f"probe token ids must lie in [0, {vocab_size})")
    return x.long(), y.long()


@contextlib.contextmanager
def fp32_context(device_types):
    """Autocast off for every device type in ``device_types`` (and CPU), TF32 matmuls off: an "fp32"
    measurement inside a caller's ``torch.autocast(..., dtype=torch.bfloat16)`` stays fp32."""
    precision = torch.get_float32_matmul_precision()
    with contextlib.ExitStack() as stack:
        for device_type in sorted({"cpu", *device_types}):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)


def _fp32_eval_forward(adapter, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Logits (fp32) and loss of ``model`` in eval mode, on an fp32 copy if the model is not fp32."""
    param = next(model.parameters())
    runner = model if param.dtype == torch.float32 else copy.deepcopy(model).float()
    was_training = runner.training
    runner.eval()  # no dropout: a certificate must not depend on a random mask
    try:
        logits, loss = adapter.logits_and_loss(runner, x.to(param.device), y.to(param.device))
    finally:
        runner.train(was_training)
    return logits.float(), float(loss)


@torch.no_grad()
def measure(
    adapter, old: nn.Module, new: nn.Module, probe: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """max |logits_new - logits_old| and the losses on ``probe``, in fp32 and eval mode."""
    devices = {p.device.type for m in (old, new) for p in m.parameters()}
    with fp32_context(devices):
        logits_old, loss_old = _fp32_eval_forward(adapter, old, *probe)
        logits_new, loss_new = _fp32_eval_forward(adapter, new, *probe)
    return {
        "max_abs_dlogits": float((logits_new - logits_old.to(logits_new.device)).abs().max()),
        "dloss": loss_new - loss_old,
        "loss_old": loss_old,
        "loss_new": loss_new,
    }


@torch.no_grad()
def loss_at_length(adapter, model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The grown model's fp32 eval loss on ``probe`` (context growth: the probe at the *new* seq_len)."""
    with fp32_context({p.device.type for p in model.parameters()}):
        return _fp32_eval_forward(adapter, model, *probe)[1]


def certify(report: GrowthReport, exact_tol: float | None) -> None:
    """Check the declared kind against the measurement; raise :class:`GrowthCertificateError` if a
    declared-``exact`` growth measured max |dlogits| above ``exact_tol`` or a measurement is not
    finite. ``exact_tol=None`` records the numbers without checking the kind; a measurement that is not
    finite (NaN, inf) raises whatever ``exact_tol``: it certifies nothing."""
    if report.max_abs_dlogits is None:
        return
    finite = all(math.isfinite(v) for v in (report.max_abs_dlogits, report.loss_old, report.loss_new))
    where = (
        f"{report.method}: max|dlogits|={report.max_abs_dlogits:.3g} on the "
        f"{report.probe.get('source', '?')} probe {report.probe.get('shape', '?')}"
    )
    if not finite:
        raise GrowthCertificateError(f"{where}, loss {report.loss_old} -> {report.loss_new}: not finite, so "
                                     "nothing is certified", report)
    if exact_tol is None:
        return
    require(exact_tol > 0, f"exact_tol={exact_tol!r} must be > 0 (or None to skip the check)")
    report.tolerance = exact_tol
    if report.kind == "exact" and report.max_abs_dlogits > report.tolerance:
        raise GrowthCertificateError(
            f"{where} exceeds exact_tol={exact_tol:g} (fp32): declared 'exact' but the function changed",
            report,
        )

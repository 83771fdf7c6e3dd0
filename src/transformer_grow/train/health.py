"""Divergence a run can recover from: :class:`DivergenceMonitor` watches every step, :func:`checkpoint_health`
checks a checkpoint before a message names it as the one to resume.

A run can go wrong without a NaN (issue 22): the loss jumps far above its trend (a spike), the output
collapses to the uniform distribution (the loss pinned at ``ln(vocab)``: the weights blew up until the
normalisations saturate), or the weights grow without bound. The monitor sees the loss of each step
before its update and the weight norm after it, and names the first of these it finds
(thresholds in :class:`~transformer_grow.train.config.TrainConfig`). It only observes: it reads floats
the step has already produced plus one norm of the weights, draws no random numbers and changes no
tensor, so a healthy run's trajectory is the same with it as without it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from transformer_grow.train.config import TrainConfig

TREND_STEPS = 50  # the recent losses whose median is the trend a spike is measured against
SPIKE_MIN_NATS = 1.0  # a spike also lies this far above the trend: noise at small losses never counts
# nats: a loss this close to ln(vocab) is the uniform output's. A collapsed model (saturated normalisations,
# every logit equal) gives ln(vocab) up to fp32 rounding (5e-7 measured) on every batch; a model that learns
# a nearly uniform output (random tokens) stays further away as long as its logits differ at all.
UNIFORM_TOLERANCE = 1e-5
WORSE_THAN_UNIFORM = 2.0  # a checkpoint whose held-out loss exceeds this multiple of ln(vocab) is broken


@dataclass
class Divergence:
    """What the monitor found at (1-based) step ``step``: ``kind`` is ``"non-finite"``, ``"spike"``,
    ``"stall"`` or ``"weights"``; ``first_step`` the first step that showed it; ``applied`` whether the
    update of ``step`` was applied (only for ``"weights"``, measured after it)."""

    kind: str
    step: int
    first_step: int
    text: str
    applied: bool = False


def weight_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of the parameters (as ``clip_grad_norm_`` takes it, sharded parameters included)."""
    with torch.no_grad():
        return float(torch.nn.utils.get_total_norm([p.detach() for p in model.parameters()]))


class DivergenceMonitor:
    """The recent losses, the run of uniform-output losses and the reference weight norm of one run
    (checkpointed with the trainer, so that a resumed run watches as the uninterrupted one did)."""

    def __init__(self, vocab_size: int):
        self.uniform_loss = math.log(vocab_size)
        self.losses: deque[float] = deque(maxlen=TREND_STEPS)
        self.pinned = 0  # steps in a row at the uniform loss
        self.weight_ref: float | None = None  # the weight norm at the start (or after growth)
        self.last_weight_norm: float | None = None

    def restart(self, vocab_size: int, weight_ref: float | None = None) -> None:
        """Watch a new model (e.g. after growth): its loss level and weight norm are its own."""
        self.uniform_loss = math.log(vocab_size)
        self.losses.clear()
        self.pinned = 0
        self.weight_ref = weight_ref
        self.last_weight_norm = weight_ref

    def trend(self) -> float | None:
        """Median loss of the recent steps (``None`` before the first)."""
        return statistics.median(self.losses) if self.losses else None

    def check_loss(self, loss: float, step: int, cfg: TrainConfig) -> Divergence | None:
        """A spike or a stall shown by step ``step``'s (finite) loss under ``cfg``'s thresholds, else ``None``
        (and the loss joins the trend)."""
        trend = self.trend()
        if cfg.spike_ratio > 0 and trend is not None and loss > max(cfg.spike_ratio * trend, trend + SPIKE_MIN_NATS):
            return Divergence("spike", step, step, f"loss spike {loss:.4g} at step {step}, above {cfg.spike_ratio:g}x "
                                                   f"the median {trend:.4g} of the steps before (--spike-ratio)")
        pinned = self.pinned + 1 if abs(loss - self.uniform_loss) < UNIFORM_TOLERANCE else 0
        if cfg.stall_steps > 0 and pinned >= cfg.stall_steps:
            first = step - pinned + 1
            return Divergence("stall", step, first, f"loss pinned at the uniform value ln(vocab) = "
                                                    f"{self.uniform_loss:.4f} from step {first} to {step}: the output "
                                                    "no longer depends on the input (--stall-steps)")
        self.pinned = pinned
        self.losses.append(loss)
        return None

    def check_weights(self, norm: float, step: int, cfg: TrainConfig) -> Divergence | None:
        """Weights grown past ``cfg.max_weight_growth`` times the reference norm after step ``step``'s update."""
        if self.weight_ref is None:
            self.weight_ref = norm
        self.last_weight_norm = norm
        limit = cfg.max_weight_growth * self.weight_ref
        if math.isfinite(norm) and norm <= limit:
            return None
        return Divergence("weights", step, step, f"weight norm {norm:.4g} after step {step}, above "
                                                 f"{cfg.max_weight_growth:g}x its {self.weight_ref:.4g} at "
                                                 "the start (--max-weight-growth)", applied=True)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "pinned": self.pinned, "weight_ref": self.weight_ref,
                "last_weight_norm": self.last_weight_norm}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not isinstance(state, dict):  # a checkpoint from before the monitor: watch from here on
            return
        self.losses.extend(float(v) for v in state.get("losses") or [])
        self.pinned = int(state.get("pinned") or 0)
        for name in ("weight_ref", "last_weight_norm"):
            value = state.get(name)
            setattr(self, name, None if value is None else float(value))


def tensors_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or infinity, or ``None``."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def checkpoint_health(ckpt: Any, inputs: torch.Tensor, targets: torch.Tensor,
                      config: TrainConfig) -> tuple[float | None, str | None]:
    """``(held-out loss, None)`` for a healthy checkpoint, ``(loss or None, why not)`` otherwise.

    Healthy: finite weights and Adam moments, weights within ``max_weight_growth`` of the run's start,
    and a forward/backward of the fp32 model on the held batch (``inputs``, ``targets``; CPU, eval mode:
    no dropout, no random numbers) with a finite loss (neither a spike above the training loss recorded
    with the checkpoint nor above twice the uniform output's ``ln(vocab)``), finite gradients and an
    output that still depends on the input (not the same logits everywhere in a row).
    """
    from transformer_grow.train.checkpoint import model_from_checkpoint

    bad = tensors_finite(ckpt.model_state)
    if bad is not None:
        return None, f"non-finite weights ({bad})"
    for name, entry in (ckpt.optimizer_state or {}).items():
        bad = tensors_finite(entry)
        if bad is not None:
            return None, f"non-finite Adam {bad} of {name}"
    health = (ckpt.train_state or {}).get("health") or {}
    ref = health.get("weight_ref")
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in ckpt.model_state.values() if t.is_floating_point()))
    if config.max_weight_growth > 0 and ref and norm > config.max_weight_growth * ref:
        return None, f"weight norm {norm:.3g}, {norm / ref:.3g}x its start"
    model = model_from_checkpoint(ckpt).float()
    model.eval()
    out = model(inputs, targets)
    loss = float(out.loss.detach())
    if not math.isfinite(loss):
        return None, f"non-finite loss {loss} on held-out data"
    uniform = math.log(ckpt.model_config.vocab_size)
    if loss > WORSE_THAN_UNIFORM * uniform:  # no sane model, not even a fresh one, is this far from guessing
        return loss, f"held-out loss {loss:.4g}, above {WORSE_THAN_UNIFORM:g}x the uniform output's {uniform:.4f}"
    trend = health.get("trend")
    if config.spike_ratio > 0 and trend is not None and loss > max(config.spike_ratio * trend, trend + SPIKE_MIN_NATS):
        return loss, f"held-out loss {loss:.4g}, far above the training loss {trend:.4g} of its steps"
    logits = out.logits.detach()
    if bool(((logits.amax(-1) - logits.amin(-1)) <= 1e-6 * (1 + logits.abs().amax(-1))).all()):
        return loss, f"uniform output, loss {loss:.4f} = ln(vocab)"
    out.loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
            return loss, f"non-finite gradient of {name} on held-out data"
    return loss, None

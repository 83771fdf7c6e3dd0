"""After a divergence: which checkpoint to resume, with which learning rate, skipping which batches.

:func:`find_recovery` checks the run's checkpoints (the ring of :mod:`~transformer_grow.train.ring`,
newest first) that come from before the divergence with
:func:`~transformer_grow.train.health.checkpoint_health` and takes the first healthy one; the newest
need not be: a checkpoint written while the weights were already blowing up (before the loss showed
it) fails the check. :func:`recovery_line` is the one line the command line prints.

The learning rate: a resumed run takes ``--lr`` as its new peak, and every later step's rate is at most
that. The rates in use between the checkpoint and the divergence follow the schedule, which rises
through warmup and then falls, so the lowest of them is the rate of the first step after the checkpoint
or of the step that diverged. A tenth of that lowest rate is a real reduction for every step the
resumed run takes, even when the divergence happened early in a warmup that never reached the peak
(a tenth of the peak could then lie above the rate that diverged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_grow.errors import ConfigError
from transformer_grow.train.checkpoint import CHECKPOINT_DIRNAME, load_checkpoint, read_checkpoint_meta
from transformer_grow.train.health import checkpoint_health
from transformer_grow.train.outcome import TrainingDiverged
from transformer_grow.train.ring import ring_entries

if TYPE_CHECKING:
    from transformer_grow.train.trainer import Trainer

LR_REDUCTION = 10  # the suggested peak LR is this much below the lowest LR in use before the divergence
MAX_CHECKED = 8  # checkpoints health-checked at most (each is a CPU forward/backward)


@dataclass
class Recovery:
    """Where to resume after a divergence: ``checkpoint`` (``None``: no healthy one), its ``step`` and
    held-out ``loss``; ``rejected``: newer checkpoints that failed the check, with why; ``lr``: the
    suggested peak learning rate, a tenth of ``lr_used`` (the lowest in use since the checkpoint);
    ``skip_batches``: the run's skipped batches plus the batches trained on since the checkpoint."""

    checkpoint: Path | None
    step: int
    loss: float | None
    lr: float
    lr_used: float
    skip_batches: list[str]
    skipped: tuple[int, int]
    rejected: list[str] = field(default_factory=list)


def _candidates(run_dir: Path, before: int) -> list[tuple[int, Path]]:
    """Checkpoints of ``run_dir`` from before step ``before``, newest first: the ring, else the latest."""
    entries = ring_entries(run_dir)
    if not entries and (run_dir / CHECKPOINT_DIRNAME).is_dir():
        try:
            entries = [(int(read_checkpoint_meta(run_dir)["train_state"]["step"]), run_dir / CHECKPOINT_DIRNAME)]
        except ConfigError:
            entries = []
    return [e for e in reversed(entries) if e[0] < before]


def find_recovery(trainer: Trainer, error: TrainingDiverged) -> Recovery | None:
    """The :class:`Recovery` for ``error`` raised by ``trainer`` (``None`` without a run directory)."""
    if trainer.out_dir is None or error.divergence is None:
        return None
    div, cfg = error.divergence, trainer.config
    inputs, targets = trainer.held_batch()
    rejected: list[str] = []
    # From before the first step that showed the problem; the check decides about the one just before it (its
    # weights gave that step's loss: a bad batch leaves them healthy, a too-high learning rate does not).
    for step, path in _candidates(trainer.out_dir, div.first_step)[:MAX_CHECKED]:
        try:
            ckpt = load_checkpoint(path)
        except ConfigError as e:
            rejected.append(f"step {step} ({' '.join(str(e).split())[:80]})")
            continue
        loss, why = checkpoint_health(ckpt, inputs, targets, cfg)
        if why is not None:
            rejected.append(f"step {step} ({why})")
            continue
        # the rates of the first step after the checkpoint and of the step that diverged (module docstring)
        rates = [x for x in ((ckpt.train_state.get("health") or {}).get("next_lr"), error.lr)
                 if isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
        return _recovery(path, step, loss, min(rates, default=cfg.lr), cfg, div.step, rejected)
    return _recovery(None, 0, None, error.lr if error.lr is not None else cfg.lr, cfg, div.step, rejected)


def _recovery(path: Path | None, step: int, loss: float | None, lr_used: float, cfg, diverged_at: int,
              rejected: list[str]) -> Recovery:
    # batch numbers (1-based) of the steps from the checkpoint's next to the one that diverged; both were
    # trained on, so no skipped range holds them: the run's ranges lie before, after or inside (absorbed)
    first, last = cfg.batch_index(step) + 1, cfg.batch_index(diverged_at - 1) + 1
    ranges = sorted([r for r in cfg.skip_ranges() if not first <= r[0] <= last] + [(first, last)])
    return Recovery(path, step, loss, lr_used / LR_REDUCTION, lr_used, [f"{a}:{b}" for a, b in ranges],
                    (first, last), rejected)


def recovery_line(error: TrainingDiverged, command: Callable[[Path], str]) -> str:
    """One line: what diverged, the checkpoint to resume (``command(path)`` resumes it) with a lower
    learning rate and, optionally, skipped batches."""
    text = " ".join(str(error).split())
    rec = error.recovery
    if rec is None:
        return f"training diverged: {text}; resume the last checkpoint with a lower learning rate (--lr)"
    rejected = f"; newer ones fail the health check: {', '.join(rec.rejected)}" if rec.rejected else ""
    if rec.checkpoint is None:
        return (f"training diverged: {text}; no checkpoint from before it is healthy{rejected}; start the run again "
                f"(in a new directory) with a learning rate {LR_REDUCTION}x below the {rec.lr_used:.3g} that diverged: "
                f"--lr {rec.lr:.3g}")
    first, last = rec.skipped
    batches = f"batch {first}" if first == last else f"batches {first}-{last}"
    loss = "n/a" if rec.loss is None else f"{rec.loss:.4f}"
    return (f"training diverged: {text}; the newest healthy checkpoint from before it is step {rec.step} "
            f"({rec.checkpoint}: finite weights, Adam moments and gradients, held-out loss {loss}){rejected}; resume "
            f"it with a learning rate {LR_REDUCTION}x below the lowest in use since then ({rec.lr_used:.3g}): "
            f"{command(rec.checkpoint)} --lr {rec.lr:.3g} (to also skip the {batches} trained on since, add "
            f"--skip-batches {','.join(rec.skip_batches)})")

"""The growth manager's validation windows when some of their targets are not counted.

Windows held out of (or read from) a loader of Hugging Face rows may mark targets the loss skips
(``labels == -100``, padding, the missing last target of a row of exactly ``seq_len`` tokens) with the
encoding of :mod:`~transformer_grow.data.rows` (negative entries). Plain windows take the usual path
(:func:`~transformer_grow.run.budget.evaluate_fixed_windows` with the run's objective), unchanged;
marked ones are scored here: the mean cross-entropy over the counted targets only, and growth
certificates probe their token ids.
"""

from __future__ import annotations

import torch

from transformer_grow.data.rows import split_windows, tokens_of
from transformer_grow.run.budget import evaluate_fixed_windows


def is_plain(windows: torch.Tensor) -> bool:
    """Whether every target of ``windows`` counts (no marked entry)."""
    return int(windows.min()) >= 0


def window_loss(trainer, model: torch.nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    """Validation loss of ``model`` on the manager's fixed ``windows`` under ``trainer``'s objective."""
    if is_plain(windows):
        return evaluate_fixed_windows(model, windows, batch_size, trainer.device, trainer.window_loss)
    if not model.config.causal:  # masked LM reads the windows' first T tokens and draws its own targets
        return evaluate_fixed_windows(model, tokens_of(windows), batch_size, trainer.device, trainer.window_loss)
    return counted_loss(model, windows, batch_size, trainer.device)


def probe_of(windows: torch.Tensor):
    """A growth certificate's probe: the windows themselves, or their ``(x, y)`` (targets not counted: -1)."""
    return windows if is_plain(windows) else split_windows(windows)


@torch.no_grad()
def counted_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy over the counted targets of marked ``windows`` ``[n, T + 1]`` (fp32, eval
    mode, restored after). A model with learned positions and a shorter context reads each window as
    consecutive chunks of its own length, as :func:`~transformer_grow.run.budget.evaluate_fixed_windows`."""
    config, length = model.config, windows.shape[1] - 1
    size = config.seq_len if config.pos == "learned" and config.seq_len < length else length
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=device)
        counted = 0
        for start in range(0, length, size):
            x, y = split_windows(windows[:, start:min(start + size, length) + 1])
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                n = int((yb != -1).sum())
                if n:
                    total += model(xb.to(device), yb.to(device)).loss.double() * n
                    counted += n
        return float(total) / counted
    finally:
        model.train(was_training)

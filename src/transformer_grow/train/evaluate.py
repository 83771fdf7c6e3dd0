"""Validation loss on fixed held-out windows (fp32, no grad, eval mode)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def evaluate_windows(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy over ``windows`` (``[n, seq_len + 1]`` token ids).

    Every window contributes ``seq_len`` predictions, so the mean over windows of their mean losses
    is the mean over all predicted tokens. Runs in fp32 (no autocast) with ``model.eval()``; the
    model's previous training mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=device)
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            out = model(chunk[:, :-1], chunk[:, 1:])
            total += out.loss.double() * chunk.shape[0]
        return float(total) / windows.shape[0]
    finally:
        model.train(was_training)

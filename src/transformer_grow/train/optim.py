"""AdamW construction for the trainer (state by name lives in :mod:`transformer_grow.optim_state`)."""

from __future__ import annotations

import torch
from torch import nn

from transformer_grow.optim_state import decays
from transformer_grow.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters in two groups (decayed / not decayed).

    The fused kernel is used on CUDA and on the CPU (on a 10M-parameter model on this project's 2-core
    CPU one AdamW step took 7.5 ms fused against 26.5 ms ``foreach``, one thread); elsewhere (MPS)
    the multi-tensor (``foreach``) implementation. The learning rate is set by the trainer before every step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if decays(p)], "weight_decay": config.weight_decay},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), **kwargs)

"""Masked language modelling: the training objective of a bidirectional model (BERT).

A causal LM learns the next token; a bidirectional model sees every position, so it learns to restore
corrupted inputs instead (Devlin et al. 2019, sec. 3.1, "Task #1: Masked LM"): ``probability`` (15%)
of the positions are chosen; a chosen position's input becomes ``[MASK]`` 80% of the time, a random
token 10% of the time and stays as it is 10% of the time; the loss is the cross-entropy of the
original token at the chosen positions only (every other target is -1, the ignore index of
:meth:`GPT.forward <transformer_grow.model.GPT.forward>`).

The trainer applies :meth:`MaskedLM.train_batch` to the batch of every step (the data stays the same
token windows as for a causal LM: ``x`` is taken, the shifted ``y`` dropped). Masks come from a
generator seeded by ``(seed, step, rank)``, so a resumed run draws the masks the uninterrupted one
drew. Validation masks the fixed windows with one fixed seed (:func:`evaluate_masked`): every
evaluation, of every model of a growth run, is on the same masked inputs and the same targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformer_grow.errors import require
from transformer_grow.model import ModelConfig

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen positions; the remaining 10% keep their token
EVAL_MASK_SEED = 20190524  # the fixed mask of validation windows


@dataclass(frozen=True)
class MaskedLM:
    """BERT's masking recipe (module docstring) for one model and one data vocabulary.

    Attributes:
        mask_token_id: the input id that replaces 80% of the chosen tokens.
        vocab_size: random replacements are drawn from ids ``0 .. vocab_size - 1`` (the data's tokens).
        probability: share of positions chosen for prediction.
    """

    mask_token_id: int
    vocab_size: int
    probability: float = 0.15

    def mask(self, tokens: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` for ``tokens`` [B, T]: corrupted inputs, and the original token at every
        chosen position (-1 elsewhere). At least one position is chosen (else the mean loss is 0/0)."""
        cpu = tokens.cpu()
        draw = torch.rand(cpu.shape, generator=generator)
        chosen = draw < self.probability
        if not chosen.any():
            chosen.view(-1)[draw.view(-1).argmin()] = True
        action = torch.rand(cpu.shape, generator=generator)
        replacement = torch.randint(0, self.vocab_size, cpu.shape, generator=generator, dtype=cpu.dtype)
        inputs = torch.where(chosen & (action < MASK_SHARE), self.mask_token_id, cpu)
        random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
        inputs = torch.where(random, replacement, inputs)
        targets = torch.where(chosen, cpu, -1)
        return inputs.to(tokens.device), targets.to(tokens.device)

    def train_batch(self, x: torch.Tensor, step: int, seed: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked batch of training step ``step`` (0-based) for the token windows ``x`` [B, T]."""
        return self.mask(x, _generator(seed, step, rank))

    def eval_batch(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed masked inputs and targets of validation ``windows`` [n, T + 1] (their first T tokens)."""
        return self.mask(windows[:, :-1], torch.Generator().manual_seed(EVAL_MASK_SEED))


def _generator(seed: int, step: int, rank: int) -> torch.Generator:
    # One stream per (seed, step, rank), none shared with the data order (which is seeded by seed alone).
    mixed = (seed * 1_000_003 + step) * 4099 + rank + 1
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def resolve_objective(objective: str, model: ModelConfig) -> str:
    """``clm`` or ``mlm`` for ``objective`` (``auto``: ``mlm`` for a bidirectional model, else ``clm``);
    refuses an objective the model cannot learn (a bidirectional model sees the next token)."""
    if objective == "auto":
        return "clm" if model.causal else "mlm"
    require(objective != "clm" or model.causal,
            "objective='clm' needs a causal model; this one is bidirectional (causal=False) and sees the next "
            "token: use objective='mlm' (or 'auto')")
    require(objective != "mlm" or not model.causal,
            "objective='mlm' needs a bidirectional model (causal=False); this one is causal: use objective='clm' "
            "(or 'auto')")
    return objective


def masked_lm_for(objective: str, mask_token_id: int | None, probability: float, model: ModelConfig,
                  data_vocab_size: int) -> MaskedLM | None:
    """The :class:`MaskedLM` of a run (``None`` for a causal LM), refusing a ``[MASK]`` id that is not in
    the model's vocabulary, or (by default: the model's last id) one the data uses as a token."""
    if resolve_objective(objective, model) == "clm":
        return None
    if mask_token_id is None:
        mask_token_id = model.vocab_size - 1
        require(mask_token_id >= data_vocab_size,
                f"masked LM: the default [MASK] id is the model's last id {mask_token_id}, which the data uses "
                f"(its vocabulary has {data_vocab_size} tokens); set mask_token_id (your tokenizer's [MASK] id) "
                f"or give the model a vocab_size above {data_vocab_size}")
    require(0 <= mask_token_id < model.vocab_size,
            f"mask_token_id={mask_token_id} is not in the model's vocabulary (0 .. {model.vocab_size - 1})")
    return MaskedLM(mask_token_id, data_vocab_size, probability)


@torch.no_grad()
def evaluate_masked(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device,
                    objective: MaskedLM) -> float:
    """Mean masked-LM cross-entropy over the chosen positions of ``windows`` ([n, seq_len + 1]) under the
    fixed validation mask: fp32 (no autocast), no grad, ``model.eval()`` (its mode is restored)."""
    inputs, targets = objective.eval_batch(windows)
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=device)
        counted = 0
        for x, y in zip(inputs.split(batch_size), targets.split(batch_size)):
            n = int((y != -1).sum())
            if n == 0:
                continue
            out = model(x.to(device), y.to(device))
            total += out.loss.double() * n
            counted += n
        return float(total) / counted
    finally:
        model.train(was_training)

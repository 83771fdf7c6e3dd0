"""Token arrays and how training/validation windows are drawn from them.

Training batches are a pure function of ``(seed, step)`` (plus batch size, sequence length and the
data): window starts come from ``numpy.random.Generator(PCG64([seed, step]))``. Resuming a run at
step ``k`` therefore reproduces exactly the batches an uninterrupted run would have seen, with no
data-loader state to save. With ``world_size`` ranks, rank ``r`` takes the ``r``-th contiguous slice
of the same global batch, so all ranks together see exactly the single-process batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from transformer_grow.data.tokenizer import Tokenizer
from transformer_grow.errors import ConfigError, require


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class TokenData:
    """Tokenized corpus: 1-D train and validation token arrays (usually read-only memmaps).

    Attributes:
        train: 1-D integer array of training tokens (documents concatenated).
        val: 1-D integer array of validation tokens.
        vocab_size: number of token ids; every token is in ``[0, vocab_size)``.
        tokenizer: the :class:`Tokenizer`, or ``None`` for pre-tokenized input.
        fingerprint: hash of corpus contents, split and tokenizer; goes into run metadata so a
            resumed or compared run can check it sees the same data.
        description: human-readable summary of where the tokens came from.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer: Tokenizer | None = None
    fingerprint: str = "in-memory"
    description: str = ""
    _offsets: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("train", "val"):
            array = getattr(self, name)
            require(isinstance(array, np.ndarray) and array.ndim == 1 and np.issubdtype(array.dtype, np.integer),
                    f"TokenData.{name} must be a 1-D integer numpy array")
            require(len(array) > 0, f"TokenData.{name} is empty: the {name} split has no tokens")
        require(_is_int(self.vocab_size) and self.vocab_size > 0,
                f"vocab_size={self.vocab_size!r} is not allowed; it must be a positive integer")

    def metadata(self) -> dict[str, Any]:
        """JSON-ready facts about this data for run metadata."""
        return {
            "fingerprint": self.fingerprint,
            "description": self.description,
            "vocab_size": int(self.vocab_size),
            "tokenizer": None if self.tokenizer is None else self.tokenizer.kind,
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
        }

    def check_seq_len(self, seq_len: int) -> None:
        """Raise :class:`ConfigError` unless both splits hold at least ``seq_len + 1`` tokens."""
        require(_is_int(seq_len) and seq_len >= 1, f"seq_len={seq_len!r} is not allowed; it must be an integer >= 1")
        shortest = min(len(self.train), len(self.val))
        if seq_len + 1 > shortest:
            raise ConfigError(
                f"seq_len={seq_len} needs windows of {seq_len + 1} tokens, but the train split has "
                f"{len(self.train)} tokens and the val split has {len(self.val)}; use seq_len <= {shortest - 1} "
                f"or a larger corpus")

    def _window_offsets(self, seq_len: int) -> np.ndarray:
        if seq_len not in self._offsets:
            self._offsets[seq_len] = np.arange(seq_len + 1, dtype=np.int64)
        return self._offsets[seq_len]

    def batch_starts(self, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
        """Start positions (in ``train``) of the global batch for ``(seed, step)``: shape ``[batch_size]``."""
        require(_is_int(step) and step >= 0, f"step={step!r} is not allowed; it must be an integer >= 0")
        require(_is_int(seed) and seed >= 0, f"seed={seed!r} is not allowed; it must be an integer >= 0")
        require(_is_int(batch_size) and batch_size >= 1,
                f"batch_size={batch_size!r} is not allowed; it must be an integer >= 1")
        self.check_seq_len(seq_len)
        rng = np.random.Generator(np.random.PCG64([int(seed), int(step)]))
        # A window is seq_len + 1 tokens (inputs plus the next-token targets).
        return rng.integers(0, len(self.train) - seq_len, size=batch_size, dtype=np.int64)

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``x`` and targets ``y`` (``x`` shifted by one) for training step ``step``.

        ``batch_size`` is the global batch; this rank gets rows
        ``[rank * batch_size // world_size, (rank + 1) * batch_size // world_size)`` of it.
        Returns two contiguous ``torch.long`` tensors of shape ``[batch_size // world_size, seq_len]``.
        """
        require(_is_int(world_size) and world_size >= 1,
                f"world_size={world_size!r} is not allowed; it must be an integer >= 1")
        require(_is_int(rank) and 0 <= rank < world_size,
                f"rank={rank!r} is not allowed; it must lie in [0, {world_size - 1}] for world_size={world_size}")
        require(_is_int(batch_size) and batch_size >= 1,
                f"batch_size={batch_size!r} is not allowed; it must be an integer >= 1")
        require(batch_size % world_size == 0,
                f"batch_size={batch_size} is not divisible by world_size={world_size}; every rank needs the "
                f"same share of the global batch")
        starts = self.batch_starts(step, batch_size, seq_len, seed)
        per_rank = batch_size // world_size
        starts = starts[rank * per_rank:(rank + 1) * per_rank]
        windows = self._gather(self.train, starts, seq_len)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def val_windows(self, seq_len: int, n_windows: int) -> torch.Tensor:
        """``[n_windows, seq_len + 1]`` validation windows with starts evenly spaced over ``val``.

        Fixed for given data and arguments (no randomness). Windows overlap only when ``val`` holds
        fewer than ``n_windows * (seq_len + 1)`` tokens.
        """
        require(_is_int(n_windows) and n_windows >= 1,
                f"n_windows={n_windows!r} is not allowed; it must be an integer >= 1")
        self.check_seq_len(seq_len)
        last_start = len(self.val) - (seq_len + 1)
        starts = np.linspace(0, last_start, num=n_windows).round().astype(np.int64)
        return self._gather(self.val, starts, seq_len)

    def _gather(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
        """One fancy index over the (memmapped) tokens: ``[len(starts), seq_len + 1]`` as int64."""
        index = starts[:, None] + self._window_offsets(seq_len)[None, :]
        return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))

"""Any PyTorch iterable of token batches as the batch source the trainer needs.

The trainer asks its data for ``batch(step, batch_size, seq_len, seed)`` and ``val_windows(seq_len,
n)`` (see :class:`~transformer_grow.data.tokens.TokenData`). :class:`IterableTokens` answers both
from ordinary iterables, e.g. a ``torch.utils.data.DataLoader``:

>>> data = IterableTokens(train_loader, vocab_size=32000, eval_data=val_loader)
>>> x, y = data.batch(step=0, batch_size=8, seq_len=256, seed=0)

Each item of the iterable is one of

* a ``LongTensor [B, T + 1]`` of token windows (inputs and next-token targets),
* an ``(x, y)`` pair of ``[B, T]`` tensors with ``y`` = ``x`` shifted by one token,
* a dict with ``input_ids [B, L]`` (the Hugging Face convention: labels are the inputs, shifted
  inside the model), read as windows of ``L`` tokens.

Rows are pooled: a step takes ``batch_size`` windows whatever the loader's ``B``, and a row longer
than the window asked for gives several windows (a row of ``T + 1`` tokens holds ``T // seq_len``
consecutive windows of ``seq_len + 1`` tokens, overlapping by the one target token; a stage with half
the context length and twice the sequences per step reads the same tokens per step).

Order, not ``(seed, step)``: batches come in the iterable's order (``seed`` is not used), so
``batch`` must be asked for steps 0, 1, 2, ... in turn. Asking for a later step (a resumed run)
skips the rows of the steps in between, counted with the current batch shape: exact when the
iterable repeats its order (no shuffling, or a seeded sampler) and every step so far read as many
rows as this one (true when tokens per step stay fixed and ``seq_len`` divides the row length).
An exhausted iterable is started again (a new epoch); a one-shot iterator that runs dry is refused.

Validation windows come from ``eval_data``; without it the first rows of the training iterable are
held out (never trained on) as validation windows, so ``val_windows`` must come before the first
batch (the growth manager asks for them first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from transformer_grow.errors import ConfigError, require


def rows_of(item: Any) -> torch.Tensor:
    """The ``[B, L]`` token rows of one item of a loader (module docstring), as int64 on the CPU."""
    if isinstance(item, dict):
        require("input_ids" in item, f"a batch dict needs 'input_ids'; got keys {sorted(map(str, item))}")
        rows = item["input_ids"]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = (torch.as_tensor(t) for t in item)
        require(x.shape == y.shape and x.ndim == 2,
                f"an (x, y) batch needs two [B, T] tensors of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
        require(torch.equal(x[:, 1:], y[:, :-1]),
                "an (x, y) batch needs y = x shifted by one token (next-token targets); these are not")
        rows = torch.cat([x, y[:, -1:]], dim=1)
    else:
        rows = item
    require(isinstance(rows, torch.Tensor), f"a batch must be a tensor, an (x, y) pair or a dict with input_ids; "
                                            f"got {type(item).__name__}")
    require(rows.ndim == 2 and rows.shape[1] >= 2 and not rows.is_floating_point() and not rows.is_complex(),
            f"token batches must be integer tensors of shape [B, T + 1] with T >= 1; got {rows.dtype} "
            f"{tuple(rows.shape)}")
    return rows.to(device="cpu", dtype=torch.long)


class _RowStream:
    """Rows of an iterable in order, one epoch after another."""

    def __init__(self, iterable: Iterable, what: str):
        require(isinstance(iterable, Iterable), f"{what} must be an iterable of token batches (e.g. a DataLoader); "
                                                f"got {type(iterable).__name__}")
        self.iterable, self.what = iterable, what
        self._it: Iterator | None = iter(iterable)
        self.one_shot = self._it is iterable  # a generator or iterator: it cannot start again
        self._rows: list[torch.Tensor] = []  # rows drawn and not yet consumed
        self.row_len: int | None = None
        self.epochs = 0

    def _draw(self, restart: bool = True) -> bool:
        """Append the next batch's rows; at the end of an epoch start the next one (``restart``) or
        return False."""
        for attempt in range(2):
            if self._it is None:
                self._it = iter(self.iterable)
            try:
                rows = rows_of(next(self._it))
                break
            except StopIteration:
                self._it = None
                self.epochs += 1
                if not restart:
                    return False
                if attempt == 1 or self.one_shot:
                    raise ConfigError(f"{self.what} ran out of batches and cannot start again (a one-shot "
                                      "iterator or an empty iterable); pass a re-iterable such as a DataLoader, or "
                                      "more data for this budget") from None
        if self.row_len is None:
            self.row_len = rows.shape[1]
        require(rows.shape[1] == self.row_len, f"{self.what} changed its row length from {self.row_len} to "
                                               f"{rows.shape[1]} tokens; every batch needs rows of one length")
        self._rows.extend(rows)
        return True

    def peek_row_len(self) -> int:
        if self.row_len is None:
            self._draw()
        return self.row_len

    def take(self, n: int) -> torch.Tensor:
        """The next ``n`` rows ``[n, row_len]``."""
        while len(self._rows) < n:
            self._draw()
        rows, self._rows = self._rows[:n], self._rows[n:]
        return torch.stack(rows)


def _windows(rows: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Every row cut into ``(L - 1) // seq_len`` consecutive windows of ``seq_len + 1`` tokens."""
    per_row = (rows.shape[1] - 1) // seq_len
    pieces = [rows[:, i * seq_len:(i + 1) * seq_len + 1] for i in range(per_row)]
    return torch.stack(pieces, dim=1).reshape(-1, seq_len + 1)


class IterableTokens:
    """The trainer's batch source over iterables of token batches (module docstring).

    Args:
        train_data: the training batches.
        vocab_size: the model's vocabulary; a token outside ``[0, vocab_size)`` is refused.
        eval_data: the validation batches (default: rows of ``train_data`` held out).
    """

    def __init__(self, train_data: Iterable, vocab_size: int, eval_data: Iterable | None = None):
        require(isinstance(vocab_size, int) and vocab_size > 0, f"vocab_size={vocab_size!r} must be a positive integer")
        self.vocab_size = vocab_size
        self._train = _RowStream(train_data, "train_data")
        self._eval = None if eval_data is None else _RowStream(eval_data, "eval_data")
        self._train.peek_row_len()  # draws the first batch: checked now, trained on later like every other
        first = self._check_tokens(torch.stack(self._train._rows), "train_data")
        self.fingerprint = "iterable-" + hashlib.blake2b(first.numpy().tobytes(), digest_size=8).hexdigest()
        self.description = f"an iterable of token batches (rows of {self._train.row_len} tokens)"
        self._next_step = 0
        self._last: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._val: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def row_len(self) -> int:
        """Tokens per row of ``train_data`` (a ``[B, T + 1]`` loader: ``T + 1``)."""
        return self._train.peek_row_len()

    def _check_tokens(self, rows: torch.Tensor, what: str) -> torch.Tensor:
        low, high = int(rows.min()), int(rows.max())
        bad = low if low < 0 else high
        require(low >= 0 and high < self.vocab_size,
                f"{what} holds token id {bad}, outside the model's vocabulary [0, {self.vocab_size})")
        return rows

    def check_seq_len(self, seq_len: int) -> None:
        """:class:`ConfigError` unless a row holds at least one window of ``seq_len + 1`` tokens."""
        require(isinstance(seq_len, int) and seq_len >= 1, f"seq_len={seq_len!r} must be an integer >= 1")
        streams = [(self._train, "train_data")] + ([(self._eval, "eval_data")] if self._eval is not None else [])
        for stream, what in streams:
            length = stream.peek_row_len()
            require(length >= seq_len + 1, f"{what} rows hold {length} tokens; a model of seq_len={seq_len} needs "
                                           f"windows of {seq_len + 1}: use rows of [B, {seq_len + 1}] or a model "
                                           f"with seq_len <= {length - 1}")

    def _rows_per_step(self, batch_size: int, seq_len: int) -> int:
        per_row = (self.row_len - 1) // seq_len
        return -(-batch_size // per_row)

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``[batch_size // world_size, seq_len]`` of step ``step`` (this rank's rows).

        Steps come in order; a later step skips the rows in between (module docstring); an earlier one
        than the last is refused (an iterable cannot go back). ``seed`` is not used: the order is the
        iterable's.
        """
        require(isinstance(step, int) and step >= 0, f"step={step!r} must be an integer >= 0")
        require(batch_size % world_size == 0 and 0 <= rank < world_size,
                f"batch_size={batch_size} must split evenly over world_size={world_size} (rank {rank})")
        self.check_seq_len(seq_len)
        if self._last is not None and self._last[0] == step:  # the same step again (e.g. a retry)
            windows = self._last[1]
        else:
            require(step >= self._next_step, f"step {step} was asked for after step {self._next_step - 1}; an "
                                             "iterable cannot go back (restart from a fresh IterableTokens)")
            rows = self._rows_per_step(batch_size, seq_len)
            if step > self._next_step:  # a resumed run: skip what the earlier steps read
                self._train.take(rows * (step - self._next_step))
            taken = self._check_tokens(self._train.take(rows), "train_data")
            windows = _windows(taken, seq_len)[:batch_size]
            self._next_step = step + 1
            self._last = (step, windows)
        per_rank = batch_size // world_size
        mine = windows[rank * per_rank:(rank + 1) * per_rank]
        return mine[:, :-1].contiguous(), mine[:, 1:].contiguous()

    def val_windows(self, seq_len: int, n_windows: int) -> torch.Tensor:
        """Up to ``n_windows`` validation windows ``[n, seq_len + 1]``: from ``eval_data`` (its first
        rows, read once), or held out from the start of ``train_data``."""
        require(isinstance(n_windows, int) and n_windows >= 1, f"n_windows={n_windows!r} must be an integer >= 1")
        self.check_seq_len(seq_len)
        key = (seq_len, n_windows)
        if key not in self._val:
            if self._eval is not None:
                self._val[key] = self._read_eval(seq_len, n_windows)
            else:
                require(self._next_step == 0 and not self._val,
                        "validation windows held out of train_data must be taken before the first batch (and once); "
                        "pass eval_data for more")
                rows = self._check_tokens(self._train.take(self._rows_per_step(n_windows, seq_len)), "train_data")
                self._val[key] = _windows(rows, seq_len)[:n_windows]
        return self._val[key]

    def _read_eval(self, seq_len: int, n_windows: int) -> torch.Tensor:
        """The first windows of one pass over ``eval_data`` (fewer if it holds fewer); read once."""
        stream = self._eval
        need = -(-n_windows // ((stream.peek_row_len() - 1) // seq_len))
        while len(stream._rows) < need and stream._draw(restart=False):
            pass
        rows = self._check_tokens(torch.stack(stream._rows[:need]), "eval_data")
        return _windows(rows, seq_len)[:n_windows]

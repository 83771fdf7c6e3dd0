"""Any PyTorch iterable of token batches as the batch source the trainer needs.

The trainer asks its data for ``batch(step, batch_size, seq_len, seed)`` and ``val_windows(seq_len,
n)`` (see :class:`~transformer_grow.data.tokens.TokenData`). :class:`IterableTokens` answers both
from ordinary iterables, e.g. a ``torch.utils.data.DataLoader``:

>>> data = IterableTokens(train_loader, vocab_size=32000, eval_data=val_loader)
>>> x, y = data.batch(step=0, batch_size=8, seq_len=256, seed=0)

Each item of the iterable is one of (:mod:`~transformer_grow.data.rows`)

* a ``LongTensor [B, T + 1]`` of token windows (inputs and next-token targets),
* an ``(x, y)`` pair of ``[B, T]`` tensors with ``y`` = ``x`` shifted by one token,
* a dict in the Hugging Face convention: ``input_ids [B, L]`` (labels are the inputs, shifted inside
  the model), optional ``labels`` (-100: not a target) and ``attention_mask`` (padding, left or right:
  never a target). Targets that are not counted are -1 in ``y`` (the loss skips them).

Rows are pooled: a step takes ``batch_size`` windows of ``seq_len`` inputs whatever the loader's
``B``, and a row longer than that gives several: a row of ``L`` tokens holds ``L // seq_len``
consecutive windows overlapping by one token (a ``[B, T + 1]`` row: ``T // seq_len`` windows of
``seq_len`` targets; a row of exactly ``seq_len`` tokens, HF's convention: one window of ``seq_len``
inputs and ``seq_len - 1`` targets; a stage with half the context length and twice the sequences per
step reads the same rows per step). FLOPs and tokens count the inputs a step processes. Rows with an
``attention_mask`` may change their length from batch to batch (dynamic padding): each gives windows
up to its last token, the rest of the last one padding; a window or row without a counted target is
skipped (it would teach nothing, and its loss would be 0/0). Other rows have one length throughout,
at least ``seq_len``.

Order, not ``(seed, step)``: batches come in the iterable's order (``seed`` is not used), so
``batch`` must be asked for steps 0, 1, 2, ... in turn. Asking for a later step (a resumed run)
reads and drops the windows of the steps in between, with the current batch shape: exact when the
iterable repeats its order (no shuffling, or a seeded sampler) and every step so far had this shape.
An exhausted iterable is started again (a new epoch); a one-shot iterator that runs dry is refused.

Validation windows come from ``eval_data``; without it the first rows of the training iterable are
held out as validation windows, and are never trained on: they must come from its first pass (which
must hold at least one more row to train on; else one line asks for ``eval_data``), and every later
row equal to a held-out one is skipped (a loader repeating its order, or shuffling, meets them again).
So ``val_windows`` must come before the first batch (the growth manager asks for them first).
Validation windows whose targets are not all counted carry the encoding of :mod:`~transformer_grow.data.rows`
(negative entries): ``val_windows(..., labelled=True)`` asks for them (the growth manager reads them);
without it they are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import torch

from transformer_grow.data.rows import cut_windows, has_target, rows_of, split_windows
from transformer_grow.errors import ConfigError, require


class _RowStream:
    """Encoded rows of an iterable in order (:mod:`~transformer_grow.data.rows`), one epoch after another;
    rows without a counted target, and rows held out (``exclude``), are skipped."""

    def __init__(self, iterable: Iterable, what: str, vocab_size: int, causal: bool):
        require(isinstance(iterable, Iterable), f"{what} must be an iterable of token batches (e.g. a DataLoader); "
                                                f"got {type(iterable).__name__}")
        self.iterable, self.what, self.vocab_size, self.causal = iterable, what, vocab_size, causal
        self._it: Iterator | None = iter(iterable)
        self.one_shot = self._it is iterable  # a generator or iterator: it cannot start again
        self._rows: list[torch.Tensor] = []  # rows drawn and not yet consumed
        self.row_len: int | None = None  # of the first row (every row, unless padded)
        self.padded: bool | None = None  # rows with an attention_mask: of any length
        self.exclude: set[bytes] = set()  # the rows held out for validation
        self.epochs = 0
        self._items = self._kept = 0  # items and rows kept in the current epoch

    def _draw(self, restart: bool = True) -> bool:
        """Append the next batch's rows; at the end of an epoch start the next one (``restart``) or
        return False."""
        while True:
            if self._it is None:
                self._it = iter(self.iterable)
            try:
                item = next(self._it)
                break
            except StopIteration:
                self._it = None
                self.epochs += 1
                items, kept, self._items, self._kept = self._items, self._kept, 0, 0
                if not restart:
                    return False
                if items == 0 or self.one_shot:
                    raise ConfigError(f"{self.what} ran out of batches and cannot start again (a one-shot "
                                      "iterator or an empty iterable); pass a re-iterable such as a DataLoader, or "
                                      "more data for this budget") from None
                require(kept > 0, f"{self.what} holds no row to train on in a whole pass: every row is "
                                  + ("held out for validation (pass eval_data) or " if self.exclude else "")
                                  + "without a counted target (labels -100 or padding)")
        self._items += 1
        rows, padded = rows_of(item, self.vocab_size, self.causal, self.what)
        if self.padded is None:
            self.padded, self.row_len = padded, rows.shape[1]
        require(padded == self.padded, f"{self.what} mixes batches with and without an attention_mask")
        require(padded or rows.shape[1] == self.row_len, f"{self.what} changed its row length from {self.row_len} "
                                                         f"to {rows.shape[1]} tokens; every batch needs rows of one "
                                                         "length (or an attention_mask marking padding)")
        kept = [row for row in rows[has_target(rows)]
                if not self.exclude or row.numpy().tobytes() not in self.exclude]
        self._kept += len(kept)
        self._rows.extend(kept)
        return True

    def peek_row_len(self) -> int:
        if self.row_len is None:
            self._draw()
        return self.row_len

    def take(self, n: int) -> list[torch.Tensor]:
        """The next ``n`` rows."""
        while len(self._rows) < n:
            self._draw()
        rows, self._rows = self._rows[:n], self._rows[n:]
        return rows

    def hold_out(self, rows: list[torch.Tensor]) -> None:
        """Never give ``rows`` (or a row equal to one) again."""
        self.exclude |= {row.numpy().tobytes() for row in rows}
        self._rows = [row for row in self._rows if row.numpy().tobytes() not in self.exclude]


def _windows(rows: list[torch.Tensor], seq_len: int, padded: bool) -> torch.Tensor:
    """The windows ``[n, seq_len + 1]`` of ``rows`` (:func:`~transformer_grow.data.rows.cut_windows`), in order;
    those without a counted target left out."""
    if not padded:  # rows of one length: every row at once
        stacked = torch.stack(rows)
        length = stacked.shape[1]
        per_row = length // seq_len
        if per_row * seq_len + 1 > length:  # a row of a multiple of seq_len: its last target is missing
            stacked = torch.cat([stacked, stacked.new_full((len(rows), 1), -1)], dim=1)
        pieces = [stacked[:, i * seq_len:(i + 1) * seq_len + 1] for i in range(per_row)]
        windows = torch.stack(pieces, dim=1).reshape(-1, seq_len + 1)
    else:
        windows = torch.cat([cut_windows(row, seq_len, pad_tail=True) for row in rows])
    return windows if int(windows.min()) >= 0 else windows[has_target(windows)]


class IterableTokens:
    """The trainer's batch source over iterables of token batches (module docstring).

    Args:
        train_data: the training batches.
        vocab_size: the model's vocabulary; a token outside ``[0, vocab_size)`` is refused.
        eval_data: the validation batches (default: rows of ``train_data`` held out).
        causal: the model is causal (``False``: a bidirectional model, trained by masked LM: padding and
            labels are refused, :mod:`~transformer_grow.data.rows`).
    """

    def __init__(self, train_data: Iterable, vocab_size: int, eval_data: Iterable | None = None,
                 causal: bool = True):
        require(isinstance(vocab_size, int) and vocab_size > 0, f"vocab_size={vocab_size!r} must be a positive integer")
        self.vocab_size = vocab_size
        self._train = _RowStream(train_data, "train_data", vocab_size, causal)
        self._eval = None if eval_data is None else _RowStream(eval_data, "eval_data", vocab_size, causal)
        self._train.peek_row_len()  # draws the first batch: checked now, trained on later like every other
        first = self._train._rows
        seen = torch.cat(first) if self._train.padded else torch.stack(first) if first else torch.zeros(0)
        self.fingerprint = "iterable-" + hashlib.blake2b(seen.numpy().tobytes(), digest_size=8).hexdigest()
        self.description = f"an iterable of token batches (rows of {self._train.row_len} tokens)"
        self._next_step = 0
        self._last: tuple[int, torch.Tensor] | None = None
        self._val: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def row_len(self) -> int:
        """Tokens per row of ``train_data`` (a ``[B, T + 1]`` loader: ``T + 1``; padded rows: the first's)."""
        return self._train.peek_row_len()

    def check_seq_len(self, seq_len: int) -> None:
        """:class:`ConfigError` unless a row holds at least one window of ``seq_len`` inputs (padded rows:
        any length)."""
        require(isinstance(seq_len, int) and seq_len >= 1, f"seq_len={seq_len!r} must be an integer >= 1")
        streams = [(self._train, "train_data")] + ([(self._eval, "eval_data")] if self._eval is not None else [])
        for stream, what in streams:
            length = stream.peek_row_len()
            require(stream.padded or length >= seq_len,
                    f"{what} rows hold {length} tokens; a model of seq_len={seq_len} needs rows of at least "
                    f"{seq_len} tokens: use rows of [B, {seq_len + 1}] (or HF's [B, {seq_len}]) or a model with "
                    f"seq_len <= {length}")

    def _rows_per_step(self, stream: _RowStream, n_windows: int, seq_len: int) -> int:
        length = stream.peek_row_len()
        per_row = max(1, -(-(length - 1) // seq_len) if stream.padded else length // seq_len)
        return -(-n_windows // per_row)

    def _take_windows(self, n: int, seq_len: int, first_pass: bool = False) -> tuple[torch.Tensor, list]:
        """The next ``n`` windows of ``train_data`` (the rest of the last rows read is dropped) and the rows
        read; ``first_pass``: refuse to read past the first pass (rows held out for validation)."""
        stream, parts, rows_read, have, epochs = self._train, [], [], 0, self._train.epochs
        while have < n:
            need = self._rows_per_step(stream, n - have, seq_len)
            if first_pass:
                self._check_first_pass(need, n, seq_len)
            rows = stream.take(need)
            windows = _windows(rows, seq_len, stream.padded)
            parts.append(windows)
            rows_read += rows
            have += windows.shape[0]
            require(have > 0 or stream.epochs < epochs + 2,
                    f"train_data holds no window of seq_len={seq_len} with a counted target")
        return torch.cat(parts)[:n], rows_read

    def _check_first_pass(self, need: int, n_windows: int, seq_len: int) -> None:
        """Refuse unless the first pass of ``train_data`` holds the ``need`` rows to hold out and one more."""
        stream = self._train
        while len(stream._rows) <= need and stream.epochs == 0 and stream._draw(restart=False):
            pass
        if len(stream._rows) > need:
            return
        rows = len(stream._rows)
        most = (rows - 1) * (1 if stream.padded else stream.row_len // seq_len)  # windows of all rows but one
        raise ConfigError(f"train_data holds {rows} row{'s' if rows != 1 else ''} in one pass: holding out "
                          f"{n_windows} validation windows would leave too few to train on, and a repeated pass "
                          "would train on the held-out rows; pass eval_data"
                          + (f", or ask for at most {most} validation windows (eval_windows={most})" if most else ""))

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``[batch_size // world_size, seq_len]`` of step ``step`` (this rank's rows);
        targets that are not counted are -1.

        Steps come in order; a later step skips the windows in between (module docstring); an earlier one
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
            for _ in range(step - self._next_step):  # a resumed run: read what the earlier steps read
                self._take_windows(batch_size, seq_len)
            windows = self._take_windows(batch_size, seq_len)[0]
            self._next_step = step + 1
            self._last = (step, windows)
        per_rank = batch_size // world_size
        return split_windows(windows[rank * per_rank:(rank + 1) * per_rank])

    def val_windows(self, seq_len: int, n_windows: int, labelled: bool = False) -> torch.Tensor:
        """Up to ``n_windows`` validation windows ``[n, seq_len + 1]``: from ``eval_data`` (its first
        rows, read once), or held out from the start of ``train_data`` (never trained on). ``labelled``:
        the caller reads windows with targets that are not counted (module docstring); else such windows
        are refused."""
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
                windows, rows = self._take_windows(n_windows, seq_len, first_pass=True)
                self._train.hold_out(rows)
                self._val[key] = windows
        windows = self._val[key]
        require(labelled or int(windows.min()) >= 0,
                "the validation rows carry targets that are not counted (labels -100 or padding), which this caller "
                "does not read; train with GrowthManager, or pass unlabelled, unpadded rows")
        return windows

    def _read_eval(self, seq_len: int, n_windows: int) -> torch.Tensor:
        return first_windows(self._eval, seq_len, n_windows)


def first_windows(stream: _RowStream, seq_len: int, n_windows: int) -> torch.Tensor:
    """The first windows of one pass over ``stream`` (fewer if it holds fewer); read once."""
    length = stream.peek_row_len()
    require(stream.padded or length >= seq_len, f"{stream.what} rows hold {length} tokens; a model of "
                                                f"seq_len={seq_len} needs rows of at least {seq_len} tokens")
    per_row = max(1, -(-(length - 1) // seq_len) if stream.padded else length // seq_len)
    need = -(-n_windows // per_row)
    while True:
        while len(stream._rows) < need and stream._draw(restart=False):
            pass
        windows = _windows(stream._rows[:need], seq_len, stream.padded) if stream._rows else torch.zeros(0, 1)
        if windows.shape[0] >= n_windows or len(stream._rows) < need:
            break
        need += -(-(n_windows - windows.shape[0]) // per_row)
    require(windows.shape[0] > 0, f"{stream.what} holds no window of seq_len={seq_len} with a counted target")
    return windows[:n_windows]


def eval_windows_of(eval_data: Iterable, vocab_size: int, seq_len: int, n_windows: int,
                    causal: bool = True) -> torch.Tensor:
    """Up to ``n_windows`` validation windows ``[n, seq_len + 1]`` from the first rows of ``eval_data``
    (any item of the module docstring; targets not counted marked as in :mod:`~transformer_grow.data.rows`)."""
    return first_windows(_RowStream(eval_data, "eval_data", vocab_size, causal), seq_len, n_windows)

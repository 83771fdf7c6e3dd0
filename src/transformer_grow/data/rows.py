"""Token rows of a loader's batches, with the targets a loss may not count marked in the row itself.

:class:`~transformer_grow.data.iterable.IterableTokens` reads every item of a loader as rows of one
encoding, so that windows keep the ``[n, seq_len + 1]`` shape of every other window in the package
(inputs ``w[:, :-1]``, next-token targets ``w[:, 1:]``):

* an entry ``e >= 0`` is the token ``e``, and a target: the position before it predicts it;
* an entry ``e < 0`` is the token ``-e - 1``, and *not* a target (HF's ``labels == -100``, padding):
  it is still the input of its own position; the loss skips the prediction of it.

Rows of plain token windows hold no negative entries: their windows are what they always were. Items:

* a ``LongTensor [B, T + 1]`` of token windows (inputs and next-token targets);
* an ``(x, y)`` pair of ``[B, T]`` tensors with ``y`` = ``x`` shifted by one token;
* a dict in the Hugging Face convention: ``input_ids [B, L]`` (labels are the inputs, shifted inside the
  model: a row of ``L`` tokens has ``L - 1`` targets), optional ``labels [B, L]`` (equal to ``input_ids``
  or -100: not a target) and ``attention_mask [B, L]`` (1: a token, 0: padding, never a target). A
  left-padded row is rotated so that its tokens come first (a causal model's real tokens then see
  exactly the tokens they see under HF's mask; with RoPE at the same relative positions); the padding
  after them only feeds predictions that are not counted. ``position_ids`` and non-zero
  ``token_type_ids`` are refused (not read). A bidirectional model (BERT) is trained by masked LM, on
  unpadded rows of ``input_ids`` only: it has no attention mask here, so padding would change what its
  real tokens see, and the trainer draws its own masks, so ``labels`` (a masking collator's) are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from transformer_grow.errors import require

IGNORE = -100  # Hugging Face's ignore index of labels
_NOT_READ = ("position_ids", "inputs_embeds")


def tokens_of(entries: torch.Tensor) -> torch.Tensor:
    """The token ids of encoded entries (module docstring)."""
    return torch.where(entries < 0, -entries - 1, entries)


def split_windows(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of encoded windows ``[n, T + 1]``: input ids, and next-token targets with -1 where not
    counted (the ignore index of :meth:`GPT.forward <transformer_grow.model.GPT.forward>`)."""
    if int(windows.min()) >= 0:  # plain token windows
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    targets = windows[:, 1:]
    return tokens_of(windows[:, :-1]).contiguous(), torch.where(targets < 0, -1, targets).contiguous()


def has_target(windows: torch.Tensor) -> torch.Tensor:
    """``[n]``: whether each encoded window (or row) holds at least one counted target."""
    return (windows[:, 1:] >= 0).any(dim=1)


def cut_windows(row: torch.Tensor, seq_len: int, pad_tail: bool) -> torch.Tensor:
    """The windows ``[k, seq_len + 1]`` of one encoded row: consecutive windows of ``seq_len`` inputs,
    overlapping by their last target. A row of ``L`` tokens gives ``L // seq_len`` of them (a row of
    ``T + 1`` tokens: ``T // seq_len``; of exactly ``seq_len``: one, whose last target is missing);
    ``pad_tail`` (padded rows): also the partial window of the rest, filled with padding."""
    length = row.numel()
    count = -(-(length - 1) // seq_len) if pad_tail else length // seq_len
    need = count * seq_len + 1
    if need > length:
        row = torch.cat([row, row.new_full((need - length,), -1)])  # padding: token 0, never a target
    return row.unfold(0, seq_len + 1, seq_len)[:count]


def rows_of(item: Any, vocab_size: int, causal: bool = True, what: str = "train_data") -> tuple[torch.Tensor, bool]:
    """The encoded rows ``[B, L]`` (int64, CPU) of one item of a loader (module docstring), and whether it
    carried an ``attention_mask`` (padded rows: of any length). Token ids are checked against
    ``[0, vocab_size)``."""
    if isinstance(item, dict):
        return _dict_rows(item, vocab_size, causal, what)
    if isinstance(item, (tuple, list)) and len(item) == 2:
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
    require(rows.ndim == 2 and rows.shape[1] >= 2 and _is_integer(rows),
            f"token batches must be integer tensors of shape [B, T + 1] with T >= 1; got {rows.dtype} "
            f"{tuple(rows.shape)}")
    rows = rows.to(device="cpu", dtype=torch.long)
    _check_ids(rows, vocab_size, what)
    return rows, False


def _is_integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _field(item: dict, key: str, shape: torch.Size | None) -> torch.Tensor | None:
    value = item.get(key)
    if value is None:
        return None
    value = torch.as_tensor(value)
    value = value[None] if value.ndim == 1 else value
    require(value.ndim == 2 and (_is_integer(value) or key == "attention_mask" and value.dtype == torch.bool),
            f"a batch dict's {key!r} must be integer rows [B, L]; got {value.dtype} {tuple(value.shape)}")
    require(shape is None or value.shape == shape,
            f"a batch dict's {key!r} has shape {tuple(value.shape)}; input_ids has {tuple(shape or ())}")
    return value.to(device="cpu", dtype=torch.long)


def _dict_rows(item: dict, vocab_size: int, causal: bool, what: str) -> tuple[torch.Tensor, bool]:
    require("input_ids" in item, f"a batch dict needs 'input_ids'; got keys {sorted(map(str, item))}")
    ids = _field(item, "input_ids", None)
    require(ids.shape[1] >= 2, f"a batch dict's input_ids must hold rows of at least 2 tokens; got "
                               f"{tuple(ids.shape)}")
    for key in _NOT_READ:
        require(item.get(key) is None, f"a batch dict's {key!r} is not read (positions count from each row's "
                                       f"first token); drop it")
    types = _field(item, "token_type_ids", ids.shape)
    require(types is None or not types.any(), "a batch dict's 'token_type_ids' other than 0 are not read; pass "
                                              "single-segment rows")
    mask, labels = _field(item, "attention_mask", ids.shape), _field(item, "labels", ids.shape)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if mask is not None:
        require(bool(((mask == 0) | (mask == 1)).all()), "a batch dict's 'attention_mask' must hold 0 (padding) "
                                                         "and 1 (a token) only")
        valid = mask.bool()
        starts = valid.long().diff(dim=1).clamp_min(0).sum(dim=1) + valid[:, 0].long()
        require(bool((starts <= 1).all()), "a batch dict's 'attention_mask' must mark one run of tokens per row "
                                           "(left or right padding), not tokens with padding between them")
        require(causal or bool(valid.all()), "a bidirectional model (BERT) has no attention mask here: padding "
                                             "would change what its tokens see; pass unpadded rows (e.g. texts "
                                             "packed or grouped into rows of one length)")
        first = valid.long().argmax(dim=1)  # left padding: rotate each row so that its tokens come first
        if bool(first.any()):
            index = (torch.arange(ids.shape[1])[None] + first[:, None]) % ids.shape[1]
            ids, valid = ids.gather(1, index), valid.gather(1, index)
            labels = None if labels is None else labels.gather(1, index)
    counted = valid.clone()
    if labels is not None:
        require(causal, "a bidirectional model (BERT) is trained by masked LM here and draws its own masks: pass "
                        "input_ids without labels (not a masking collator's output)")
        real = valid & (labels != IGNORE)
        require(bool((labels[real] == ids[real]).all()), "a batch dict's labels must equal input_ids (the model "
                f"shifts them) or be {IGNORE} where a token is not a target; these differ elsewhere")
        counted &= labels != IGNORE
    ids = torch.where(valid, ids, 0)  # padding: its input only feeds predictions that are not counted
    _check_ids(ids, vocab_size, what)
    counted[:, 0] = True  # a row's first token is no one's target: kept as a plain token
    return torch.where(counted, ids, -ids - 1), mask is not None


def _check_ids(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    low, high = int(ids.min()), int(ids.max())
    bad = low if low < 0 else high
    require(low >= 0 and high < vocab_size, f"{what} holds token id {bad}, outside the model's vocabulary "
                                            f"[0, {vocab_size})")

"""Tokenizers: byte-level BPE (trained with Hugging Face ``tokenizers``) or plain UTF-8 bytes.

Both kinds are Hugging Face ``tokenizers`` objects underneath and are saved as the standard
``tokenizer.json`` format (never pickle). Byte-level BPE follows GPT-2 (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners", Sec. 2.2): text is UTF-8 encoded, each byte
is shown to BPE as one printable character, and merges are learned on top, so any string can be
encoded with no unknown token. The ``bytes`` tokenizer is the same pipeline with no merges and
token id == byte value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_text

# Bump when training settings change, so cached tokenizers trained the old way are not reused.
BPE_TRAINER_VERSION = 1


def byte_to_printable_char() -> dict[int, str]:
    """The byte -> character table of byte-level BPE (GPT-2, Sec. 2.2).

    Bytes that are printable, non-space Latin-1 characters stand for themselves; every other byte
    (controls, space, DEL, NBSP, soft hyphen ...) is given the next unused code point from 256 on,
    in byte order. This is the table the ``tokenizers`` ByteLevel pre-tokenizer uses.
    """
    printable = [b for b in range(256) if (0x21 <= b <= 0x7E) or (0xA1 <= b <= 0xAC) or (0xAE <= b <= 0xFF)]
    table = {b: chr(b) for b in printable}
    next_code_point = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_code_point)
            next_code_point += 1
    return table


def _byte_level_pipeline(tok: HFTokenizer, use_regex: bool) -> HFTokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    """Text <-> token ids. Build with :meth:`bytes_level`, :meth:`train_bpe` or :meth:`load`.

    Attributes:
        kind: ``"bytes"`` (ids are UTF-8 byte values, vocabulary 256) or ``"bpe"``.
    """

    def __init__(self, hf_tokenizer: HFTokenizer):
        self.hf = hf_tokenizer
        self.kind = "bytes" if self._is_plain_bytes(hf_tokenizer) else "bpe"

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def bytes_level(cls) -> Tokenizer:
        """The no-training tokenizer: one token per UTF-8 byte, token id == byte value."""
        vocab = {char: byte for byte, char in byte_to_printable_char().items()}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        return cls(_byte_level_pipeline(tok, use_regex=False))

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, *, num_texts: int | None = None,
                  progress: bool = True) -> Tokenizer:
        """Train byte-level BPE with ``vocab_size`` tokens (fewer if the text runs out of pairs)."""
        require(256 < vocab_size, f"vocab_size={vocab_size} is not allowed for BPE; it must exceed 256")
        tok = _byte_level_pipeline(HFTokenizer(models.BPE()), use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,  # a pair seen once is noise, not a token worth a vocabulary slot
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=progress,
        )
        tok.train_from_iterator(texts, trainer=trainer, length=num_texts)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer saved by :meth:`save` (a Hugging Face ``tokenizer.json``)."""
        path = Path(path)
        require(path.is_file(), f"tokenizer file {str(path)!r} does not exist")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # a corrupt or foreign file is a bad input; say which
            raise ConfigError(f"tokenizer file {str(path)!r} is not a valid tokenizer.json: {e}") from e

    def save(self, path: str | Path) -> Path:
        """Write the Hugging Face ``tokenizer.json`` atomically; returns the path."""
        return atomic_write_text(path, self.to_json())

    # ---- use ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def to_json(self) -> str:
        """The tokenizer as Hugging Face JSON (what :meth:`save` writes)."""
        return self.hf.to_str()

    def encode(self, text: str) -> list[int]:
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 decode to U+FFFD."""
        ids = [int(i) for i in ids]
        if self.kind == "bytes":
            require(all(0 <= i < 256 for i in ids), "bytes tokenizer: token ids must lie in [0, 255]")
            return bytes(ids).decode("utf-8", errors="replace")
        return self.hf.decode(ids, skip_special_tokens=False)

    def encode_to_array(self, texts: list[str], dtype: np.dtype) -> np.ndarray:
        """Concatenated token ids of ``texts`` as one 1-D array (batched, multi-threaded in Rust)."""
        if self.kind == "bytes":
            return np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8).astype(dtype)
        encode_batch = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        id_lists = [e.ids for e in encode_batch(texts, add_special_tokens=False)]
        out = np.empty(sum(map(len, id_lists)), dtype=dtype)
        pos = 0
        for ids in id_lists:
            out[pos:pos + len(ids)] = ids
            pos += len(ids)
        return out

    @staticmethod
    def _is_plain_bytes(hf_tokenizer: HFTokenizer) -> bool:
        """True for the no-merge byte tokenizer whose ids equal byte values (see :meth:`bytes_level`)."""
        if hf_tokenizer.get_vocab_size() != 256:
            return False
        model = json.loads(hf_tokenizer.to_str())["model"]
        expected = {char: byte for byte, char in byte_to_printable_char().items()}
        return model.get("type") == "BPE" and not model.get("merges") and model.get("vocab") == expected

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

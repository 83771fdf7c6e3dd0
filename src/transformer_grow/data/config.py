"""Settings of the data pipeline: which corpus, which tokenizer, where the cache lives.

:meth:`DataConfig.validate` checks every setting (and that the corpus exists) *before* any work
starts, raising :class:`~transformer_grow.errors.ConfigError` with a message naming the bad value.
"""

from __future__ import annotations

import codecs
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import check_directory_path


def _is_codec(name: str) -> bool:
    """A text encoding Python knows (``bytes.decode`` refuses the others, such as base64)."""
    try:
        return bool(getattr(codecs.lookup(name), "_is_text_encoding", True))
    except (LookupError, ValueError):  # ValueError: a NUL character in the name
        return False

TOKENIZERS = ("bpe", "bytes")
TOKEN_DTYPES = ("uint16", "uint32")
TOKEN_FILE_SUFFIXES = (".npy", ".bin")
DEFAULT_VOCAB_SIZE = 8192
BYTE_VOCAB_SIZE = 256
# Largest BPE vocabulary we agree to train; far beyond any sensible setting for this library.
MAX_BPE_VOCAB_SIZE = 1 << 20
# Token ids are stored as uint32 at most.
MAX_TOKEN_VOCAB_SIZE = 1 << 32
CACHE_ENV_VAR = "TGROW_CACHE"
ENCODING_ERRORS = ("strict", "replace", "ignore")
HF_PREFIX = "hf:"


@dataclass
class DataConfig:
    """Where training text comes from and how it becomes tokens.

    Attributes:
        corpus: ``"stdlib"`` (the default embedded corpus: the ``.py`` files of the running
            interpreter's standard library; which files and contents depend on the Python version,
            and the corpus fingerprint includes that version), a path to a text file or a directory
            of text files, a path to a pre-tokenized ``.npy`` (1-D integer array) or raw ``.bin``
            token file, or ``"hf:NAME[:CONFIG[:SPLIT]]"`` for a Hugging Face dataset (needs the
            ``[hf]`` extra).
        tokenizer: ``"bpe"`` (byte-level BPE trained on the training split, cached) or ``"bytes"``
            (raw UTF-8 bytes, vocabulary 256, no training). Ignored for token files.
        vocab_size: BPE vocabulary size. Ignored for ``"bytes"`` (always 256). For token files the
            vocabulary is inferred as ``max token + 1`` unless a value other than the default 8192
            is given, which must then exceed every token id.
        val_fraction: share of the corpus held out for validation, in (0, 1). Text corpora are split
            by file (a stable hash of each relative path); token files and single text files by
            position (the tail is validation).
        cache_dir: where tokenizers and token arrays are cached; default ``$TGROW_CACHE`` or
            ``~/.cache/transformer_grow``.
        token_dtype: element type of a raw ``.bin`` token file: ``"uint16"`` or ``"uint32"``.
        encoding: text encoding of the corpus files (any Python codec name, e.g. ``latin-1``).
        encoding_errors: bytes that are not valid text in ``encoding``: ``strict`` refuses the file
            (naming it and the byte offset; a NUL byte counts as binary), ``replace`` substitutes
            U+FFFD, ``ignore`` drops them.
    """

    corpus: str = "stdlib"
    tokenizer: str = "bpe"
    vocab_size: int = DEFAULT_VOCAB_SIZE
    val_fraction: float = 0.05
    cache_dir: str | None = None
    token_dtype: str | None = None
    encoding: str = "utf-8"
    encoding_errors: str = "strict"

    @property
    def corpus_kind(self) -> str:
        """One of ``"stdlib"``, ``"hf"``, ``"tokens"`` (a .npy/.bin file) or ``"text"``."""
        if self.corpus == "stdlib":
            return "stdlib"
        if self.corpus.startswith(HF_PREFIX):
            return "hf"
        if Path(self.corpus).suffix.lower() in TOKEN_FILE_SUFFIXES and not Path(self.corpus).is_dir():
            return "tokens"
        return "text"

    def resolved_cache_dir(self) -> Path:
        """The cache directory: ``cache_dir``, else ``$TGROW_CACHE``, else ``~/.cache/transformer_grow``."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        if os.environ.get(CACHE_ENV_VAR):
            return Path(os.environ[CACHE_ENV_VAR]).expanduser()
        return Path.home() / ".cache" / "transformer_grow"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting; cheap (touches no file contents)."""
        require(isinstance(self.corpus, str) and self.corpus.strip() != "" and "\x00" not in self.corpus,
                f"corpus={self.corpus!r} is not allowed; give 'stdlib', a path, or 'hf:NAME[:CONFIG[:SPLIT]]'")
        choice("tokenizer", self.tokenizer, TOKENIZERS)
        require(isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool),
                f"vocab_size={self.vocab_size!r} is not allowed; it must be an integer")
        require(not isinstance(self.vocab_size, bool) and 0 < self.vocab_size <= MAX_TOKEN_VOCAB_SIZE,
                f"vocab_size={self.vocab_size!r} is not allowed; it must lie in [1, {MAX_TOKEN_VOCAB_SIZE}]")
        require(isinstance(self.encoding, str) and _is_codec(self.encoding),
                f"encoding={self.encoding!r} is not a known text encoding (examples: utf-8, latin-1, cp1252)")
        choice("encoding_errors", self.encoding_errors, ENCODING_ERRORS)
        require(isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0,
                f"val_fraction={self.val_fraction!r} is not allowed; it must lie strictly between 0 and 1")
        if self.token_dtype is not None:
            choice("token_dtype", self.token_dtype, TOKEN_DTYPES)

        kind = self.corpus_kind
        if kind == "tokens":
            self._validate_token_file()
        elif self.tokenizer == "bpe":
            require(BYTE_VOCAB_SIZE < self.vocab_size <= MAX_BPE_VOCAB_SIZE,
                    f"vocab_size={self.vocab_size} is not allowed for tokenizer='bpe'; it must be greater "
                    f"than {BYTE_VOCAB_SIZE} (the byte alphabet) and at most {MAX_BPE_VOCAB_SIZE}")
        if kind == "hf":
            self._validate_hf()
        elif kind == "text":
            path = Path(self.corpus).expanduser()
            require(path.exists(), f"corpus={self.corpus!r} does not exist (expected 'stdlib', a text file or "
                                   f"directory, a .npy/.bin token file, or 'hf:NAME[:CONFIG[:SPLIT]]')")
            require(path.is_file() or path.is_dir(),
                    f"corpus={self.corpus!r} is neither a regular file nor a directory")
        if self.cache_dir is not None:
            require(isinstance(self.cache_dir, str) and self.cache_dir.strip() != "",
                    f"cache_dir={self.cache_dir!r} is not allowed; give a directory path or None")
            check_directory_path(self.cache_dir, "cache_dir")

    def _validate_token_file(self) -> None:
        path = Path(self.corpus).expanduser()
        require(path.is_file(), f"corpus={self.corpus!r}: token file does not exist")
        require(0 < self.vocab_size <= MAX_TOKEN_VOCAB_SIZE,
                f"vocab_size={self.vocab_size} is not allowed; it must lie in [1, {MAX_TOKEN_VOCAB_SIZE}]")
        if path.suffix.lower() == ".bin":
            require(self.token_dtype is not None,
                    f"corpus={self.corpus!r} is a raw .bin token file: set token_dtype to one of "
                    f"{', '.join(map(repr, TOKEN_DTYPES))}")

    def _validate_hf(self) -> None:
        parts = self.corpus[len(HF_PREFIX):].split(":")
        require(1 <= len(parts) <= 3 and all(p.strip() for p in parts),
                f"corpus={self.corpus!r} is not allowed; the form is 'hf:NAME[:CONFIG[:SPLIT]]'")
        if importlib.util.find_spec("datasets") is None:
            raise ConfigError(f"corpus={self.corpus!r} needs the Hugging Face 'datasets' package, which is not "
                              f"installed; run: pip install 'transformer-grow[hf]'")

    def hf_parts(self) -> tuple[str, str | None, str]:
        """``(name, config or None, split)`` of an ``hf:`` corpus; the split defaults to ``"train"``."""
        parts = self.corpus[len(HF_PREFIX):].split(":")
        name = parts[0]
        config = parts[1] if len(parts) > 1 else None
        split = parts[2] if len(parts) > 2 else "train"
        return name, config, split

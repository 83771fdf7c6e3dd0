"""`prepare_data`: corpus -> tokenizer -> cached token arrays -> :class:`TokenData`.

Cache layout under ``DataConfig.resolved_cache_dir()``::

    tokenizers/bpe-<key>.json        trained BPE (key: train-split content hash + BPE settings)
    tokens/<fingerprint>/train.bin   train tokens, raw uint16 (uint32 if vocab > 65535)
    tokens/<fingerprint>/val.bin     validation tokens
    tokens/<fingerprint>/meta.json   lengths, dtype, vocab size; written last = "entry complete"

Every file is written atomically, so an interrupted first run leaves no half-written entry; later
runs only hash the corpus and memory-map the arrays. Several processes preparing the same data at
once are safe (each writes identical files), but it is cheaper to prepare on one rank first.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import tokenizers
from tqdm import tqdm

from transformer_grow.data.config import DEFAULT_VOCAB_SIZE, DataConfig
from transformer_grow.data.corpus import SPLITS, FileCorpus, open_text_corpus
from transformer_grow.data.tokenizer import BPE_TRAINER_VERSION, Tokenizer
from transformer_grow.data.tokens import TokenData
from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_bytes, atomic_write_json, read_json

TOKEN_CACHE_VERSION = 1
# Documents handed to one `encode_batch` call: big enough to keep the Rust thread pool busy, small
# enough for a smooth progress bar and bounded memory.
ENCODE_CHUNK_CHARS = 4 << 20


def _hash(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=16).hexdigest()


def token_dtype_for(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def prepare_data(cfg: DataConfig, progress: bool = True) -> TokenData:
    """Tokenize ``cfg.corpus`` (cached) and return memory-mapped train/val tokens.

    First run on a text corpus: train the tokenizer (BPE) and encode both splits, with progress
    bars on stderr when ``progress``. Later runs with the same corpus contents and settings load
    the cache. Raises :class:`ConfigError` for bad settings before any work starts.
    """
    cfg.validate()
    if cfg.corpus_kind == "tokens":
        return _load_token_file(cfg)
    cache_dir = cfg.resolved_cache_dir()
    corpus = open_text_corpus(cfg.corpus, cfg.val_fraction, cfg.hf_parts() if cfg.corpus_kind == "hf" else None,
                              encoding=cfg.encoding, errors=cfg.encoding_errors)
    if isinstance(corpus, FileCorpus):
        for split in SPLITS:
            require(corpus.split_bytes(split) > 0, f"corpus={cfg.corpus!r}: the {split} split is empty; the corpus "
                                                   f"is too small to split with val_fraction={cfg.val_fraction}")
    if cfg.tokenizer == "bytes":
        tokenizer = Tokenizer.bytes_level()
    else:
        tokenizer = _cached_bpe(corpus, cfg.vocab_size, cache_dir, progress)
    tokenizer_hash = hashlib.blake2b(tokenizer.to_json().encode("utf-8"), digest_size=16).hexdigest()
    fingerprint = _hash("tokens", TOKEN_CACHE_VERSION, corpus.identity(), tokenizer_hash)
    entry = cache_dir / "tokens" / fingerprint
    arrays = _load_token_cache(entry)
    if arrays is None:
        arrays = _encode_corpus(corpus, tokenizer, entry, fingerprint, progress)
    train, val = arrays
    return TokenData(train=train, val=val, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer,
                     fingerprint=fingerprint, description=f"{corpus.label}, tokenizer={tokenizer.kind} "
                                                          f"(vocab {tokenizer.vocab_size})")


def _cached_bpe(corpus, vocab_size: int, cache_dir: Path, progress: bool) -> Tokenizer:
    """Load the BPE tokenizer trained on this train split with these settings, training it if needed."""
    key = _hash("bpe", BPE_TRAINER_VERSION, tokenizers.__version__, vocab_size, corpus.identity("train"))
    path = cache_dir / "tokenizers" / f"bpe-{key}.json"
    if path.is_file():
        return Tokenizer.load(path)
    if progress:
        print(f"training byte-level BPE (vocab {vocab_size}) on {corpus.label} ...", file=sys.stderr)
    tokenizer = Tokenizer.train_bpe(corpus.documents("train"), vocab_size,
                                    num_texts=corpus.num_documents("train"), progress=progress)
    tokenizer.save(path)
    # Another process may have raced us; the trainer is deterministic, but reading back the file
    # that won guarantees every process uses byte-identical tokenizers.
    return Tokenizer.load(path)


def _load_token_cache(entry: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Memory-map a complete cache entry, or ``None`` if it is missing or inconsistent."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        dtype = np.dtype(meta["dtype"])
        arrays = []
        for split in SPLITS:
            path = entry / f"{split}.bin"
            length = int(meta[f"{split}_tokens"])
            if not path.is_file() or path.stat().st_size != length * dtype.itemsize or length == 0:
                return None
            arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(length,)))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable entry: rebuild it
    return arrays[0], arrays[1]


def _encode_corpus(corpus, tokenizer: Tokenizer, entry: Path, fingerprint: str,
                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Encode both splits in chunks, write the cache entry atomically, return memmaps of it."""
    dtype = token_dtype_for(tokenizer.vocab_size)
    lengths = {}
    for split in SPLITS:
        pieces: list[np.ndarray] = []
        bar = tqdm(total=corpus.num_documents(split), desc=f"encoding {split}", unit="doc",
                   disable=not progress, file=sys.stderr)
        chunk: list[str] = []
        chunk_chars = 0
        for doc in corpus.documents(split):
            chunk.append(doc)
            chunk_chars += len(doc)
            if chunk_chars >= ENCODE_CHUNK_CHARS:
                pieces.append(tokenizer.encode_to_array(chunk, dtype))
                bar.update(len(chunk))
                chunk, chunk_chars = [], 0
        if chunk:
            pieces.append(tokenizer.encode_to_array(chunk, dtype))
            bar.update(len(chunk))
        bar.close()
        tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)
        require(len(tokens) > 0, f"corpus={corpus.label!r}: the {split} split encodes to no tokens; "
                                 f"the corpus is too small")
        lengths[split] = len(tokens)
        atomic_write_bytes(entry / f"{split}.bin", tokens.data)  # raw little-endian ids, no header
        del tokens, pieces
    atomic_write_json(entry / "meta.json", {
        "version": TOKEN_CACHE_VERSION, "fingerprint": fingerprint, "corpus": corpus.label,
        "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "dtype": dtype.str,
        "train_tokens": lengths["train"], "val_tokens": lengths["val"],
    })
    loaded = _load_token_cache(entry)
    if loaded is None:  # only if another process corrupted the entry under our feet
        raise OSError(f"token cache entry {entry} could not be read back after writing it")
    return loaded


def _load_token_file(cfg: DataConfig) -> TokenData:
    """Memory-map a pre-tokenized ``.npy``/``.bin`` file; the tail ``val_fraction`` is validation."""
    path = Path(cfg.corpus).expanduser().resolve()
    if path.suffix.lower() == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"corpus={cfg.corpus!r} is not a readable .npy file: {e}") from e
        require(tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer),
                f"corpus={cfg.corpus!r} must hold a 1-D integer array, not {tokens.ndim}-D {tokens.dtype}")
    else:
        dtype = np.dtype(cfg.token_dtype)
        size = path.stat().st_size
        require(size % dtype.itemsize == 0,
                f"corpus={cfg.corpus!r} is {size} bytes, not a whole number of {cfg.token_dtype} tokens")
        require(size > 0, f"corpus={cfg.corpus!r} is empty")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    require(len(tokens) >= 2, f"corpus={cfg.corpus!r} holds {len(tokens)} tokens; at least 2 are needed")
    lowest, highest = int(tokens.min()), int(tokens.max())
    require(lowest >= 0, f"corpus={cfg.corpus!r} contains a negative token id ({lowest})")
    if cfg.vocab_size == DEFAULT_VOCAB_SIZE:  # not given: infer
        vocab_size = highest + 1
    else:
        vocab_size = cfg.vocab_size
        require(highest < vocab_size, f"vocab_size={vocab_size} is too small for corpus={cfg.corpus!r}, "
                                      f"which contains token id {highest}")
    cut = min(max(1, round(len(tokens) * (1.0 - cfg.val_fraction))), len(tokens) - 1)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    fingerprint = _hash("token-file", digest.hexdigest(), tokens.dtype.str, cfg.val_fraction, vocab_size)
    return TokenData(train=tokens[:cut], val=tokens[cut:], vocab_size=vocab_size, tokenizer=None,
                     fingerprint=fingerprint, description=f"{path} ({len(tokens)} pre-tokenized ids)")


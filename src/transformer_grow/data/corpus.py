"""Text corpora: which documents exist, how they split into train/validation, and their identity.

A corpus is a sorted list of documents, each assigned to ``"train"`` or ``"val"`` deterministically,
plus an ``identity`` string: a content hash that changes whenever any document, the split, or (for
the stdlib corpus) the Python version changes. The tokenizer and token caches are keyed by it.

Default corpus: the ``.py`` sources of the running interpreter's standard library
(``sysconfig.get_paths()['stdlib']``), without ``site-packages``/``dist-packages`` and without test
directories (``test/``, ``tests/``, ``idle_test/``). It ships with every Python, so nothing is
downloaded; but it differs between Python versions, hence the version in its identity.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from transformer_grow.errors import ConfigError, require

SPLITS = ("train", "val")
# Directory names never descended into when listing the stdlib corpus.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
# Suffixes read when the corpus is a directory (a single file is read whatever its suffix).
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java",
    ".js", ".ts", ".html", ".css", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".tex", ".csv", ".tsv", ".xml", ".sh",
})
# A single text file is cut into pieces of about this many characters so encoding can run in
# parallel (pieces end at a newline).
SINGLE_FILE_PIECE_CHARS = 1 << 20


def stable_unit_hash(key: str) -> float:
    """A number in [0, 1) that depends only on ``key`` (same on every machine and Python run)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_by_hash(names: list[str], val_fraction: float) -> dict[str, str]:
    """Assign each name to ``"train"`` or ``"val"``: ``val`` iff its stable hash is below ``val_fraction``.

    Adding or removing a file never moves another file between splits. With two or more names both
    splits are non-empty: if the hash puts nothing in one split, the name whose hash lies nearest
    the threshold moves over.
    """
    hashes = {name: stable_unit_hash(name) for name in names}
    split = {name: ("val" if h < val_fraction else "train") for name, h in hashes.items()}
    if len(names) >= 2:
        if "val" not in split.values():
            split[min(names, key=hashes.__getitem__)] = "val"
        elif "train" not in split.values():
            split[max(names, key=hashes.__getitem__)] = "train"
    return split


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the stdlib ``.py`` files, sorted; no site-packages, no test directories."""
    root = stdlib_root() if root is None else Path(root)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        found.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(found)


def list_text_files(root: Path) -> list[str]:
    """Relative POSIX paths of text files under ``root`` (by suffix; hidden entries skipped), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        rel_dir = Path(dirpath).relative_to(root)
        found.extend((rel_dir / f).as_posix() for f in filenames
                     if not f.startswith(".") and Path(f).suffix.lower() in TEXT_SUFFIXES)
    return sorted(found)


def _split_text_at_newline(text: str, position: int) -> int:
    """The index just after the first newline at or after ``position`` (or ``position`` if none)."""
    newline = text.find("\n", position)
    return position if newline < 0 else newline + 1


@dataclass
class FileCorpus:
    """Documents read from files under ``root``; each file goes wholly to train or to val.

    If the corpus is a single file (``single_file``), it is split by position instead: the last
    ``val_fraction`` of its characters (cut at a newline) form the validation split.
    """

    label: str
    root: Path
    files: list[str]
    val_fraction: float
    single_file: bool = False
    version_tag: str = ""
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace"/"ignore": what to do with bytes that are not valid text
    assignment: dict[str, str] = field(init=False)
    _identity: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        require(len(self.files) > 0, f"corpus {self.label!r} contains no text files")
        require(self.single_file == (len(self.files) == 1),
                f"corpus {self.label!r}: a one-file corpus is split by position, a larger one by file")
        self.assignment = {} if self.single_file else split_by_hash(self.files, self.val_fraction)

    def split_files(self, split: str) -> list[str]:
        """Sorted relative paths in ``split`` (for a single-file corpus: that file, for both splits)."""
        if self.single_file:
            return list(self.files)
        return [f for f in self.files if self.assignment[f] == split]

    def split_bytes(self, split: str) -> int:
        """Size of ``split`` in bytes of source text (approximate for a single-file corpus)."""
        if self.single_file:
            size = (self.root / self.files[0]).stat().st_size
            val = int(size * self.val_fraction)
            return val if split == "val" else size - val
        return sum((self.root / rel).stat().st_size for rel in self.split_files(split))

    def num_documents(self, split: str) -> int:
        if self.single_file:
            return -(-len(self._read(self.files[0])) // SINGLE_FILE_PIECE_CHARS) or 1
        return len(self.split_files(split))

    def _read(self, rel: str) -> str:
        return self._decode(rel, (self.root / rel).read_bytes())

    def _decode(self, rel: str, data: bytes) -> str:
        """The text of file ``rel``. Strict by default: a binary file or one in another encoding is
        refused (naming the file and the byte offset) rather than trained on as replacement characters."""
        path = self.root / rel
        advice = "convert it, or choose how to read it with --encoding ENCODING and/or --encoding-errors replace"
        if self.errors == "strict":
            nul = data.find(b"\0")
            if nul >= 0:
                raise ConfigError(f"corpus file {str(path)!r} holds a NUL byte at byte offset {nul}: it looks "
                                  f"binary, not text; {advice}")
        try:
            return data.decode(self.encoding, errors=self.errors)
        except UnicodeDecodeError as e:
            raise ConfigError(f"corpus file {str(path)!r} is not valid {self.encoding} text at byte offset {e.start} "
                              f"({e.reason}); {advice}") from None

    def documents(self, split: str) -> Iterator[str]:
        """The documents of ``split`` in sorted order (a single file yields newline-aligned pieces)."""
        if not self.single_file:
            for rel in self.split_files(split):
                yield self._read(rel)
            return
        text = self._read(self.files[0])
        cut = _split_text_at_newline(text, int(len(text) * (1.0 - self.val_fraction)))
        part = text[:cut] if split == "train" else text[cut:]
        start = 0
        while start < len(part):
            end = _split_text_at_newline(part, start + SINGLE_FILE_PIECE_CHARS)
            yield part[start:end]
            start = end

    def identity(self, split: str | None = None) -> str:
        """Hex content hash of ``split`` (or of the whole corpus and its split rule when ``None``)."""
        key = split or "all"
        if key not in self._identity:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"file-corpus v1|{self.version_tag}|single={self.single_file}\n".encode())
            if (self.encoding, self.errors) != ("utf-8", "strict"):  # the defaults keep existing caches valid
                h.update(f"encoding={self.encoding}|errors={self.errors}\n".encode())
            if split is None or self.single_file:
                h.update(f"val_fraction={self.val_fraction!r}\n".encode())
            names = self.files if split is None else self.split_files(split)
            for rel in names:
                data = (self.root / rel).read_bytes()
                if self.errors == "strict":  # refused even when its tokens are cached from a lenient run
                    self._decode(rel, data)
                h.update(f"{rel}\0{len(data)}\0".encode())
                h.update(hashlib.blake2b(data, digest_size=16).digest())
            if self.single_file and split is not None:
                h.update(split.encode())
            self._identity[key] = h.hexdigest()
        return self._identity[key]


@dataclass
class HFCorpus:
    """Rows of a Hugging Face dataset split (column ``text``), split into train/val by row hash."""

    label: str
    name: str
    config: str | None
    hf_split: str
    val_fraction: float
    _dataset: object = field(init=False, default=None)
    _rows: dict[str, list[int]] = field(init=False, default_factory=dict)

    def _load(self):
        if self._dataset is None:
            import datasets  # optional dependency, imported only when an hf: corpus is used

            try:
                ds = datasets.load_dataset(self.name, self.config, split=self.hf_split)
            except Exception as e:  # any loading failure means a bad corpus setting
                raise ConfigError(f"corpus={self.label!r} could not be loaded: {e}") from e
            require("text" in ds.column_names,
                    f"corpus={self.label!r} has no 'text' column (columns: {', '.join(ds.column_names)})")
            self._dataset = ds
            keys = [f"{self.label}#{i}" for i in range(len(ds))]
            assignment = split_by_hash(keys, self.val_fraction)
            self._rows = {s: [i for i, k in enumerate(keys) if assignment[k] == s] for s in SPLITS}
        return self._dataset

    def num_documents(self, split: str) -> int:
        self._load()
        return len(self._rows[split])

    def documents(self, split: str) -> Iterator[str]:
        ds = self._load()
        rows = self._rows[split]
        for start in range(0, len(rows), 1024):
            yield from ds.select(rows[start:start + 1024])["text"]

    def identity(self, split: str | None = None) -> str:
        ds = self._load()
        fingerprint = getattr(ds, "_fingerprint", None) or f"rows={len(ds)}"
        key = f"hf-corpus v1|{self.label}|{fingerprint}|val_fraction={self.val_fraction!r}|{split or 'all'}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def python_version_tag() -> str:
    """E.g. ``"CPython-3.11.7"``: the stdlib corpus differs between interpreters and versions."""
    return f"{platform.python_implementation()}-{'.'.join(map(str, sys.version_info[:3]))}"


def open_text_corpus(corpus: str, val_fraction: float, hf_parts: tuple[str, str | None, str] | None = None,
                     encoding: str = "utf-8", errors: str = "strict"):
    """The :class:`FileCorpus` (or :class:`HFCorpus`) that ``corpus`` names (already validated);
    ``encoding``/``errors`` say how a user's text files are decoded (the stdlib is UTF-8)."""
    reading = {"encoding": encoding, "errors": errors}
    if corpus == "stdlib":
        root = stdlib_root()
        return FileCorpus(label=f"stdlib ({python_version_tag()})", root=root, files=list_stdlib_files(root),
                          val_fraction=val_fraction, version_tag=python_version_tag())
    if hf_parts is not None:
        name, config, split = hf_parts
        return HFCorpus(label=corpus, name=name, config=config, hf_split=split, val_fraction=val_fraction)
    path = Path(corpus).expanduser().resolve()
    if path.is_file():
        return FileCorpus(label=str(path), root=path.parent, files=[path.name], val_fraction=val_fraction,
                          single_file=True, **reading)
    files = list_text_files(path)
    require(len(files) > 0, f"corpus={corpus!r} contains no text files (looked for suffixes "
                            f"{', '.join(sorted(TEXT_SUFFIXES))})")
    # A directory holding a single text file is split by position, like that file on its own.
    return FileCorpus(label=str(path), root=path, files=files, val_fraction=val_fraction,
                      single_file=len(files) == 1, **reading)

"""Atomic file writes (a reader never sees a half-written file) and output-directory locks.

Each writer writes to a temporary file in the destination directory, flushes and fsyncs it, then
``os.replace``s it over the destination (atomic on POSIX and Windows for same-filesystem paths).
:func:`lock_run_dir` keeps two processes from writing into one output directory at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformer_grow.errors import ConfigError, require

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file
DIR_MODE = 0o777 & ~_UMASK  # what mkdir() gives a new directory


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON for ``obj``: keys sorted, NumPy/torch scalars, paths and dataclasses converted, and
    non-finite floats written as ``null`` (JSON has no NaN or Infinity; other parsers reject them)."""
    return json.dumps(_finite(obj), indent=indent, sort_keys=True, default=_json_default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj, indent=2) + "\n")


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of a dict of tensors (contiguous CPU copies, no shared storage)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata=metadata)


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of tensors as safetensors atomically. Written by Python's own file I/O, so a full
    or read-only disk raises :class:`OSError` (with its errno), not a library-specific error."""
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def content_digest(data: bytes) -> str:
    """Hex BLAKE2b-256 of ``data``: the content hash checkpoint manifests record per file."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def atomic_replace_dir(src_tmp_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move a fully written directory into place; an older ``dest`` is swapped out, then removed."""
    src_tmp_dir, dest = Path(src_tmp_dir), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(src_tmp_dir, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def read_text_strict(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a file that is not UTF-8 text gets one :class:`ConfigError` line
    naming it and the byte offset (instead of a ``UnicodeDecodeError`` traceback)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte offset {e.start}: {e.reason}); is it "
                          "the right file?") from None


class DuplicateKeyError(ValueError):
    """A mapping of YAML/JSON text names one key twice (PyYAML and ``json`` would keep the last silently)."""


def load_json(text: str) -> Any:
    """``json.loads`` that raises :class:`DuplicateKeyError` for a key given twice in one object."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise DuplicateKeyError(f"key {key!r} appears twice; give each setting once")
            result[key] = value
        return result

    return json.loads(text, object_pairs_hook=unique)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists and tuples) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return _finite(o.item())
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return _finite(dataclasses.asdict(o))
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_directory_path(path: str | os.PathLike, what: str) -> None:
    """Refuse (:class:`ConfigError`) a path that cannot become a directory: an existing non-directory,
    or a file in the way above it (``/dev/null/x``). Cheap: creates nothing."""
    require("\x00" not in str(path), f"{what} {str(path)!r} contains a NUL character")
    path = Path(path).expanduser()
    require(not path.exists() or path.is_dir(), f"{what} {str(path)!r} exists and is not a directory")
    for parent in path.absolute().parents:
        if parent.exists():
            require(parent.is_dir(), f"{what} {str(path)!r} cannot be created: {str(parent)!r} is not a directory")
            break


# ---------------------------------------------------------------------------- run-directory locks
LOCK_FILENAME = ".tgrow.lock"
_held_locks: dict[str, _RunLock] = {}  # real path of a locked directory -> its lock (this process)
_lock_acquisitions = 0  # how many locks this process has taken: the CLI tells "mid-run" failures by it


class RunDirLocked(ConfigError):
    """Another process holds the lock of an output directory."""


class _RunLock:
    """An exclusive ``flock`` on ``<dir>/.tgrow.lock``, re-entrant within this process."""

    def __init__(self, directory: Path, fd: int, created_dir: bool) -> None:
        self.directory, self.fd, self.created_dir, self.depth = directory, fd, created_dir, 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        del _held_locks[str(self.directory)]
        # Unlink while still holding the lock: a waiter that opened the old file sees its inode gone
        # after it gets the lock and starts over (see lock_run_dir).
        try:
            os.unlink(self.directory / LOCK_FILENAME)
        except OSError:
            pass
        os.close(self.fd)
        if self.created_dir:  # a run refused before writing anything leaves no empty directory behind
            try:
                self.directory.rmdir()
            except OSError:
                pass


def _describe_holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def lock_run_dir(directory: str | os.PathLike, what: str = "output directory") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if needed) for the ``with`` block.

    A second process asking for the same directory gets :class:`RunDirLocked` (a
    :class:`ConfigError`: one line, exit 2) naming the holder's PID; the OS drops the lock when the
    holder dies, so a killed run never leaves a stale lock. Re-entrant within one process (the CLI
    and the library writers under it may both ask). A directory this call created is removed again
    on release if nothing was written into it.
    """
    import fcntl

    global _lock_acquisitions
    directory = Path(directory)
    check_directory_path(directory, what)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key in _held_locks:
        _held_locks[key].depth += 1
    else:
        lock_path = directory / LOCK_FILENAME
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirLocked(f"{what} {str(directory)!r} is in use by {_describe_holder(lock_path)} "
                                   f"(lock file {lock_path}); wait for it to finish or choose another directory"
                                   ) from None
            try:
                same_file = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the previous holder removed this file as we opened it: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held_locks[key] = _RunLock(directory.resolve(), fd, created)
        _lock_acquisitions += 1
    try:
        yield directory
    finally:
        _held_locks[key].release()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a temporary named after a dead writer may be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def holds_run_lock(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``path`` or of a directory above it."""
    path = Path(path).resolve()
    return any(Path(key) == path or Path(key) in path.parents for key in _held_locks)


def lock_acquisitions() -> int:
    """How many run-directory locks this process has taken so far (never decreases)."""
    return _lock_acquisitions

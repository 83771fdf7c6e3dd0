"""Atomic file writes: a reader never sees a half-written file.

Each writer writes to a temporary file in the destination directory, flushes and fsyncs it, then
``os.replace``s it over the destination (atomic on POSIX and Windows for same-filesystem paths).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
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


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of tensors as safetensors atomically (contiguous CPU copies, no shared storage)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


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

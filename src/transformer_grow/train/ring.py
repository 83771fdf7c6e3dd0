"""The ring of checkpoints a run keeps to recover from a divergence: ``<run>/checkpoints/step-NNNNNNNN/``.

The latest checkpoint stays in ``<run>/checkpoint/`` (what ``eval``, ``sample``, ``grow`` and a plain
``--resume`` read). Each checkpoint written there is also entered in the ring, whose entries are
complete checkpoint directories (manifest and hashes included, verified when loaded). They hold hard
links to the files just written, so an entry costs no copy and no disk space while the checkpoint is
also the latest; a checkpoint file is never changed in place (a new one is written next to it and
swapped in), so a link never sees a later write. The ring keeps the newest ``keep`` entries plus the
run's initial state (step 0), from which a run that diverged in its first steps starts again.

Resuming an entry inside its own run (:func:`rewind`) abandons the steps after it: the entries past it
are removed (their weights came from the diverged steps) and the entry becomes the latest checkpoint, so
that a crash before the resumed run's first checkpoint leaves the entry, not the diverged state, behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from transformer_grow.io import DIR_MODE, atomic_replace_dir, process_alive

RING_DIRNAME = "checkpoints"
_ENTRY = re.compile(r"^step-([0-9]+)$")


def entry_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the ring entry of ``step`` lives in ``run_dir``."""
    return Path(run_dir) / RING_DIRNAME / f"step-{step:08d}"


def ring_entries(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ring's entries in ``run_dir``, oldest first (none: ``[]``)."""
    ring = Path(run_dir) / RING_DIRNAME
    if not ring.is_dir():
        return []
    found = []
    for path in ring.iterdir():
        match = _ENTRY.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def run_dir_of(ckpt_dir: str | os.PathLike) -> Path | None:
    """The run directory of a checkpoint directory: ``<run>`` for ``<run>/checkpoint`` (or its ``.old``
    twin) and for a ring entry ``<run>/checkpoints/step-N``; ``None`` for a checkpoint elsewhere."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.name in ("checkpoint", ".checkpoint.old"):
        return ckpt_dir.parent
    if _ENTRY.match(ckpt_dir.name) and ckpt_dir.parent.name == RING_DIRNAME:
        return ckpt_dir.parent.parent
    return None


def is_ring_entry(ckpt_dir: str | os.PathLike) -> bool:
    ckpt_dir = Path(ckpt_dir)
    return bool(_ENTRY.match(ckpt_dir.name)) and ckpt_dir.parent.name == RING_DIRNAME


def _link_tree(source: Path, dest_parent: Path, prefix: str) -> Path:
    """A fresh temporary directory in ``dest_parent`` holding hard links to (or, where the filesystem
    has none, copies of) the files of ``source``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest_parent))
    os.chmod(tmp, DIR_MODE)
    try:
        for file in source.iterdir():
            if file.is_file():
                try:
                    os.link(file, tmp / file.name)
                except OSError:
                    shutil.copy2(file, tmp / file.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def add_to_ring(run_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, step: int, keep: int) -> Path:
    """Enter the checkpoint in ``ckpt_dir`` (just written) as the ring entry of ``step``; keep the newest
    ``keep`` entries and step 0. Returns the entry's path."""
    ring = Path(run_dir) / RING_DIRNAME
    ring.mkdir(parents=True, exist_ok=True)
    tmp = _link_tree(Path(ckpt_dir), ring, f".tmp-{os.getpid()}-")
    try:
        entry = atomic_replace_dir(tmp, entry_path(run_dir, step))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep)
    return entry


def prune(run_dir: str | os.PathLike, keep: int) -> None:
    """Remove all but the newest ``keep`` entries (and step 0), and temporaries of killed writers."""
    entries = [e for e in ring_entries(run_dir) if e[0] != 0]
    for _, path in entries[:max(0, len(entries) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in (Path(run_dir) / RING_DIRNAME).glob(".tmp-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def clear_ring(run_dir: str | os.PathLike) -> None:
    """Remove the ring (a fresh run starts a fresh one)."""
    shutil.rmtree(Path(run_dir) / RING_DIRNAME, ignore_errors=True)


def rewind(entry: str | os.PathLike) -> Path:
    """Make ring ``entry`` its run's latest checkpoint and remove the entries after it; returns the run
    directory's ``checkpoint`` path (see the module docstring)."""
    entry = Path(entry)
    run_dir = run_dir_of(entry)
    match = _ENTRY.match(entry.name)
    if run_dir is None or match is None:
        raise ValueError(f"{entry} is not a ring entry")
    step = int(match.group(1))
    for later, path in ring_entries(run_dir):
        if later > step:
            shutil.rmtree(path, ignore_errors=True)
    latest = run_dir / "checkpoint"
    tmp = _link_tree(entry, run_dir, f".checkpoint.tmp-{os.getpid()}-")
    try:
        atomic_replace_dir(tmp, latest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return latest

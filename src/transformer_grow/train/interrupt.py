"""Stopping a run cleanly on SIGINT and SIGTERM: :func:`stop_on_signals`.

Schedulers (Slurm, Kubernetes, systemd) end a job with SIGTERM and a grace period; Ctrl-C sends SIGINT.
Inside :func:`stop_on_signals` the first of either only sets a flag: the trainer (or the growth manager
driving it) finishes the step under way, writes a checkpoint and raises
:class:`~transformer_grow.train.outcome.TrainingInterrupted`, so no step is lost and the run resumes
exactly. A second signal stops at once (``KeyboardInterrupt``), for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_state: dict[str, int | None] = {"requested": None, "depth": 0}


def requested() -> int | None:
    """The signal that asked for a stop, or ``None``."""
    return _state["requested"]


def active() -> bool:
    """Whether :func:`stop_on_signals` is in force (so that a signal sets the flag)."""
    return bool(_state["depth"])


def _handler(signum, frame) -> None:
    if _state["requested"] is not None:
        raise KeyboardInterrupt  # the second signal: the user will not wait for the step to finish
    _state["requested"] = signum


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask the trainer to stop after the current step (see the
    module docstring); the previous handlers come back afterwards. Signals reach only the main thread:
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, _handler)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not _state["depth"]:
            _state["requested"] = None

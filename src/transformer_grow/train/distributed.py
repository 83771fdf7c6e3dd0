"""Training under ``torchrun`` with DDP or FSDP2: a :class:`Trainer` with a :class:`DataParallel`.

>>> with distributed_session(device="auto") as env:             # torchrun --nproc_per_node 2 ...
...     trainer = make_trainer(config, TrainConfig(batch_size=32, max_steps=200), data, out_dir="run",
...                            strategy="fsdp", env=env)
...     trainer.fit()

There is no distributed trainer class: the :class:`~transformer_grow.train.Trainer` takes a
``parallel`` (:class:`~transformer_grow.distributed.parallel.DataParallel`) that wraps the model,
slices every global batch, averages the loss over ranks and gathers checkpoints (see
:mod:`transformer_grow.distributed.parallel`). Growth of a trainer's model, plain or distributed, is
:func:`transformer_grow.run.event.grow_trainer`.

:func:`make_trainer`, :func:`resume_trainer` and :func:`maybe_distributed_session` pick plain or
distributed training from ``strategy`` (``None``/``"none"``, ``"ddp"``, ``"fsdp"``), for the CLI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from transformer_grow.distributed.env import (
    DistEnv,
    RankData,
    distributed_session,
    init_distributed,
    main_rank_first,
    shutdown_distributed,
)
from transformer_grow.distributed.guard import WrappedModelChanged, ensure_unwrapped
from transformer_grow.distributed.parallel import DataParallel, Parallel
from transformer_grow.distributed.wrap import STRATEGIES, DistributedModel
from transformer_grow.errors import choice
from transformer_grow.model import ModelConfig
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.trainer import Trainer

__all__ = [
    "STRATEGIES", "DataParallel", "DistEnv", "DistributedModel", "Parallel", "RankData", "WrappedModelChanged",
    "distributed_session", "ensure_unwrapped", "init_distributed", "main_rank_first", "make_parallel",
    "make_trainer", "maybe_distributed_session", "resume_trainer", "shutdown_distributed",
]


def make_parallel(strategy: str | None, env: DistEnv | None = None) -> Parallel | None:
    """``None`` (one process) for ``strategy`` ``None``/``"none"``; else a :class:`DataParallel`
    (``env`` default: the initialised process group)."""
    if strategy in (None, "none"):
        return None
    return DataParallel(strategy, env)


@contextlib.contextmanager
def maybe_distributed_session(strategy: str | None, device: str = "auto") -> Iterator[DistEnv | None]:
    """``None`` for ``strategy`` ``None``/``"none"`` (one process); else a :func:`distributed_session`."""
    if strategy in (None, "none"):
        yield None
        return
    choice("strategy", strategy, STRATEGIES)
    with distributed_session(device=device) as env:
        yield env


def make_trainer(model_config: ModelConfig | None, train_config: TrainConfig, data: Any, *,
                 strategy: str | None = None, env: DistEnv | None = None, **kwargs: Any) -> Trainer:
    """A :class:`Trainer` in one process (``strategy`` ``None`` or ``"none"``) or on every rank with
    ``"ddp"``/``"fsdp"``; ``kwargs`` are the trainer's (``out_dir``, ``model``, ``data_config``...)."""
    return Trainer(model_config, train_config, data, parallel=make_parallel(strategy, env), **kwargs)


def resume_trainer(path: str | os.PathLike, data: Any, *, strategy: str | None = None, env: DistEnv | None = None,
                   **kwargs: Any) -> Trainer:
    """:meth:`Trainer.resume` in one process or on every rank with ``strategy``."""
    return Trainer.resume(path, data, parallel=make_parallel(strategy, env), **kwargs)

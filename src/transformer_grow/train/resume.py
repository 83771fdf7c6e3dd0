"""A trainer's checkpointed state: :func:`trainer_checkpoint` captures it, :func:`resume_from_checkpoint` restores it.

These are the bodies of :meth:`Trainer.checkpoint <transformer_grow.train.trainer.Trainer.checkpoint>` and
:meth:`Trainer.resume <transformer_grow.train.trainer.Trainer.resume>` (call those): the train state written
into a :class:`~transformer_grow.train.checkpoint.Checkpoint` and read back from a verified one live side by
side here, so the two stay in step. The trainer imports this module, never the other way round (the
trainer class comes in as ``cls``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformer_grow.data import DataConfig
from transformer_grow.device import capture_rng_state, restore_rng_state
from transformer_grow.distributed.parallel import Parallel
from transformer_grow.errors import ConfigError
from transformer_grow.train.checkpoint import (
    CHECKPOINT_DIRNAME,
    Checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint_dir,
)
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.health import tensors_finite
from transformer_grow.train.metrics import METRICS_FILENAME, truncate_metrics
from transformer_grow.train.ring import is_ring_entry, rewind, run_dir_of
from transformer_grow.train.schedule import Rewarmup

if TYPE_CHECKING:  # annotations only: at run time the trainer imports this module, not the reverse
    from transformer_grow.train.trainer import Trainer


def trainer_checkpoint(trainer: Trainer) -> Checkpoint | None:
    """:meth:`Trainer.checkpoint <transformer_grow.train.trainer.Trainer.checkpoint>`."""
    gathered = trainer.parallel.gather_state(trainer.model, trainer.optimizer)
    if gathered is None:
        return None
    model_state, optimizer_state = gathered
    data_config = None if trainer.data_config is None else dataclasses.asdict(trainer.data_config)
    train_state = {
        "step": trainer.step, "tokens": trainer.tokens, "flops": trainer.flops, "wall_seconds": trainer.wall_seconds,
        "train_config": trainer.config.to_dict(), "data_config": data_config,
        "data_fingerprint": getattr(trainer.data, "fingerprint", None),
        "schedule": {"total_steps": trainer.total_steps,
                     "rewarmup": None if trainer.rewarmup is None else trainer.rewarmup.to_dict()},
        "rng": capture_rng_state(),
        "last_train_loss": trainer.last_train_loss, "last_val_loss": trainer.last_val_loss,
        "evaluated_at": trainer._evaluated_at,
        "extra": trainer._driver_state,
        # the steps since the last metrics record, so the first record after a resume averages the
        # same steps as the uninterrupted run's
        "log_window": dict(trainer._window),
        "eval_seconds": trainer.eval_seconds, "checkpoint_seconds": trainer.checkpoint_seconds,
        # the divergence monitor's state, and what a recovery reads: the loss trend, the rate of the next step
        "health": {**trainer.monitor.state_dict(), "trend": trainer.monitor.trend(), "next_lr": trainer.lr,
                   "finite": tensors_finite(model_state) is None and all(
                       tensors_finite(entry) is None for entry in (optimizer_state or {}).values())},
    }
    return Checkpoint(model_config=trainer.model.config, block_keys=trainer.model.block_keys,
                      model_state=model_state, optimizer_state=optimizer_state, train_state=train_state,
                      lr_multipliers=None if trainer.lr_multipliers is None else trainer.lr_multipliers.copy())


def resume_from_checkpoint(cls: type[Trainer], path: str | os.PathLike, data: Any,
                           train_config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None,
                           data_config: DataConfig | None = None, progress: bool = False,
                           parallel: Parallel | None = None) -> Trainer:
    """:meth:`Trainer.resume <transformer_grow.train.trainer.Trainer.resume>`: a ``cls`` continuing the run
    checkpointed at ``path``."""
    parallel = parallel or Parallel()
    ckpt_dir = resolve_checkpoint_dir(path)
    ckpt = load_checkpoint(ckpt_dir)
    state = ckpt.train_state
    fingerprint = state.get("data_fingerprint")
    if fingerprint is not None and fingerprint != getattr(data, "fingerprint", fingerprint):
        raise ConfigError(f"checkpoint {str(ckpt_dir)!r} was trained on data with fingerprint {fingerprint}, "
                          f"but the data given has fingerprint {data.fingerprint}; resume with the same "
                          "corpus, tokenizer and vocabulary settings")
    saved_config = TrainConfig.from_dict(state["train_config"])
    if train_config is None:
        train_config = saved_config
    check_skip_change(train_config, saved_config, int(state["step"]))
    if data_config is None and state.get("data_config"):
        data_config = DataConfig(**state["data_config"])
    if out_dir is None:  # a run's own checkpoint (the latest or a ring entry) continues in that run
        out_dir = run_dir_of(ckpt_dir)
    rewound = (out_dir is not None and is_ring_entry(ckpt_dir)
               and run_dir_of(ckpt_dir).resolve() == Path(out_dir).resolve())
    if out_dir is not None and parallel.is_main:
        if rewound:  # the steps after the entry are abandoned (e.g. they diverged): see train/ring.py
            rewind(ckpt_dir)
        truncate_metrics(Path(out_dir) / METRICS_FILENAME, int(state["step"]))
    trainer = cls(None, train_config, data, out_dir=out_dir, model=model_from_checkpoint(ckpt),
                  data_config=data_config, progress=progress, parallel=parallel)
    if ckpt.optimizer_state:
        parallel.load_optimizer_state(trainer.model, trainer.optimizer, ckpt.optimizer_state)
    trainer.step, trainer.tokens = int(state["step"]), int(state["tokens"])
    trainer.flops, trainer.wall_seconds = int(state["flops"]), float(state["wall_seconds"])
    trainer.rewarmup = Rewarmup.from_dict(state.get("schedule", {}).get("rewarmup"))
    trainer.lr_multipliers = ckpt.lr_multipliers
    trainer.last_train_loss, trainer.last_val_loss = state.get("last_train_loss"), state.get("last_val_loss")
    trainer._driver_state = dict(state.get("extra") or {})
    if out_dir is not None and (Path(out_dir) / CHECKPOINT_DIRNAME == ckpt_dir or rewound):
        trainer._saved_at = trainer.step
    if state.get("evaluated_at") == trainer.step:
        trainer._evaluated_at = trainer.step
    trainer._reset_window()
    window = state.get("log_window")
    if isinstance(window, dict) and set(window) == set(trainer._window):
        trainer._window = {k: (float(v) if k in ("loss", "seconds", "lr") else int(v)) for k, v in window.items()}
    trainer.eval_seconds = float(state.get("eval_seconds", 0.0))
    trainer.checkpoint_seconds = float(state.get("checkpoint_seconds", 0.0))
    trainer.monitor.load_state_dict(state.get("health"))
    trainer._fresh = False
    restore_rng_state(state.get("rng"))
    return trainer


def check_skip_change(config: TrainConfig, saved: TrainConfig, step: int) -> None:
    """Refuse ``config.skip_batches`` unless the ranges it adds to (or drops from) ``saved``'s, a checkpoint's
    of ``step`` steps, all come after the batches those steps trained on."""
    trained = saved.batch_index(step - 1) + 1 if step > 0 else 0  # batch number of the checkpoint's last step
    for first, last in sorted(set(config.skip_ranges()) - set(saved.skip_ranges())):
        if first <= trained:
            raise ConfigError(f"skip_batches range {first}:{last} is not allowed: the checkpoint (step {step}) has "
                              f"trained on the batches up to {trained}; skip batches after {trained}")
    for first, last in sorted(set(saved.skip_ranges()) - set(config.skip_ranges())):
        if first <= trained:
            raise ConfigError(f"skip_batches range {first}:{last} of the checkpoint cannot be dropped: its batches "
                              f"were skipped before step {step}; keep it")

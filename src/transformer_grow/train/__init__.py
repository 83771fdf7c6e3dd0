"""Training one model: typed config, LR schedules, the trainer loop, evaluation, metrics and checkpoints."""

from transformer_grow.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_optimizer_state_by_name,
    model_from_checkpoint,
    optimizer_state_by_name,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.metrics import read_metrics
from transformer_grow.train.schedule import LRSchedule, Rewarmup, lr_at
from transformer_grow.train.trainer import Trainer, TrainingDiverged, TrainSummary

__all__ = [
    "Checkpoint", "LRSchedule", "Rewarmup", "TrainConfig", "TrainSummary",
    "Trainer", "TrainingDiverged",
    "load_checkpoint", "load_optimizer_state_by_name", "lr_at", "model_from_checkpoint", "optimizer_state_by_name",
    "read_metrics", "resolve_checkpoint_dir", "save_checkpoint",
]

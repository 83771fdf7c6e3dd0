"""The growth manager's run state: where a plan's run stands, checkpointed with the trainer.

:class:`GrowthRunState` is stored in every checkpoint as the trainer's driver state (see
:meth:`~transformer_grow.train.Trainer.set_driver_state`); :meth:`GrowthRunState.to_dict` writes
the same JSON as the untyped dict of earlier versions, so their checkpoints resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformer_grow.run.record import EvalPoint


@dataclass
class Counters:
    """The trainer's counters at one moment (e.g. the start of a stage)."""

    step: int
    tokens: int
    flops: int
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "flops": self.flops, "wall_seconds": self.wall_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counters:
        return cls(int(d["step"]), int(d["tokens"]), int(d["flops"]), float(d["wall_seconds"]))


@dataclass
class ScheduleStart:
    """Where the global LR schedule on the budget axis starts: the run's start, or the growth event
    that restarted it (``restart``: no warmup, a new decay over the rest of the budget)."""

    start_step: int = 0
    start_spent: float = 0.0
    restart: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step, "start_spent": self.start_spent, "restart": self.restart}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleStart:
        return cls(int(d["start_step"]), float(d["start_spent"]), bool(d["restart"]))


@dataclass
class GrowthRunState:
    """Where a growth plan's run stands.

    Attributes:
        fingerprint: identity of the run's settings (a checkpoint with another one is refused).
        stage: index of the plan stage now training.
        curve: the validation points so far.
        events: one record per growth event (the report's events).
        stages: one record per finished stage (steps, tokens, FLOPs, time).
        next_eval: index of the next validation point (every ``budget / n_evals``).
        stage_start: the counters when the current stage started.
        stage_end_step: the current stage's last step (a trigger may end it earlier).
        schedule: where the global LR schedule starts.
        trigger_notes: what the growth trigger said when it fired.
    """

    fingerprint: str
    stage: int = 0
    curve: list[EvalPoint] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    next_eval: int = 0
    stage_start: Counters = field(default_factory=lambda: Counters(0, 0, 0, 0.0))
    stage_end_step: int = 0
    schedule: ScheduleStart = field(default_factory=ScheduleStart)
    trigger_notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``trigger_notes`` only once a trigger fired (as checkpoints always had it)."""
        d = {"fingerprint": self.fingerprint, "stage": self.stage, "curve": [p.to_dict() for p in self.curve],
             "events": [dict(e) for e in self.events], "stages": [dict(s) for s in self.stages],
             "next_eval": self.next_eval, "stage_start": self.stage_start.to_dict(),
             "stage_end_step": self.stage_end_step, "schedule": self.schedule.to_dict()}
        if self.trigger_notes:
            d["trigger_notes"] = list(self.trigger_notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GrowthRunState:
        return cls(fingerprint=d["fingerprint"], stage=int(d["stage"]),
                   curve=[EvalPoint.from_dict(p) for p in d["curve"]], events=list(d["events"]),
                   stages=list(d["stages"]), next_eval=int(d["next_eval"]),
                   stage_start=Counters.from_dict(d["stage_start"]), stage_end_step=int(d["stage_end_step"]),
                   schedule=ScheduleStart.from_dict(d["schedule"]), trigger_notes=list(d.get("trigger_notes", [])))

"""What a growth run (or a from-scratch baseline) records: its validation curve and totals.

The manager writes these into ``result.json``; :mod:`transformer_grow.compare` reads them to
compute speedups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalPoint:
    """One validation measurement of a run."""

    step: int
    tokens: int
    flops: float
    wall_seconds: float
    val_loss: float
    stage: int = 0  # index of the plan stage whose model was evaluated

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "flops": self.flops, "wall_seconds": self.wall_seconds,
                "val_loss": self.val_loss, "stage": self.stage}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalPoint:
        return cls(int(d["step"]), int(d["tokens"]), float(d["flops"]), float(d["wall_seconds"]),
                   float(d["val_loss"]), int(d.get("stage", 0)))


@dataclass
class RunRecord:
    """A finished run of a comparison: what the report needs."""

    name: str
    curve: list[EvalPoint]
    total_flops: float
    total_tokens: int
    wall_seconds: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float:
        return self.curve[-1].val_loss

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "final_val_loss": self.final_val_loss, "total_flops": self.total_flops,
                "total_tokens": self.total_tokens, "wall_seconds": self.wall_seconds,
                "curve": [p.to_dict() for p in self.curve], "stages": self.stages, "events": self.events,
                "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        return cls(d["name"], [EvalPoint.from_dict(p) for p in d["curve"]], float(d["total_flops"]),
                   int(d["total_tokens"]), float(d["wall_seconds"]), list(d.get("stages", [])),
                   list(d.get("events", [])), list(d.get("notes", [])))

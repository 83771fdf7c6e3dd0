"""The growth manager's bookkeeping: the run record's entries for a finished stage and for an event.

:class:`~transformer_grow.run.manager.GrowthManager` appends these dicts to its
:class:`~transformer_grow.run.run_state.GrowthRunState` (``stages``, ``events``), which the
checkpoints and ``result.json`` (the :class:`~transformer_grow.run.record.RunRecord`) carry as they
are: a growth event (the planned operator between two stages), and an expert event of the dynamic
expert count (:mod:`~transformer_grow.run.experts`), recorded within one stage.
"""

from __future__ import annotations

from typing import Any

from transformer_grow.operators.report import GrowthReport
from transformer_grow.plans.accounting import flops_per_token
from transformer_grow.plans.plan import GrowthEvent, GrowthPlan, describe_config
from transformer_grow.run.run_state import Counters
from transformer_grow.train.trainer import Trainer


def event_entry(trainer: Trainer, from_stage: int, to_stage: int, fields: dict[str, Any]) -> dict[str, Any]:
    """An event of the run record: the trainer's counters now, the stages before and after, then ``fields``."""
    return {"step": trainer.step, "tokens": trainer.tokens, "flops": trainer.flops,
            "wall_seconds": trainer.wall_seconds, "from_stage": from_stage, "to_stage": to_stage, **fields}


def growth_event_entry(trainer: Trainer, index: int, event: GrowthEvent, report: GrowthReport, loss_before: float,
                       loss_after: float) -> dict[str, Any]:
    """The growth from stage ``index`` to the next by ``event``: the operator's report and the
    validation loss before and after."""
    return event_entry(trainer, index, index + 1, {
        "operator": report.method, "kind": report.kind, "optimizer": event.optimizer,
        "rewarmup_steps": event.rewarmup_steps, "schedule": event.schedule,
        "val_loss_before": loss_before, "val_loss_after": loss_after,
        "description": f"{report.method} ({report.kind}); val loss {loss_before:.4f} -> {loss_after:.4f}; "
                       f"optimizer {event.optimizer}, re-warmup {event.rewarmup_steps} steps",
        **{k: v for k, v in report.options.items() if k.startswith("ligo_")},  # a LiGO phase: steps, FLOPs, memory
    })


def expert_event_entry(trainer: Trainer, stage: int, event: dict[str, Any]) -> dict[str, Any]:
    """A change of the experts within stage ``stage`` (``event`` from
    :meth:`~transformer_grow.run.experts.ExpertController.after_steps`)."""
    return event_entry(trainer, stage, stage, event)


def stage_entry(trainer: Trainer, plan: GrowthPlan, index: int, begin: Counters,
                routing_points: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage ``index``'s entry of the run record (model, steps, tokens, FLOPs, time since ``begin``; the MoE
    routing measured at its evaluations, if any)."""
    t, cfg = trainer, trainer.model.config
    return {
        "index": index, "name": plan.stages[index].label(index), "model": describe_config(cfg),
        "steps": t.step - begin.step, "tokens": t.tokens - begin.tokens,
        "flops": t.flops - begin.flops, "flops_per_token": flops_per_token(cfg),
        "wall_seconds": t.wall_seconds - begin.wall_seconds,
        **({"routing": points} if (points := [p for p in routing_points if p["stage"] == index]) else {}),
    }

"""One growth event of a training run: grow the trainer's model and train the grown model on.

>>> result = grow_trainer(trainer, config.replace(n_layer=2 * config.n_layer), "stack", rewarmup_steps=20)
>>> result.report.method, trainer.model.config.n_layer

The same code path for a plain :class:`~transformer_grow.train.Trainer` and one under
DDP/FSDP2 (its ``parallel`` is a :class:`~transformer_grow.distributed.parallel.DataParallel`):
:meth:`Trainer.unwrap` hands out the plain full model and its AdamW state by name (releasing a
wrapper: growth never runs under a live one), every rank grows the same model with the same seed,
and :meth:`Trainer.replace_model` wraps the grown model anew with the grown optimizer state. The
growth itself is :func:`transformer_grow.operators.grow`, whose planning runs the one growth check
(:func:`transformer_grow.model.config.check_growth`) before anything is built.
"""

from __future__ import annotations

from typing import Any

import transformer_grow.operators as growing  # looked up at call time: tests and tools may substitute grow()
import transformer_grow.operators.steps as growing_steps
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.model import ModelConfig
from transformer_grow.plans.ligo import check_ligo_event
from transformer_grow.plans.plan import OPTIMIZER_POLICIES, GrowthPlan
from transformer_grow.run.ligo_phase import grow_trainer_ligo
from transformer_grow.train.trainer import Trainer


def grow_trainer(trainer: Trainer, target: ModelConfig | dict | str, method: str | None = None, *,
                 optimizer: str = "carry", rewarmup_steps: int = 0, seed: int = 0, batch_size: int | None = None,
                 preserve: str = "function", dynamics_relax: str = "never",
                 **grow_options: Any) -> growing.GrowthResult:
    """Grow the trainer's model to ``target`` and continue training the grown model; returns the
    :class:`~transformer_grow.operators.GrowthResult`.

    ``optimizer="carry"`` grows the AdamW moments through the parameter map, ``"fresh"`` starts
    with none. ``preserve="dynamics"`` also keeps the small model's AdamW trajectory (moments on the
    gradient scale, per-element LR multipliers relaxed to 1 by ``dynamics_relax``; needs ``carry``).
    ``method="ligo"``: a learned LiGO operator trained on the trainer's next batches, then materialised
    (:mod:`~transformer_grow.run.ligo_phase`). ``rewarmup_steps``: linear LR re-warmup after growth.
    ``batch_size``: the global batch from now on (``None``: unchanged). ``seed`` and ``grow_options`` go to
    :func:`~transformer_grow.operators.grow`. If growth fails (e.g. a bad target), the trainer goes on
    with its old model (distributed: wrapped again) and the error is re-raised.
    """
    choice("optimizer", optimizer, OPTIMIZER_POLICIES)
    require(preserve == "function" or optimizer == "carry",
            f"preserve={preserve!r} needs optimizer='carry' (its moments are part of the trajectory kept)")
    require(isinstance(rewarmup_steps, int) and rewarmup_steps >= 0,
            f"rewarmup_steps={rewarmup_steps!r} is not allowed; it must be an integer >= 0")
    if method == "ligo":  # a learned operator, trained on the run's next batches (run/ligo_phase.py)
        return grow_trainer_ligo(trainer, target, optimizer=optimizer, rewarmup_steps=rewarmup_steps, seed=seed,
                                 batch_size=batch_size, preserve=preserve, dynamics_relax=dynamics_relax,
                                 **grow_options)
    plain, state = trainer.unwrap()
    try:
        result = growing.grow(plain, target, method, seed=seed, preserve=preserve, **grow_options)
        handed = growing.handoff(result, state, preserve) if optimizer == "carry" else None
    except BaseException:
        trainer.rewrap(plain, state)  # the old model trains on; its re-warmup continues
        raise
    trainer.replace_model(result.model, None if handed is None else handed.optimizer_state,
                          rewarmup_steps=rewarmup_steps, batch_size=batch_size,
                          lr_multipliers=None if handed is None else handed.lr_multipliers, relax=dynamics_relax)
    return result


def check_growth_events(plan: GrowthPlan) -> None:
    """Check every growth event's operator and options against :func:`transformer_grow.operators.grow`
    (dry run: nothing is built; its planning runs the one growth check,
    :func:`~transformer_grow.model.config.check_growth`), so a bad choice fails before any training."""
    for i, stage in enumerate(plan.stages[1:], start=1):
        event, where = stage.growth, f"plan {plan.name!r}, {stage.label(i)}"
        options = dict(event.options)
        if event.method == "ligo":
            try:
                check_ligo_event(plan.stages[i - 1].model, stage.model, options)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            continue
        dims = {d: options.pop(d) for d in list(options) if d in growing_steps.CHOICES}
        noise, noise_std = options.pop("noise", "none"), options.pop("noise_std", 1e-3)
        try:
            choices = growing_steps.resolve_choices(event.method, {d: dims.get(d) for d in growing_steps.CHOICES})
            growing_steps.plan_steps(plan.stages[i - 1].model, stage.model, choices, options, noise, noise_std)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
